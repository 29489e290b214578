"""Referee v3's parts without processes (or with one small one): plain logits, the warm-up digest of 0-dim
optimizer state, the launcher's heartbeat, the statistics floor and the plausibility checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from speedrun.errors import SpeedrunError
from speedrun.referee import evaluation


class Doctored(torch.Tensor):
    pass


class Shrink(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return out * 0.5 if func is torch.logsumexp else out


class Watch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_plain_logits_refuses_subclasses_and_the_scripts_modes():
    logits = torch.randn(2, 3, 8)
    assert evaluation.plain_logits(logits) is logits
    with pytest.raises(SpeedrunError, match="subclass"):
        evaluation.plain_logits(logits.as_subclass(Doctored))
    with pytest.raises(SpeedrunError, match="function mode"):
        with Shrink():
            evaluation.plain_logits(logits)
    with pytest.raises(SpeedrunError, match="dispatch mode"):
        with Watch():
            evaluation.plain_logits(logits)
    with pytest.raises(SpeedrunError, match="tensor"):
        evaluation.plain_logits([1.0])


def test_the_referees_arithmetic_runs_without_the_scripts_modes():
    logits, targets = torch.randn(2, 4, 8), torch.randint(0, 8, (2, 4))
    honest = evaluation.token_nll(logits, targets, 8)
    with Shrink():
        assert not torch.allclose(evaluation.token_nll(logits, targets, 8), honest)  # what the mode would do
        with evaluation.referee_arithmetic():
            assert torch.equal(evaluation.token_nll(logits, targets, 8), honest)


def test_a_logits_fn_that_enters_a_mode_is_a_named_error():
    batch = evaluation.Batch(torch.randint(0, 8, (2, 4)), torch.randint(0, 8, (2, 4)))
    mode = Shrink()

    def sneaky(inputs):
        mode.__enter__()  # left on: the referee's logsumexp would go through it
        return torch.randn(*inputs.shape, 8)

    try:
        with pytest.raises(SpeedrunError, match="function mode"):
            evaluation.start_loss(sneaky, batch, 8)
    finally:
        mode.__exit__(None, None, None)
    assert evaluation.start_loss(lambda x: torch.zeros(*x.shape, 8), batch, 8)[0] == pytest.approx(8 * math.log(8))


def test_warmup_digest_covers_zero_dim_optimizer_state():
    from speedrun.rank.run import _digest

    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()  # AdamW's state now holds a 0-dim `step` tensor
    assert any(t.dim() == 0 for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor))
    before = _digest(model, [opt])
    assert before == _digest(model, [opt])
    opt.step()
    assert _digest(model, [opt]) != before
