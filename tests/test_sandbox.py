"""The ranks' OS sandbox (speedrun.referee.sandbox): its command line, what a script sees from inside it,
and the record of a run without it (never a record).

What a script sees from inside is probed by test_referee.py's first test (its 2-rank honest run, sandboxed by
default, carries the probe: one launch for both, to keep the suite short).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import synthetic

from speedrun.errors import SpeedrunError
from speedrun.referee import sandbox

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "tests" / "fixtures" / "api1_adamw_baseline.py"
FAST = ["--", "--steps", "4", "--warmup-steps", "1", "--dim", "32", "--layers", "1", "--heads", "2"]

@pytest.fixture
def env(tmp_path, monkeypatch):
    for k, v in synthetic.make_track(tmp_path / "track").items():
        monkeypatch.setenv(k, v)
    return tmp_path


def test_the_command_line_isolates_and_binds_only_what_the_ranks_need(tmp_path):
    box = sandbox.Sandbox("/usr/bin/bwrap", "0.8.0", hide=[Path("/x/runs"), Path("/x/runs/r1")],
                          files=[(Path("/x/runs/r1/t.py"), Path("/x/runs/r1/t.py")),
                                 (Path("/blobs/ab"), Path("/x/data/val.bin"))], devices=["/dev/nvidia0"])
    cmd = box.wrap(["python", "-m", "torch.distributed.run", "x"], socket="/tmp/speedrun-referee-1/referee.sock")
    assert cmd[0] == "/usr/bin/bwrap" and cmd[-4:] == ["python", "-m", "torch.distributed.run", "x"]
    head = cmd[:cmd.index("--")]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session"):
        assert flag in head
    assert "--share-net" not in head
    assert head[head.index("--uid") + 1] == "65534"
    pairs = [tuple(head[i:i + 3]) for i in range(len(head) - 2)]
    assert ("--ro-bind", "/", "/") in pairs and ("--dev-bind", "/dev/nvidia0", "/dev/nvidia0") in pairs
    order = [head.index(x) for x in ("/proc", "--tmpfs", "/x/runs", "/x/runs/r1", "/blobs/ab",
                                     "/tmp/speedrun-referee-1/referee.sock")]
    assert order == sorted(order)  # binds lie on top of the tmpfs mounts, parents before children
    assert ("--ro-bind", "/blobs/ab", "/x/data/val.bin") in pairs
    assert ("--bind", "/tmp/speedrun-referee-1/referee.sock", "/tmp/speedrun-referee-1/referee.sock") in pairs
    assert ("--setenv", "HOME", sandbox.HOME) in pairs
    record = box.record()
    assert record["sandbox"] == "bwrap 0.8.0" and sandbox.SOCKET_PLACEHOLDER in record["sandbox_mounts"]


def test_hidden_paths_never_cover_the_environment_or_the_harness(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEEDRUN_RUNS_DIR", "/")
    monkeypatch.setenv("SPEEDRUN_DATA_DIR", str(ROOT.parent))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    hidden = sandbox.hidden_paths(run_dir)
    assert Path(os.path.realpath(run_dir)) in hidden
    assert Path("/") not in hidden and ROOT.parent not in hidden


def test_without_bwrap_the_run_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    box, why = sandbox.prepare(tmp_path, Path(__file__))
    assert box is None and "not installed" in why
    box, why = sandbox.prepare(tmp_path, Path(__file__), exe="/bin/false")
    assert box is None and "probe failed" in why


def test_an_unsandboxed_run_is_recorded_and_can_never_be_a_record(env, tmp_path):
    from speedrun.ledger import compare
    from speedrun.referee import launcher
    from speedrun.tracks import load_track

    job = launcher.Launch(BASELINE, load_track("smoke"), 1, 1, tmp_path / "run", 0, FAST[1:], {}, sandbox=False)
    assert job.manifest["sandbox"] == "none" and job.manifest["sandbox_reason"] == "--no-sandbox was given"
    verdict = {"sandboxed": False, "sandbox": "none (--no-sandbox was given)"}
    with pytest.raises(SpeedrunError, match="sandbox"):
        compare.refuse_unsandboxed(tmp_path / "run", verdict)


def test_an_environment_under_tmp_is_bound_back_read_only(tmp_path, monkeypatch):
    """A venv or a clone under /tmp (as CI makes them) stays importable under the sandbox's fresh /tmp."""
    venv = Path("/tmp") / f"sandbox-venv-test-{os.getpid()}"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    try:
        monkeypatch.setattr(sandbox.sys, "prefix", str(venv))
        monkeypatch.setenv("PYTHONPATH", str(venv / "bin"))
        found = sandbox.environment_paths()
        assert Path(os.path.realpath(venv)) in found and all(not str(p).startswith(str(venv) + "/") for p in found)
        box = sandbox.Sandbox("bwrap", "0", environment=found)
        args = box.mounts()
        i = args.index("/tmp")  # the fresh /tmp first, the environment bound back over it
        assert ("--ro-bind", str(found[0]), str(found[0])) in list(zip(args[i:], args[i + 1:], args[i + 2:]))
    finally:
        shutil.rmtree(venv, ignore_errors=True)


def test_a_closed_folder_on_the_way_to_python_is_covered_and_the_environment_bound_back(request, monkeypatch):
    """A pyenv interpreter under a 700 /root: nobody could not start Python there. The closed folder gets an
    empty tmpfs (root's other files stay hidden) and the interpreter's prefix is bound back read-only."""
    base = Path(tempfile.mkdtemp(prefix="sandbox-closed-", dir="/tmp"))  # pytest's own tmp folders are 700
    base.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(base, ignore_errors=True))
    closed = base / "root"
    prefix = closed / ".pyenv" / "versions" / "3.11"
    prefix.mkdir(parents=True)
    (closed / "secret").write_text("x")
    closed.chmod(0o700)
    monkeypatch.setattr(sandbox, "_environment_candidates", lambda: [prefix, base / "open"])
    private = sandbox.private_dirs()
    assert private == [closed]
    found = sandbox.environment_paths(private)
    assert found == [prefix]
    args = sandbox.Sandbox("bwrap", "0", environment=found, private=private).mounts()
    triples = list(zip(args, args[1:], args[2:]))
    cover, back = triples.index(("--tmpfs", str(closed), "--ro-bind")), triples.index(("--ro-bind", str(prefix), str(prefix)))
    assert args.index("/tmp") < cover < back


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_another_copy_of_the_data_in_a_user_folder_is_out_of_sight(tmp_path, request):
    """A second clone's data/ or a dataset copied to /home, /root, /mnt...: the data watch follows only the run's
    own files, so the sandbox covers every top-level folder that is not the system's; the Python environment
    and the harness are bound back (the ranks still import them)."""
    place = next((Path("/", d) for d in ["srv", "mnt", "home", *Path.home().parts[1:2], "root"]
                  if d not in sandbox.SYSTEM_DIRS and os.access(Path("/", d), os.W_OK)), None)
    if place is None:
        pytest.skip("no writable folder outside the system's for the copy")
    copy = Path(tempfile.mkdtemp(prefix=".speedrun-copy-", dir=place)) / "tiny_val_000000.bin"
    request.addfinalizer(lambda: shutil.rmtree(copy.parent, ignore_errors=True))
    copy.write_bytes(b"\0" * 1024)
    script = tmp_path / "run" / "train.py"
    script.parent.mkdir()
    script.write_text("print('x')\n")
    box, why = sandbox.prepare(script.parent, script)
    assert why is None and place in box.private
    look = f"import os, speedrun, torch; print('seen' if os.path.exists({str(copy)!r}) else 'hidden')"
    done = subprocess.run(box.wrap([sys.executable, "-c", look]), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.split() == ["hidden"], done.stderr[-2000:]


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")
def test_a_relative_run_directory_is_sandboxed(tmp_path, monkeypatch):
    """`speedrun run` without --out makes runs/<track>/<stamp>/ relative to the current directory: the script
    copy's bind must still land (bwrap cannot place a relative destination), so the run is sandboxed."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "train.py").write_text("print('x')\n")
    box, why = sandbox.prepare(Path("runs/r"), Path("runs/r/train.py"))
    assert why is None and box is not None
    assert box.files == [(tmp_path.resolve() / "runs" / "r" / "train.py", tmp_path / "runs" / "r" / "train.py")]
