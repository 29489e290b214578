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
        return out * 0.5 if func in (torch.logsumexp, torch.nn.functional.cross_entropy) else out


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


# --- the launcher's heartbeat ----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class FakeReferee:
    """What heartbeat.judge uses of a Referee."""

    def __init__(self, start_t, finish_t, t0=100.0):
        from types import SimpleNamespace

        self.t0, self.start_t, self.events, self.problems = t0, start_t, [], []
        self.ranks = {0: SimpleNamespace(finish_t=finish_t)}

    def _t(self, t):
        return t - 100.0

    def _emit(self, kind, **fields):
        self.events.append({"event": kind, **fields})

    def problem(self, message):
        self.problems.append(message)


def test_a_heartbeat_gap_in_the_timed_run_is_a_problem_and_nowhere_else():
    from speedrun.referee import heartbeat

    clock = FakeClock()
    hb = heartbeat.Heartbeat(clock=clock)
    for _ in range(30):  # regular beats: no gap
        clock.now += 0.1
        hb.beat()
    clock.now += 5.0     # the launcher did not run for 5 s
    hb.beat()
    clock.now += 0.1
    hb.beat()
    assert len(hb.gaps) == 1 and hb.gaps[0][1] - hb.gaps[0][0] == pytest.approx(5.0)
    during = FakeReferee(start_t=101.0, finish_t=110.0)
    heartbeat.judge(during, hb)
    assert [e["event"] for e in during.events] == ["launcher_stopped"] and during.events[0]["seconds"] == 5.0
    assert "the launcher was stopped for 5.0 s during the timed run" in during.problems[0]
    # every message sent while the launcher was stopped is stamped after the gap: a `start` too
    swallowed = FakeReferee(start_t=108.5, finish_t=108.6)
    heartbeat.judge(swallowed, hb)
    assert swallowed.problems
    later = FakeReferee(start_t=109.0, finish_t=110.0, t0=108.9)  # a later repetition
    earlier = FakeReferee(start_t=100.5, finish_t=101.0)           # finished before the gap
    untimed = FakeReferee(start_t=None, finish_t=None)             # no timed run to protect
    for referee in (later, earlier, untimed):
        heartbeat.judge(referee, hb)
        assert not referee.problems


def test_the_heartbeat_notices_a_real_sigstop():
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    code = ("import sys, time\n"
            "from speedrun.referee.heartbeat import Heartbeat\n"
            "hb = Heartbeat().start()\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "hb.stop()\n"
            "print([round(b - a, 1) for a, b in hb.gaps], flush=True)\n")
    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": root})
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(2.6)
    os.kill(proc.pid, signal.SIGCONT)
    time.sleep(0.3)
    out, _ = proc.communicate("go\n", timeout=30)
    gaps = eval(out.strip())
    assert len(gaps) == 1 and gaps[0] >= 2.5


# --- statistics a deterministic script cannot game, and figures no honest run shows -----------------------------


def test_the_t_test_never_assumes_less_spread_than_the_tracks_records():
    from speedrun.judge import stats
    from speedrun.tracks import Rule, load_track

    rule = Rule(test="ttest", p_value=0.01, min_runs=3)
    tight = [3.8990, 3.8991, 3.8992]  # near-deterministic repetitions just under the target
    assert stats.target_test(tight, 3.90, rule).passed
    floored = stats.target_test(tight, 3.90, rule, floor=0.0004)
    assert not floored.passed and "sd floor" in floored.reason
    spread = [3.860, 3.866, 3.863]  # a spread above the floor: the plain t-test, unchanged
    assert stats.target_test(spread, 3.90, rule, floor=0.0004).p_value == stats.target_test(spread, 3.90, rule).p_value
    assert stats.target_test([3.8, 3.8, 3.8], 3.90, rule, floor=0.0004).reason == stats.ZERO_SPREAD
    assert stats.sd_floor(load_track("tiny")) == 0.0004


def test_losses_below_the_entropy_floor_and_runs_without_steps_are_problems(tmp_path):
    from types import SimpleNamespace

    from speedrun.judge import integrity

    track = SimpleNamespace(entropy_floor=3.1091)
    events = SimpleNamespace(last=lambda kind: {"batches": 0} if kind == "finish" else None)
    problems = integrity.plausibility(track, [{"k": 1, "final_loss": 2.5}, {"k": 2, "final_loss": 3.5}], {1: events})
    assert len(problems) == 2 and "entropy floor" in problems[0] and "no training step" in problems[1]
    assert integrity.plausibility(SimpleNamespace(entropy_floor=None), [{"k": 1, "final_loss": 0.1}], {}) == []
    assert integrity.sandbox_status({"harness_version": "0.2.0"}) == (False, "not recorded (harness 0.2.0)")
    assert integrity.sandbox_status({"sandbox": "none", "sandbox_reason": "bwrap (bubblewrap) is not installed"}) \
        == (False, "none (bwrap (bubblewrap) is not installed)")
    assert integrity.sandbox_status({"sandbox": "bwrap 0.8.0"}) == (True, "bwrap 0.8.0")


# --- the data watch names the process (fanotify) -----------------------------------------------------------------


def test_the_data_watch_blames_only_the_runs_own_processes(tmp_path):
    import subprocess
    import sys

    from speedrun.referee import watch

    path = tmp_path / "w_val_000000.bin"
    path.write_bytes(b"\0" * 65536)
    w = watch.DataWatch({path: "val"}).start()
    if not w.attributed:
        w.stop()
        pytest.skip("fanotify needs CAP_SYS_ADMIN here")
    w.arm()
    run = subprocess.Popen(["sh", "-c", "sleep 0.3; cat \"$0\" > /dev/null", str(path)])  # the run's tree
    w.root = run.pid
    subprocess.run([sys.executable, "-c", f"open({str(path)!r}, 'rb').read()"], check=True)  # someone else
    run.wait()
    w.stop()
    assert w.foreign[str(path)] == 1 and w.opens[str(path)] == 1
    assert w.problems() == ["the val data file w_val_000000.bin was opened while the scripts ran (the referee had "
                            "mapped it before they started): a script read the data itself"]
    assert watch.below(run.pid, run.pid) and not watch.below(1, run.pid)
