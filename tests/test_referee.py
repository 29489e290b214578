"""The referee, each case through the real launcher (`speedrun run` -> torchrun -> bootstrap -> the submission).

Variants of the tiny AdamW baseline are made by editing its source, so each is a real model with one defect.
The base script is record #1 as written for API 1 (a frozen copy), so these runs also show that API 1
scripts keep running. The attacks of a hostile script live in test_adversarial.py; this file covers the
honest path, the evidence and bad input (crashes, syntax errors, a bad validation shape, plain torchrun).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic

from speedrun.evidence import rundir
from speedrun.evidence import schema
from speedrun.judge import integrity, verify
from speedrun.cli import main

ROOT = Path(__file__).resolve().parent.parent
# record #1 as it was written for API 1 (harness 0.1.0), frozen: every test here also shows API 1 still runs
BASELINE = ROOT / "tests" / "fixtures" / "api1_adamw_baseline.py"
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


def launch(script: Path, out: Path, *extra: str, nproc: int = 2, runs: int = 1, fast=FAST) -> int:
    return main(["run", str(script), "--track", "smoke", "--nproc", str(nproc), "--runs", str(runs),
                 "--out", str(out), *extra, *fast])


# the sandbox (speedrun.referee.sandbox) seen from inside: the honest run below prints what it finds, one
# `PROBE key=value` line each
PROBE = """
import os as _os
def _probe(key, value):
    # one write per line: the ranks run unbuffered and share the log, and print() writes the newline apart
    _os.write(1, f"PROBE rank{run.rank} {key}={value}\\n".encode())
_launcher = int(_os.environ["PROBE_LAUNCHER_PID"])
try:
    _os.kill(_launcher, 0)
    _probe("kill", "reached")
except OSError as _exc:
    _probe("kill", type(_exc).__name__)
_me = bytes.fromhex(_os.environ["PROBE_LAUNCHER_CMDLINE"])
_seen = False
for _p in _os.listdir("/proc"):
    if _p.isdigit():
        try:
            _seen = _seen or open(f"/proc/{_p}/cmdline", "rb").read() == _me
        except OSError:
            pass
_probe("launcher_in_proc", _seen)
_probe("tmp_before", sorted(_os.listdir("/tmp")))
_probe("home_before", sorted(_os.listdir(_os.environ["HOME"])))
for _d in ("/tmp", _os.environ["HOME"]):
    open(_os.path.join(_d, f"left-by-{run.repetition}-{run.rank}"), "w").write("weights")
_probe("run_dir", sorted(_os.listdir(run.run_dir)))
_records = _os.environ["PROBE_RECORDS"]
_probe("records", sorted(_os.listdir(_records)) if _os.path.isdir(_records) else "absent")
try:
    open(speedrun.__file__, "a").close()
    _probe("harness", "writable")
except OSError as _exc:
    _probe("harness", type(_exc).__name__)
_probe("uid", _os.getuid())
"""


OUTSIDE_HASH = """
import hashlib, sys, time
from pathlib import Path
while True:
    for path in sorted(Path(sys.argv[1]).rglob("*.bin")):
        hashlib.sha256(path.read_bytes()).hexdigest()
    time.sleep(0.5)
"""


def probes(log: Path) -> dict[str, str]:
    out = {}
    for line in log.read_text().splitlines():
        if line.startswith("PROBE "):
            key, _, value = line[6:].partition("=")
            out[key] = value
    return out


def test_honest_submission_qualifies_and_leaves_complete_evidence(env, tmp_path, monkeypatch):
    out = tmp_path / "run"
    script = variant(tmp_path, "api1_adamw_baseline", "run.start()\n", PROBE + "run.start()\n")
    monkeypatch.setenv("PROBE_LAUNCHER_PID", str(os.getpid()))
    monkeypatch.setenv("PROBE_LAUNCHER_CMDLINE", Path("/proc/self/cmdline").read_bytes().hex())
    monkeypatch.setenv("PROBE_RECORDS", str(ROOT / "records"))
    # meanwhile another process (a user's `speedrun verify` or sha256sum) reads the same data files: not the
    # script's doing, so no problem for the run
    hasher = subprocess.Popen([sys.executable, "-c", OUTSIDE_HASH, env["SPEEDRUN_DATA_DIR"]])
    try:
        assert launch(script, out, "--replica", runs=2) == 0
    finally:
        hasher.kill()
        hasher.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    # inside its sandbox the script could not reach the launcher, the evidence, the records, the harness, nor
    # what repetition 1 left in /tmp and $HOME
    assert manifest["sandbox"].startswith("bwrap ") and manifest["sandbox_uid"] == 65534
    first, second = probes(out / "run-1.log"), probes(out / "run-2.log")
    # the replica runs the script to start() in a sandbox of its own, as the repetitions do; nor do any of them
    # see the launcher's sealed states (its /tmp holds them while they run)
    for seen in (first, second, probes(out / "replica.log")):
        for r in (0, 1):
            assert "speedrun-seal" not in seen[f"rank{r} tmp_before"]
            assert seen[f"rank{r} kill"] == "ProcessLookupError" and seen[f"rank{r} launcher_in_proc"] == "False"
            assert seen[f"rank{r} run_dir"] == "['api1_adamw_baseline.py']", seen
            assert seen[f"rank{r} records"] in ("[]", "absent") and seen[f"rank{r} harness"] == "OSError"
            assert seen[f"rank{r} uid"] == "65534"
    assert "left-by-1" not in second["rank0 tmp_before"] + second["rank1 tmp_before"]
    assert second["rank0 home_before"] in ("[]", "['left-by-2-1']")
    assert not list(out.glob("left-by-*")) and not list(Path(os.environ.get("HOME", "/root")).glob("left-by-*"))
    assert verify.verify_run_dir(out, write=False)["sandbox"] == manifest["sandbox"]
    assert all(r["events_sha256"] == rundir.sha256_file(out / f"run-{r['k']}.jsonl") for r in manifest["repetitions"])
    assert manifest["end_check"]["problems"] == []
    assert manifest["track"]["name"] == "smoke" and manifest["nproc_per_node"] == 2 and manifest["refereed"]
    assert [r["status"] for r in manifest["repetitions"]] == ["ok", "ok"]
    assert manifest["seeds"] == [0, 1] and manifest["env"]["torch"]
    assert set(manifest["pins"]["data"]) == {"smoke_val_000000.bin", "smoke_train_000001.bin", "smoke_train_000002.bin"}
    assert "speedrun/spec.py" in manifest["pins"]["harness"] and manifest["pins"]["track"]["name"] == "smoke"
    assert manifest["hardware_fingerprint"]["cpu_count"] >= 1
    events = rundir.read_events(out / "run-1.jsonl")
    assert events.sealed and events.seal_ok
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["init", "init"] and {"loader", "warmup", "start", "val", "finish"} <= set(kinds)
    assert not events.of("problem")
    assert sorted(e["seed"] for e in events.of("init")) == [0, 0]      # both ranks, the launcher's seed
    val = events.last("val")
    assert val["tokens"] == 16384 and val["batches"] == 6 and len(val["ranks"]) == 2
    assert all(r["probe"]["passed"] and r["probe"]["rows"] > 0 for r in val["ranks"])
    assert val["loss"] == pytest.approx(sum(r["loss_sum"] for r in val["ranks"]) / 16384, rel=1e-12)
    # intermediate validations measure the monitor split (val tokens after the scored ones); the scored tokens
    # are first measured by the validation finish() asks for, after the clock stopped
    monitor = [v for v in events.of("val") if v["split"] == "monitor"]
    assert val["split"] == "scored" and len(monitor) == 1 and monitor[0]["step"] == val["step"] == 6
    assert monitor[0]["tokens"] == 16384 and monitor[0]["loss"] != val["loss"]
    start, finish = events.last("start"), events.last("finish")
    assert start["start_loss"] >= start["no_data_level"] - 1e-9
    # the moments between finish() and the scored validation's first batch are on the clock (for an honest
    # script, which has the harness's finish() begin it at once, a few milliseconds)
    late = val["charged_s"]
    assert 0 <= late < 5.0  # milliseconds here; generous, so a stall on a loaded machine is no failure
    assert finish["timed_s"] == pytest.approx(finish["t"] - start["t"] - monitor[0]["untimed_s"] + late, abs=1e-3)
    assert val["t"] > finish["t"] and val["timed_s"] == pytest.approx(finish["timed_s"] - late, abs=1e-3)
    budget = events.last("budget")
    assert budget["charged_s"] == 0 and budget["pre_start_budget_s"] == 300
    assert finish["charged_s"] == pytest.approx(late, abs=1e-4)
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["qualifies"] and verdict["problems"] == [] and verdict["throughput"]["tokens_per_s"] > 0
    assert schema.check(verdict, schema.VERDICT_FIELDS, "verdict") is None
    assert schema.check(manifest, schema.MANIFEST_FIELDS, "manifest") is None
    assert (out / "run-2.log").read_text().count("final val_loss") == 1
    # the replica check: the script started once more, each repetition's sealed state loaded into its model and
    # asked for the scored rows cut at secret positions; on the CPU it repeats the scored losses exactly
    replica = manifest["replica"]
    assert replica["status"] == "checked" and [e["k"] for e in replica["repetitions"]] == [1, 2]
    assert all(e["checked"] and e["positions"] > 0 and e["d_max"] == 0.0 for e in replica["repetitions"])
    assert all(e["bare"] for e in replica["repetitions"])  # API 1: start() had no logits_fn, the model was called
    assert verdict["replica"]["checked"] and verdict["replica"]["test"]["gap"] == 0.0
    assert (out / "replica.log").is_file()
    # the blind positions of both repetitions, pooled by the verdict
    pooled, _ = integrity.blind_pooled({k: rundir.read_events(out / f"run-{k}.jsonl") for k in (1, 2)})
    assert verdict["blind"] == (pooled.to_dict() if pooled is not None else None)

    # editing the evidence afterwards is caught, and so is editing the script copy
    lines = (out / "run-1.jsonl").read_text().splitlines()
    doctored = [ln.replace(f'"loss":{val["loss"]}', '"loss":1.0') if '"event":"val"' in ln else ln for ln in lines]
    assert doctored != lines
    (out / "run-1.jsonl").write_text("\n".join(doctored) + "\n")
    v = verify.verify_run_dir(out)
    assert not v["qualifies"] and any("modified after the run" in p for p in v["problems"])
    assert any("run-1.jsonl differs from the sha256 the launcher kept" in p for p in v["problems"])
    (out / "run-1.jsonl").write_text("\n".join(lines) + "\n")
    assert verify.verify_run_dir(out)["qualifies"]
    with open(out / manifest["script"]["name"], "a") as f:
        f.write("\n# changed\n")
    v = verify.verify_run_dir(out)
    assert any("changed after the run" in p for p in v["problems"])
    assert main(["verify", str(out)]) == 1
    # a manifest whose fields have the wrong types is a named problem, not a crash
    broken = dict(manifest, seeds="0,1", repetitions=[dict(manifest["repetitions"][0], k="1")])
    (out / "manifest.json").write_text(json.dumps(broken))
    v = verify.verify_run_dir(out, write=False)
    assert "manifest.json field 'seeds' has type str, expected list" in v["problems"]
    broken["seeds"] = [0, 1]
    (out / "manifest.json").write_text(json.dumps(broken))
    v = verify.verify_run_dir(out, write=False)
    assert "manifest.json repetition field 'k' has type str, expected int" in v["problems"]


def test_crashing_submission_is_recorded_and_other_runs_kept(env, tmp_path):
    script = variant(tmp_path, "crashy", "run.start()\n",
                     "run.start()\nif run.repetition == 1:\n    raise RuntimeError('boom [/bold] in the submission')\n")
    out = tmp_path / "run"
    assert launch(script, out, runs=2) == 1  # rich markup in the error text must not crash the launcher
    manifest = json.loads((out / "manifest.json").read_text())
    first, second = manifest["repetitions"]
    assert first["status"] == "failed" and first["exit_code"] != 0
    assert "boom [/bold] in the submission" in first["tail"]
    assert second["status"] == "ok"
    assert rundir.read_events(out / "run-2.jsonl").last("finish") is not None
    v = json.loads((out / "verdict.json").read_text())
    assert not v["qualifies"] and any("repetition 1 failed" in p for p in v["problems"])


def test_deterministic_failure_stops_the_remaining_repetitions(env, tmp_path):
    script = variant(tmp_path, "typo", "import speedrun\n", "import speedrun\nimport speedrun_does_not_exist\n")
    out = tmp_path / "run"
    assert launch(script, out, runs=3) == 1
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["status"] for r in manifest["repetitions"]] == ["failed", "stopped", "stopped"]
    assert "ModuleNotFoundError" in manifest["repetitions"][1]["error"]
    assert not (out / "run-2.jsonl").exists()


def test_syntax_error_launches_nothing(env, tmp_path, capsys):
    script = variant(tmp_path, "broken", "run.start()\n", "run.start(\n")
    out = tmp_path / "run"
    assert launch(script, out, runs=3) == 1
    err = capsys.readouterr().err
    assert "syntax error" in err and "nothing was launched" in err and not (out / "run-1.log").exists()


def test_finish_without_a_final_validation_fails(env, tmp_path):
    script = variant(tmp_path, "unfinished", "result = run.finish()", "train_step(0)\nresult = run.finish()")
    out = tmp_path / "run"
    assert launch(script, out, nproc=1) == 1
    v = json.loads((out / "verdict.json").read_text())
    assert any("trained after its last validation" in p for p in v["problems"])


def test_validation_batch_that_does_not_tile_is_an_error(env, tmp_path):
    script = variant(tmp_path, "badval", "run.validate(loss_fn, step=step, logits_fn=logits_fn)",
                     "run.validate(loss_fn, step=step, logits_fn=logits_fn, batch_tokens=384)")
    out = tmp_path / "run"
    assert launch(script, out, nproc=1) == 1
    assert "does not tile" in (out / "run-1.log").read_text()


def test_ranks_that_train_apart_are_a_problem(env, tmp_path):
    script = variant(tmp_path, "nosync", "if run.world_size > 1 else fwd", "if False else fwd")
    out = tmp_path / "run"
    launch(script, out, "--no-verify")
    v = verify.verify_run_dir(out)
    assert not v["qualifies"]
    assert any("model parameters differ after finish()" in p for p in v["problems"]), v["problems"]


def test_plain_torchrun_is_unrefereed_and_never_qualifies(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(BASELINE),
           "--track", "smoke", *FAST[1:]]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = (Path(env["SPEEDRUN_RUNS_DIR"]) / "smoke").glob("*_torchrun")
    events = rundir.read_events(run_dir / "run-1.jsonl")
    assert events.seal_ok and len(events.last("val")["ranks"]) == 2
    v = verify.verify_run_dir(run_dir)
    assert not v["qualifies"] and v["repetitions"][0]["final_loss"] > 0
    assert v["problems"] == ["unrefereed run (started without `speedrun run`): it can never qualify for a record"]


def test_launcher_logs_train_loss_to_wandb_offline(env, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    script = variant(tmp_path, "logging", "    optimizer.zero_grad(set_to_none=True)\n",
                     "    optimizer.zero_grad(set_to_none=True)\n    run.log(train_loss=loss.detach())\n")
    assert "loss = " in script.read_text()
    out = tmp_path / "run"
    assert launch(script, out, "--wandb", "--wandb-project", "speedrun-test", "--wandb-name", "logged",
                  "--no-verify", nproc=1) == 0
    logs = rundir.read_events(out / "run-1.jsonl").of("log")
    assert [e["step"] for e in logs] == list(range(1, 7)) and all(e["scalars"]["train_loss"] > 0 for e in logs)
    offline = list(out.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0
