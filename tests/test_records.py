"""The ledger as committed: every tiny-track record still runs the same under the current harness (CI replays
a prefix of each one through the launcher on 2 CPU ranks and compares it with the recorded run), the GPT-2
tracks' entries say plainly that nobody has verified them, and the generated tables are fresh."""

from __future__ import annotations

import pytest

from speedrun.ledger import compare
from speedrun.evidence import rundir
from speedrun.ledger import store
from speedrun.cli import main
from speedrun.tracks import load_track

TINY = [r.number for r in store.load_records("tiny")]
PREFIX_STEPS = 64  # run.log sends its scalars in blocks of 64: the first block of each record


def test_the_tiny_track_has_its_baseline_records():
    records = store.load_records("tiny")
    assert [r.number for r in records] == [1, 2] and all(r.verified for r in records)
    assert records[1].prior == 1 and records[1].comparison["passed"]
    assert store.current_record("tiny").number == 2
    for r in records:
        assert r.api_version == 2 and r.hardware_fingerprint and r.n_runs >= 3
        verdict = store.recorded_verdict(r)
        assert verdict["qualifies"] and verdict["refereed"] and verdict["script_sha256"] == r.script_sha256
        assert rundir.sha256_file(r.script) == r.script_sha256


@pytest.mark.parametrize("number", TINY)
def test_tiny_record_replays_its_first_steps_exactly(number, tmp_path, monkeypatch):
    """The recorded seed and shapes, the first logged train losses: identical on the machine class the record
    was made on, close elsewhere (another CPU's kernels round differently)."""
    monkeypatch.setenv("SPEEDRUN_RUNS_DIR", str(tmp_path))
    rec = store.find_record("tiny", number)
    steps = min(PREFIX_STEPS, len(rundir.read_events(rec.path / "run-1.jsonl").of("log")))
    report = compare.prefix_replay(load_track("tiny"), number, steps, nproc=2, out=tmp_path / "replay")
    assert len(report["replayed"]) == steps > 0
    if report["same_hardware"]:
        assert report["identical"], (report["recorded"][:3], report["replayed"][:3])
    else:
        worst = max(abs(a["train_loss"] - b["train_loss"]) for a, b in zip(report["recorded"], report["replayed"]))
        assert worst < 0.05, f"record #{number} drifts by {worst} on {report['flags']}"


def test_gpt2_tracks_say_plainly_that_no_verified_run_exists():
    for track in ("gpt2-small", "gpt2-medium", "optimization"):
        records = store.load_records(track)
        assert len(records) >= 2 and not any(r.verified for r in records)
        assert all("no verified run" in r.note for r in records)
        assert store.current_record(track) is None
        for r in records:
            assert rundir.sha256_file(r.script) == r.script_sha256, f"{r.path}: script changed since entered"


def test_leaderboard_history_lists_the_external_table(capsys):
    assert main(["leaderboard", "--history", "--track", "gpt2-small"]) == 0
    out = capsys.readouterr().out
    assert "llm.c baseline" in out and "self-reported" in out.lower()
