"""The referee, each case through the real launcher (`speedrun run` -> torchrun -> the submission).

Variants of the tiny AdamW baseline are made by editing its source, so each is a real model with one defect.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import synthetic

from speedrun import evidence, verify
from speedrun.cli import main

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "records" / "tiny" / "001_adamw-baseline" / "train.py"
FAST = ["--", "--steps", "6", "--warmup-steps", "2", "--dim", "32", "--layers", "1", "--heads", "2"]


@pytest.fixture(scope="module")
def track_env(tmp_path_factory):
    return synthetic.make_track(tmp_path_factory.mktemp("smoke"))


@pytest.fixture
def env(track_env, monkeypatch):
    for k, v in track_env.items():
        monkeypatch.setenv(k, v)
    return track_env


def variant(tmp_path: Path, name: str, old: str, new: str) -> Path:
    source = BASELINE.read_text()
    assert old in source, f"baseline no longer contains {old!r}"
    path = tmp_path / f"{name}.py"
    path.write_text(source.replace(old, new))
    return path


def launch(script: Path, out: Path, *extra: str, nproc: int = 2, runs: int = 1) -> int:
    return main(["run", str(script), "--track", "smoke", "--nproc", str(nproc), "--runs", str(runs),
                 "--out", str(out), *extra, *FAST])


def test_honest_submission_qualifies_and_leaves_complete_evidence(env, tmp_path):
    out = tmp_path / "run"
    assert launch(BASELINE, out, runs=2) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["track"]["name"] == "smoke" and manifest["nproc_per_node"] == 2
    assert [r["status"] for r in manifest["repetitions"]] == ["ok", "ok"]
    assert manifest["seeds"] == [0, 1] and manifest["env"]["torch"]
    assert set(manifest["data"]) == {"smoke_val_000000.bin", "smoke_train_000001.bin", "smoke_train_000002.bin"}
    events = evidence.read_events(out / "run-1.jsonl")
    assert events.sealed and events.seal_ok
    kinds = [e["event"] for e in events]
    assert kinds[:4] == ["init", "loader", "warmup", "start"]
    assert {"val", "finish", "probe"} <= set(kinds)
    assert all(p["passed"] for p in events.of("probe"))
    val = events.last("val")
    assert val["tokens"] == 16384 and val["batches"] == 6
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["qualifies"] and verdict["problems"] == []
    assert (out / "run-2.log").read_text().count("final val_loss") == 1

    # editing the evidence afterwards is caught, and so is editing the script copy
    lines = (out / "run-1.jsonl").read_text().splitlines()
    doctored = [ln.replace(f'"loss":{val["loss"]}', '"loss":1.0') if '"event":"val"' in ln else ln for ln in lines]
    assert doctored != lines
    (out / "run-1.jsonl").write_text("\n".join(doctored) + "\n")
    v = verify.verify_run_dir(out)
    assert not v["qualifies"] and any("modified after the run" in p for p in v["problems"])
    (out / "run-1.jsonl").write_text("\n".join(lines) + "\n")
    assert verify.verify_run_dir(out)["qualifies"]
    with open(out / "train.py", "a") as f:
        f.write("\n# changed\n")
    v = verify.verify_run_dir(out)
    assert any("changed after the run" in p for p in v["problems"])
    assert main(["verify", str(out)]) == 1


def test_non_causal_model_fails_the_causality_probe(env, tmp_path):
    script = variant(tmp_path, "leaky", "is_causal=True", "is_causal=False")
    out = tmp_path / "run"
    assert launch(script, out) == 1
    v = json.loads((out / "verdict.json").read_text())
    assert not v["qualifies"]
    assert any("probe causality failed" in p and "sees the future" in p for p in v["problems"])


def test_training_inside_warmup_gains_nothing(env, tmp_path):
    honest, greedy = tmp_path / "honest", tmp_path / "greedy"
    script = variant(tmp_path, "greedy", "for step in range(3):", "for step in range(40):")
    assert launch(BASELINE, honest, "--no-verify", nproc=1) == 0
    assert launch(script, greedy, "--no-verify", nproc=1) == 0
    a = evidence.read_events(honest / "run-1.jsonl")
    b = evidence.read_events(greedy / "run-1.jsonl")
    wa, wb = a.last("warmup"), b.last("warmup")
    assert wa["restored"] and wb["restored"] and wb["digest_before"] == wb["digest_after"]
    assert wa["digest_before"] == wb["digest_before"]  # same initial state
    assert a.last("val")["loss"] == b.last("val")["loss"]  # forty warm-up steps bought nothing


def test_training_before_start_outside_warmup_fails(env, tmp_path):
    script = variant(tmp_path, "early", "run.start()\n", "for step in range(5):\n    train_step(step)\nrun.start()\n")
    out = tmp_path / "run"
    assert launch(script, out, nproc=1) == 1
    v = json.loads((out / "verdict.json").read_text())
    assert any("before start() outside warmup()" in p for p in v["problems"])


def test_never_calling_finish_fails_verification(env, tmp_path):
    script = variant(tmp_path, "unfinished", "result = run.finish()", "result = {'val_loss': 0, 'timed_s': 0}")
    out = tmp_path / "run"
    assert launch(script, out, nproc=1) == 1
    v = json.loads((out / "verdict.json").read_text())
    assert any("never called finish()" in p for p in v["problems"])


def test_crashing_submission_is_recorded_and_other_runs_kept(env, tmp_path):
    script = variant(tmp_path, "crashy", "run.start()\n",
                     "run.start()\nif run.repetition == 1:\n    raise RuntimeError('boom in the submission')\n")
    out = tmp_path / "run"
    assert launch(script, out, runs=2) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    first, second = manifest["repetitions"]
    assert first["status"] == "failed" and first["exit_code"] != 0
    assert "boom in the submission" in first["tail"]
    assert second["status"] == "ok"
    assert evidence.read_events(out / "run-2.jsonl").last("finish") is not None
    v = json.loads((out / "verdict.json").read_text())
    assert not v["qualifies"] and any("repetition 1 failed" in p for p in v["problems"])


def test_validation_batch_that_does_not_tile_is_an_error(env, tmp_path):
    script = variant(tmp_path, "badval", "run.validate(loss_fn, step=step, logits_fn=logits_fn)",
                     "run.validate(loss_fn, step=step, logits_fn=logits_fn, batch_tokens=3000)")
    out = tmp_path / "run"
    assert launch(script, out, nproc=1) == 1
    assert "does not tile" in (out / "run-1.log").read_text()


def test_plain_torchrun_lands_evidence_in_a_run_directory(env, tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(BASELINE),
           "--track", "smoke", *FAST[1:]]
    subprocess.run(cmd, check=True, capture_output=True)
    (run_dir,) = (Path(env["SPEEDRUN_RUNS_DIR"]) / "smoke").glob("*_torchrun")
    v = verify.verify_run_dir(run_dir)
    assert v["problems"] == [] and v["repetitions"][0]["final_loss"] > 0


def test_launcher_logs_events_to_wandb_offline(env, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    assert launch(BASELINE, out, "--wandb", "--wandb-project", "speedrun-test", "--no-verify", nproc=1) == 0
    offline = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
