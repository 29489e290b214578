"""The launcher's pieces on their own: the torchrun command, the run directory, the manifest, the syntax check
before anything launches, what a failed repetition's log is cut down to, and the process sweep after a
repetition. The launched paths are in tests/test_referee.py."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from speedrun.errors import SpeedrunError
from speedrun.evidence import schema
from speedrun.referee import launcher
from speedrun.tracks import load_track


def test_torchrun_command_starts_every_rank_through_the_bootstrap(tmp_path):
    script = tmp_path / "train.py"
    cmd = launcher.torchrun_command(script, 2, ["--steps", "3"], {"nnodes": None})
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    assert cmd[4:] == ["--nproc_per_node=2", "-m", "speedrun.rank.bootstrap", str(script), "--steps", "3"]
    rdzv = launcher.torchrun_command(script, 1, [], {"rdzv-backend": "c10d", "rdzv-endpoint": "localhost:29400"})
    assert "--standalone" not in rdzv and "--rdzv-backend=c10d" in rdzv and "--rdzv-endpoint=localhost:29400" in rdzv


def test_a_script_that_does_not_compile_is_named_with_its_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef f(:\n    pass\n")
    with pytest.raises(SpeedrunError, match=r"bad\.py:3: syntax error: .*nothing was launched"):
        launcher.check_syntax(bad)
    good = tmp_path / "good.py"
    good.write_text("x = 1\n")
    launcher.check_syntax(good)


def test_run_directories_are_fresh_and_never_reused(tmp_path, monkeypatch):
    track = load_track("tiny")
    monkeypatch.setenv("SPEEDRUN_RUNS_DIR", str(tmp_path / "runs"))
    a = launcher.new_run_dir(track, tmp_path / "muon.py", None)
    b = launcher.new_run_dir(track, tmp_path / "muon.py", None)
    assert a != b and a.parent == b.parent == tmp_path / "runs" / "tiny" and a.name.endswith("_muon")
    out = tmp_path / "mine"
    assert launcher.new_run_dir(track, tmp_path / "muon.py", str(out)) == out and out.is_dir()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(SpeedrunError, match="exists and is not empty"):
        launcher.new_run_dir(track, tmp_path / "muon.py", str(out))


def test_the_manifest_fits_its_schema_and_names_the_machine(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    cmd = launcher.torchrun_command(script, 2, [], {})
    manifest = launcher.build_manifest(load_track("tiny"), script, cmd, 2, 1, 3, [0, 1, 2], {"harness": {}})
    assert schema.check(manifest, schema.MANIFEST_FIELDS, "manifest.json") is None
    assert manifest["script"]["name"] == "train.py" and len(manifest["script"]["sha256"]) == 64
    assert manifest["hardware_fingerprint"]["kind"] in ("cpu", "gpu") and manifest["refereed"]


def test_a_failed_repetition_is_summed_up_by_its_own_error_line(tmp_path):
    log = tmp_path / "run-1.log"
    log.write_text("step 1\nstep 2\nTraceback (most recent call last):\n  File \"train.py\", line 9, in <module>\n"
                   "[rank1]: RuntimeError: boom at step 30\n"
                   "E1202 11:00:00.000000 123 torch/distributed/elastic/multiprocessing/api.py:1 failed (exitcode: 1)\n"
                   "Traceback of torchrun itself\nChildFailedError: the agent's own report\n")
    tail, error = launcher.failure_summary(log)
    assert error == "RuntimeError: boom at step 30"
    assert "ChildFailedError" not in tail and "step 2" in tail
    assert launcher.failure_summary(tmp_path / "missing.log") == ("", None)


def test_processes_a_repetition_leaves_behind_are_found_and_ended():
    before = launcher.descendants()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10
        while child.pid not in launcher.descendants() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in launcher.descendants()
        killed = launcher.kill_leftovers(before)
        assert child.pid in killed and not Path(f"/proc/{child.pid}").exists()  # killed and reaped
    finally:
        if child.poll() is None:
            child.kill()
