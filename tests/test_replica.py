"""The replica check (`speedrun.referee.replica`): scored losses against the same model loaded afresh, shown nothing
after each checked position. Its launcher path (seal, replica run, verdict) is exercised by the honest run of
tests/test_referee.py and by tests/cheats/peek_small.py."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import synthetic
import torch

from speedrun.cli import main
from speedrun.errors import SpeedrunError
from speedrun.judge import integrity, stats
from speedrun.ledger import compare
from speedrun.referee import evaluation, replica
from test_referee_parts import Remembers

V, T, ROWS, BATCHES = 64, 32, 8, 16


class Bigram(torch.nn.Module):
    """A causal model: the logits at t depend on token t alone. Seeded, so two instances are one sealed state."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(V, V, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        return self.table[x]


def RemembersPeek(bonus: float) -> Remembers:
    """The scored side of a cheat: a small bonus for the next input token, each prefix answered as the first time
    (so every pair of copy and original agrees)."""
    return Remembers(bonus=bonus, model=Bigram())


def _tokens(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, BATCHES * ROWS * T + T + 1).astype(np.uint16)


def _piece(tokens):
    return lambda i: tokens[i * T:(i + 1) * T + 1]


def _make(pieces):
    rows = np.stack(pieces).astype(np.int64)
    return evaluation.Batch(torch.from_numpy(rows[:, :-1]), torch.from_numpy(rows[:, 1:]))


def _make_flat(pieces):
    batch = _make(pieces)  # one cu_seqlens piece per row (the models here look at one token only)
    cu = torch.arange(0, batch.inputs.numel() + 1, T, dtype=torch.int32)
    return evaluation.Batch(batch.inputs.reshape(-1), batch.targets.reshape(-1), cu)


def _check(scored_fn, replica_fn, tokens, flat: bool = False) -> replica.Pairs:
    """One rank's replica check end to end: the scored validation keeps the chosen positions, the replica
    answers the cut copies."""
    pairs = replica.Pairs((ROWS * T, T, "flat" if flat else "rows"), ROWS)
    keep = replica.choose(range(BATCHES * ROWS), T, world_size=1, rows=ROWS, rng=random.Random(3))
    make = _make_flat if flat else _make
    call = (lambda fn: (lambda inputs, cu_seqlens: fn(inputs))) if flat else (lambda fn: fn)
    m = evaluation.measure(call(scored_fn), BATCHES, ROWS, T, flat, lambda b, i: b * ROWS + i, _piece(tokens), make,
                           V, unigram=np.full(V, 1 / V), keep=keep)
    pairs.live = dict(m.kept)
    assert set(pairs.live) == set(keep) and all(pairs.live[q][0] == j for q, j in keep.items())
    with torch.no_grad():
        for batch, marks in replica.batches(pairs, _piece(tokens), np.full(V, 1 / V), make,
                                            np.random.default_rng(0)):
            rows = batch.inputs.reshape(ROWS, T)
            # nothing of a checked piece after its position reaches the replica
            for i, q, j, _ in marks:
                assert torch.equal(rows[i, :j + 1], torch.from_numpy(_piece(tokens)(q)[:j + 1].astype(np.int64)))
            logits = batch.call(call(replica_fn))
            pairs.replica.update({q: loss for (_, q, _, _), loss in zip(marks, replica.losses_at(logits, T, marks))})
    return pairs


def test_choose_draws_distinct_pieces_in_whole_batches():
    keep = replica.choose(range(5000), 64, world_size=8, rows=48, rng=random.Random(0))
    assert len(keep) == 144 and all(0 <= j < 64 for j in keep.values())  # 1024 / 8 = 128 -> 3 batches of 48
    assert len(replica.choose(range(40), 64, world_size=1, rows=48)) == 40   # never more than there are


def test_a_causal_model_loaded_afresh_repeats_its_scored_losses_exactly():
    tokens = _tokens()
    pairs = _check(Bigram(), Bigram(), tokens)
    sums = pairs.sums()
    assert sums["positions"] == len(pairs.live) == BATCHES * ROWS  # 1024 wanted, 128 pieces: all of them
    assert sums["d_sum"] == 0.0 and sums["d_max"] == 0.0 and sums["live_sum"] == sums["replica_sum"]
    test = stats.replica_gap([sums])
    assert not test.reads and not test.differs and test.bar == stats.REPLICA_MIN_GAP
    # the kept losses are the scored rows' own per-token losses at those positions
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(Bigram()(torch.from_numpy(tokens[:-1].astype(np.int64))),
                                                torch.from_numpy(tokens[1:].astype(np.int64)), reduction="none")
    for q, (j, loss) in list(pairs.live.items())[:20]:
        assert loss == pytest.approx(float(nll[q * T + j]), abs=1e-5)


def test_a_remembering_peek_too_small_for_the_blind_positions_is_caught_at_every_position():
    """The scored process never sees the copies and the replica never sees what follows: memory helps neither."""
    tokens = _tokens()
    scored = RemembersPeek(bonus=0.05)
    pairs = _check(scored, Bigram(), tokens)
    sums = pairs.sums()
    gain = sums["d_sum"] / sums["positions"]
    assert 0.01 < gain < 0.05                       # a few hundredths of a nat at every position
    test = stats.replica_gap([sums])
    assert test.reads and not test.differs and "read the tokens that follow" in integrity.replica_words(test)[0]
    d = np.array([pairs.replica[q] - pairs.live[q][1] for q in pairs.replica])
    assert (d > 0).mean() > 0.95                   # not on average: at nearly every checked position


def test_the_flat_layout_is_checked_at_the_same_positions():
    tokens = _tokens(1)
    honest = _check(Bigram(), Bigram(), tokens, flat=True).sums()
    assert honest["positions"] == BATCHES * ROWS and honest["d_max"] == 0.0
    flat_peek = lambda x: RemembersPeek(0.05)(x[None])[0]  # noqa: E731  ([n] tokens -> [n, V])
    assert stats.replica_gap([_check(flat_peek, Bigram(), tokens, flat=True).sums()]).reads


def test_logits_that_are_not_the_sealed_model_are_a_problem_either_way():
    tokens = _tokens()
    noisy = _check(lambda x: Bigram()(x) + 0.5 * torch.randn(x.shape + (V,)), Bigram(), tokens).sums()
    test = stats.replica_gap([noisy])
    assert test.differs and "not the model finish() sealed" in " ".join(integrity.replica_words(test))


def _manifest(entries, status="checked"):
    return {"replica": {"status": status, "why": None, "seconds": 1.0, "repetitions": entries}}


def _entry(k, d=0.0, n=1024, checked=True, why=None):
    return {"k": k, "checked": checked, "why": why, "positions": n, "d_sum": d * n, "d_sq": d * d * n,
            "d_max": abs(d), "live_sum": 3.0 * n, "replica_sum": (3.0 + d) * n}


def test_the_verdict_judges_checked_repetitions_and_says_why_others_were_not():
    replica_field, problems = integrity.replica_status(_manifest([_entry(1), _entry(2)]), [1, 2])
    assert replica_field["checked"] and not problems and replica_field["test"]["positions"] == 2048
    # one repetition peeked: named; a repetition not checked: no problem, but not `checked` (never a record)
    replica_field, problems = integrity.replica_status(
        _manifest([_entry(1, d=0.01), _entry(2, checked=False, why="finish() sealed no model state")]), [1, 2])
    assert problems == [f"replica check failed in repetition 1: {integrity.replica_words(stats.replica_gap([_entry(1, d=0.01)]))[0]}"]
    assert not replica_field["checked"] and replica_field["unchecked"] == {"2": "finish() sealed no model state"}
    # under each repetition's bar, over it pooled
    small = [_entry(k, d=0.0035) for k in (1, 2, 3)]
    for e in small:
        e["d_sq"] = (0.04 ** 2 + 0.0035 ** 2) * e["positions"]  # a spread of 0.04: bar 0.005 alone, 0.0029 pooled
    _, problems = integrity.replica_status(_manifest(small), [1, 2, 3])
    assert problems and problems[0].startswith("replica check failed over repetitions 1, 2, 3 pooled")
    # a malformed entry is a problem, not a crash; a run without the check says so
    _, problems = integrity.replica_status(_manifest([{"k": 1, "checked": True}]), [1])
    assert problems and "lacks field" in problems[0]
    replica_field, problems = integrity.replica_status({"harness_version": "0.3.0"}, [1])
    assert not replica_field["checked"] and not problems and "not recorded" in replica_field["unchecked"]["1"]
    # an API 1 script (start() without a logits_fn: the replica calls the bare model, which may differ honestly
    # from the scored logits_fn) is not accused: it is left unchecked, and so never a record
    replica_field, problems = integrity.replica_status(_manifest([{**_entry(1, d=0.01), "bare": True}]), [1])
    assert not problems and "start() was given no logits_fn" in replica_field["unchecked"]["1"]
    replica_field, problems = integrity.replica_status(_manifest([{**_entry(1), "bare": True}]), [1])
    assert not problems and replica_field["checked"]
    # a bad repetition's finding counts too
    _, problems = integrity.replica_status(_manifest([_entry(1, d=0.5)]), [])
    assert problems and "repetition 1" in problems[0]


def test_record_add_refuses_a_run_the_replica_did_not_check(tmp_path):
    with pytest.raises(SpeedrunError, match="not re-checked by the replica .*repetition 2: no model"):
        compare.refuse_unchecked(tmp_path, {"replica": {"checked": False, "unchecked": {"2": "no model"}}})
    with pytest.raises(SpeedrunError, match="not recorded"):
        compare.refuse_unchecked(tmp_path, {})
    compare.refuse_unchecked(tmp_path, {"replica": {"checked": True}})


BASELINE = Path(__file__).resolve().parent / "fixtures" / "api1_adamw_baseline.py"
FAST = ["--", "--steps", "6", "--warmup-steps", "2", "--dim", "32", "--layers", "1", "--heads", "2"]


def test_a_replica_that_fails_is_said_and_keeps_the_run_from_the_ledger(tmp_path, monkeypatch):
    """The replica runs the script's own code up to start(): a script that fails there (or refuses to be checked)
    gets its verdict, which says why the check is missing, and is never a record."""
    for k, v in synthetic.make_track(tmp_path / "track").items():
        monkeypatch.setenv(k, v)
    text = BASELINE.read_text()
    assert text.count("run.start()\n") == 1
    script = tmp_path / "no_replica.py"
    script.write_text(text.replace("run.start()\n", "if run.repetition == 0:  # only the replica has no repetition\n"
                                   "    raise RuntimeError('no replica here')\nrun.start()\n"))
    out = tmp_path / "run"
    main(["run", str(script), "--track", "smoke", "--nproc", "2", "--runs", "1", "--out", str(out), "--replica",
          *FAST])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["repetitions"][0]["status"] == "ok"
    replica_record = manifest["replica"]
    assert replica_record["status"] == "failed" and "no replica here" in replica_record["why"]
    assert replica_record["repetitions"][0]["checked"] is False
    verdict = json.loads((out / "verdict.json").read_text())
    assert not verdict["replica"]["checked"] and "no replica here" in verdict["replica"]["unchecked"]["1"]
    assert not any("replica" in p for p in verdict["problems"])  # no finding: nothing was compared
    with pytest.raises(SpeedrunError, match="not re-checked by the replica"):
        compare.refuse_unchecked(out, verdict)


def test_the_seal_is_taken_once_before_the_scored_rows_and_copied_out_at_once(tmp_path):
    """The rank only asks: no seal before finish() or once the scored rows have begun, one seal a repetition, and
    the bytes the agent keeps are copied when the rank says it wrote them (a mapping it keeps changes nothing)."""
    from test_referee_parts import Judge, uniform

    j = Judge(tmp_path)
    j.ref.replica_dir = str(tmp_path)
    j.started(2)
    assert "error" in j.say(0, "seal_buffer", 2.5, nbytes=64)  # before finish()
    j.validate({0: 3.0, 1: 3.0}, {0: 4.0, 1: 4.0}, step=2)
    answers = j.everyone("finish", 5.0, inductor=[])
    assert all(a["score"] for a in answers)
    buf = j.buffer(j.say(0, "seal_buffer", 5.1, nbytes=64)["buf"])
    buf.tensor(torch.uint8, (64,)).fill_(7)
    assert j.say(0, "sealed", 5.2, nbytes=64, training=False, tensors=[["w", "uint8", [64], 0]]) == {"ok": True}
    buf.tensor(torch.uint8, (64,)).fill_(9)  # written after the seal, through the mapping the rank kept
    assert j.ref.ranks[0].agent.sealed["data"] == bytes([7] * 64)
    assert "error" in j.say(0, "seal_buffer", 5.3, nbytes=64)  # once
    shape = {k: answers[0][k] for k in ("batch_tokens", "seq_len", "layout")}
    assert j.say(1, "val_begin", 6.0, step=None, **shape)["ok"]
    assert "error" in j.say(1, "seal_buffer", 6.1, nbytes=64)  # the scored validation has begun
    a = j.say(1, "val_next", 6.2, logits=None, error=None)
    while a is not None and not a.get("done"):
        a = j.say(1, "val_next", 6.3, logits=j.logits(1, 6.3, uniform(j.inputs(a))), error=None)
    j.validate({0: 7.0}, {0: 8.0}, None, uniform, shape)
    # rank 0's scored validation kept its secret positions; rank 1, which sealed nothing, none (and why)
    assert set(j.ref.replica_pairs) == {0} and len(j.ref.replica_pairs[0][1].live) > 0
    assert "sealed no model state" in j.ref.replica_why
