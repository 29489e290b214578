"""`verify` on its own: the verdict of a run directory from its files alone, without launching anything.

Each test judges a copy of the tiny track's committed Muon record (real evidence, made by the launcher) after
one edit, and checks that the verdict names what was changed. A harness other than the one that judged the
record is information, never a problem: a record stays evidence of what happened under its own harness.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from speedrun.evidence import rundir
from speedrun.judge import verify
from speedrun.version import __version__

RECORD = Path(__file__).resolve().parent.parent / "records" / "tiny" / "002_muon-baseline"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A copy of the record's evidence (what a run directory holds: no record.toml, no verdict)."""
    out = tmp_path / "run"
    out.mkdir()
    for p in RECORD.iterdir():
        if p.name not in ("record.toml", "verdict.json", "compare.json"):
            shutil.copy2(p, out / p.name)
    return out


def edit_manifest(run_dir: Path, **changes) -> None:
    path = run_dir / rundir.MANIFEST
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_a_record_made_under_another_harness_still_qualifies_and_names_the_difference(run_dir):
    before = {p.name: p.read_bytes() for p in RECORD.iterdir()}
    verdict = verify.verify_run_dir(RECORD, write=False)
    assert {p.name: p.read_bytes() for p in RECORD.iterdir()} == before  # nothing written into the record
    assert verdict["qualifies"], verdict["problems"]
    harness = verdict["harness"]
    assert harness["run"] == "0.2.0" and harness["now"] == __version__
    assert harness["differs"] and all(d.startswith("harness file speedrun/") for d in harness["differs"])
    assert not any("harness" in p for p in verdict["problems"])
    assert verify.verify_run_dir(run_dir, write=False)["qualifies"]


def test_verify_writes_the_verdict_only_when_asked(run_dir):
    verify.verify_run_dir(run_dir, write=False)
    assert not (run_dir / rundir.VERDICT).exists()
    written = verify.verify_run_dir(run_dir)
    assert json.loads((run_dir / rundir.VERDICT).read_text())["qualifies"] == written["qualifies"]


def test_an_edited_event_breaks_the_seal_of_its_repetition(run_dir):
    path = rundir.events_path(run_dir, 2)
    path.write_text(path.read_text().replace('"batches":300,"timed_s":', '"batches":300,"timed_s":1', 1))
    problems = verify.verify_run_dir(run_dir, write=False)["problems"]
    assert problems and all("repetition 2" in p or "run-2" in p for p in problems), problems
    assert any("seal" in p for p in problems), problems


def test_an_edited_script_copy_is_named(run_dir):
    script = run_dir / "train.py"
    script.write_text(script.read_text() + "\n# edited after the run\n")
    problems = verify.verify_run_dir(run_dir, write=False)["problems"]
    assert any("train.py changed after the run" in p for p in problems), problems


def test_missing_events_and_repeated_seeds_are_problems(run_dir):
    rundir.events_path(run_dir, 3).unlink()
    edit_manifest(run_dir, seeds=[0, 1, 1])
    problems = verify.verify_run_dir(run_dir, write=False)["problems"]
    assert any("repetition 3 left no events" in p for p in problems), problems
    assert any("seeds are not distinct" in p for p in problems), problems


def test_a_malformed_manifest_names_the_field(run_dir):
    manifest = json.loads((run_dir / rundir.MANIFEST).read_text())
    del manifest["seeds"]
    (run_dir / rundir.MANIFEST).write_text(json.dumps(manifest))
    problems = verify.verify_run_dir(run_dir, write=False)["problems"]
    assert any("seeds" in p for p in problems), problems


def test_an_unrefereed_run_never_qualifies(run_dir):
    edit_manifest(run_dir, refereed=False)
    verdict = verify.verify_run_dir(run_dir, write=False)
    assert not verdict["qualifies"] and any("unrefereed" in p for p in verdict["problems"])


def test_data_that_differs_from_the_run_is_a_problem(run_dir, tmp_path, monkeypatch):
    from speedrun.data import streams
    from speedrun.tracks import load_track

    track = load_track("tiny")
    train, val = streams.track_files(track)  # generated on first use
    data = tmp_path / "data"
    shutil.copytree(val[0].parent, data / val[0].parent.name)
    copy = data / val[0].parent.name / val[0].name
    raw = bytearray(copy.read_bytes())
    raw[-1] ^= 0xFF
    copy.write_bytes(bytes(raw))
    monkeypatch.setenv("SPEEDRUN_DATA_DIR", str(data))
    problems = verify.verify_run_dir(run_dir, write=False)["problems"]
    assert any(f"data file {val[0].name} differs" in p for p in problems), problems


def test_the_command_leaves_a_ledger_entry_untouched_and_names_the_harness(run_dir, capsys):
    from speedrun.cli import main

    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in RECORD.iterdir()}
    assert main(["verify", str(RECORD)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "QUALIFIES" in out and "judged under harness 0.2.0" in out and "Information, not a problem" in out
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in RECORD.iterdir()} == before
    assert main(["verify", str(run_dir)]) == 0 and (run_dir / rundir.VERDICT).is_file()  # a run gets its verdict
