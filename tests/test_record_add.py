"""`record add` on its own: a verified run enters the ledger, and every refusal leaves the ledger as it was.

The runs are copies of the tiny track's two committed records (real evidence, made by the launcher), and
record #2's own side-by-side comparison stands in for a new one, so nothing is launched here; the launched
paths are in tests/test_ledger.py. The records were made before the OS sandbox and the replica check existed,
so each copy's manifest is marked as a sandboxed run's with every repetition re-checked (what the launcher
writes), unless a test is about that mark.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from speedrun.errors import SpeedrunError
from speedrun.evidence import rundir
from speedrun.ledger import compare, store

RECORDS = Path(__file__).resolve().parent.parent / "records" / "tiny"
ADAMW, MUON = RECORDS / "001_adamw-baseline", RECORDS / "002_muon-baseline"


def as_run(record: Path, out: Path, sandbox: str | None = "bwrap (test)") -> Path:
    """A record's evidence laid out as the run directory it came from (its manifest saying `sandbox`)."""
    out.mkdir(parents=True)
    for p in record.iterdir():
        if p.name not in ("record.toml", rundir.VERDICT, rundir.COMPARE):
            shutil.copy2(p, out / p.name)
    if sandbox is not None:
        manifest = json.loads((out / rundir.MANIFEST).read_text())
        # and every repetition checked by the replica, as the launcher records it for an honest run
        replica = {"status": "checked", "why": None, "seconds": 1.0, "repetitions": [
            {"k": r["k"], "checked": True, "why": None, "positions": 1024, "d_sum": 0.0, "d_sq": 0.0, "d_max": 0.0,
             "live_sum": 4096.0, "replica_sum": 4096.0} for r in manifest["repetitions"]]}
        (out / rundir.MANIFEST).write_text(json.dumps(dict(manifest, sandbox=sandbox, replica=replica)))
    return out


def ledger_state(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def ledger(tmp_path) -> Path:
    root = tmp_path / "records"
    root.mkdir()
    return root


def test_the_first_record_enters_with_its_evidence_and_tables(ledger, tmp_path):
    rec = compare.add_record(as_run(ADAMW, tmp_path / "a"), "AdamW baseline", ["@me"], root=ledger)
    assert (rec.number, rec.track, rec.verified, rec.prior) == (1, "tiny", True, 0)
    entry = ledger / "tiny" / "001_adamw-baseline"
    assert (entry / rundir.RECORD_SCRIPT).read_bytes() == (ADAMW / "train.py").read_bytes()
    assert json.loads((entry / rundir.VERDICT).read_text())["qualifies"]
    assert (entry / "run-3.jsonl").is_file() and (ledger / "tiny" / "README.md").is_file()
    assert store.current_record("tiny", ledger).number == 1


def test_a_faster_script_becomes_the_next_record_through_its_comparison(ledger, tmp_path):
    compare.add_record(as_run(ADAMW, tmp_path / "a"), "AdamW baseline", ["@me"], root=ledger)
    side_by_side = tmp_path / "cmp"
    side_by_side.mkdir()
    shutil.copy2(MUON / rundir.COMPARE, side_by_side / rundir.COMPARE)
    rec = compare.add_record(as_run(MUON, tmp_path / "m"), "Muon", ["@me"], compare_dir=side_by_side, root=ledger)
    assert (rec.number, rec.prior) == (2, 1) and rec.comparison["passed"] and rec.comparison["ratio"] < 1
    assert (ledger / "tiny" / "002_muon" / rundir.COMPARE).is_file()


@pytest.mark.parametrize("case", ["again", "problem", "arguments", "other track", "not faster", "unsandboxed"])
def test_each_refusal_names_why_and_leaves_the_ledger_untouched(ledger, tmp_path, case):
    compare.add_record(as_run(ADAMW, tmp_path / "a"), "AdamW baseline", ["@me"], root=ledger)
    before = ledger_state(ledger)
    kwargs: dict = {}
    if case == "again":
        run, why = as_run(ADAMW, tmp_path / "again"), "already recorded as #1"
    elif case == "problem":
        run, why = as_run(MUON, tmp_path / "bad"), "not verified"
        events = rundir.events_path(run, 1)
        events.write_text(events.read_text().replace('"timed_s":', '"timed_s":0', 1))
    elif case == "arguments":
        run, why = as_run(MUON, tmp_path / "args"), "script arguments"
        manifest = json.loads((run / rundir.MANIFEST).read_text())
        manifest["command"] = [*manifest["command"], "--steps", "10"]
        manifest["script"]["name"] = Path(manifest["command"][-3]).name
        (run / rundir.MANIFEST).write_text(json.dumps(manifest))
    elif case == "other track":
        run, why = as_run(MUON, tmp_path / "other"), "not gpt2-small"
        kwargs["track_name"] = "gpt2-small"
    elif case == "unsandboxed":
        run, why = as_run(MUON, tmp_path / "bare", sandbox=None), "without the OS sandbox"
    else:  # record #2's comparison, read the other way round: the prior would have to be the Muon script
        run, why = as_run(MUON, tmp_path / "slow"), "side B is not record #1's script"
        side_by_side = tmp_path / "cmp"
        side_by_side.mkdir()
        result = json.loads((MUON / rundir.COMPARE).read_text())
        result["sides"]["B"]["script_sha256"] = "0" * 64
        (side_by_side / rundir.COMPARE).write_text(json.dumps(result))
        kwargs["compare_dir"] = side_by_side
    with pytest.raises(SpeedrunError, match=why):
        compare.add_record(run, "refused", ["@me"], root=ledger, **kwargs)
    assert ledger_state(ledger) == before


def test_the_command_says_what_a_comparison_would_run_and_asks_first(ledger, tmp_path, monkeypatch, capsys):
    """Without --compare a new record is timed against the current one now: six full training runs. Off a
    terminal and without --yes that is refused, saying what and how long, and nothing is added."""
    from speedrun.cli import main

    compare.add_record(as_run(ADAMW, tmp_path / "a"), "AdamW baseline", ["@me"], root=ledger)
    before = ledger_state(ledger)
    monkeypatch.setenv("SPEEDRUN_RECORDS_DIR", str(ledger))
    run = as_run(MUON, tmp_path / "m")
    assert main(["record", "add", str(run), "--description", "Muon", "--contributors", "@me"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "6 runs (3 of this script and 3 of record #1, interleaved, 2 process(es) each), about" in err
    assert "--yes" in err and "nothing was added" in err
    assert ledger_state(ledger) == before
