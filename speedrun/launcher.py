"""`speedrun run SCRIPT --track T`: launch a submission K times with torchrun and keep the evidence.

The launcher copies the script's bytes into a fresh run directory, writes `manifest.json` (versions, devices,
data hashes, command, seeds), runs `python -m torch.distributed.run ... <copy>` once per repetition with its
output captured to `run-K.log`, shows live progress from the referee's `run-K.jsonl`, measures each
repetition's process wallclock, and finally calls `speedrun verify` on the directory.

Multi-node runs use torchrun's own rendezvous: `--nnodes`, `--node-rank`, `--rdzv-backend`, `--rdzv-endpoint`
and `--rdzv-id` are passed through unchanged (without them the launch is `--standalone`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from rich.console import Console

from speedrun import API_VERSION, __version__, data, evidence
from speedrun.errors import SpeedrunError
from speedrun.tracks import Track, load_track

console = Console(stderr=True, soft_wrap=True)
TAIL_LINES = 30


# --- run directories and manifests ---------------------------------------------------------------------------


def runs_root() -> Path:
    return Path(os.environ.get("SPEEDRUN_RUNS_DIR", "runs"))


def new_run_dir(track: Track, script: Path, out: str | None) -> Path:
    if out:
        run_dir = Path(out)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SpeedrunError(f"{run_dir}: output directory exists and is not empty")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run_dir = runs_root() / track.name / f"{stamp}_{script.stem}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _version(dist_name: str) -> str | None:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Software and device versions of this machine (the launcher's view; ranks add their device name)."""
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton") or _version("pytorch-triton"),
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        env["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["device_count"] = torch.cuda.device_count()
    else:
        env["devices"] = [env["cpu"]]
        env["device_count"] = 0
    return env


def _cpu_name() -> str:
    from speedrun.spec import _cpu_name as name

    return name()


def data_hashes(track: Track, files: list[Path]) -> dict[str, str]:
    """sha256 of each data file: the track's pin when it has one (files were checked against pins when
    fetched or generated), else computed once and cached beside the file, keyed by size and mtime."""
    out = {}
    for path in files:
        pin = track.data.sha256.get(path.name)
        out[path.name] = pin or _cached_sha256(path)
    return out


def _cached_sha256(path: Path) -> str:
    cache_file = path.parent / ".sha256-cache.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    st = path.stat()
    key = f"{path.name}:{st.st_size}:{st.st_mtime_ns}"
    if key not in cache:
        cache[key] = evidence.sha256_file(path)
        try:
            evidence.write_json_atomic(cache_file, cache)
        except OSError:
            pass  # a read-only data directory only costs a re-hash next time
    return cache[key]


def hardware_label(env: dict, nproc: int, nnodes: int = 1) -> str:
    """e.g. '8xNVIDIA H100 80GB HBM3', or '2-core AMD EPYC' for CPU runs (whose ranks share the cores)."""
    if env.get("device_count"):
        return f"{nproc * nnodes}x{env['devices'][0]}"
    return f"{env.get('cpu_count')}-core {env.get('cpu')}"


def build_manifest(track: Track, script_copy: Path, command: list[str], nproc: int, runs: int,
                   seeds: list[int], data_files: list[Path]) -> dict:
    env = environment()
    return {
        "harness_version": __version__,
        "api_version": API_VERSION,
        "self_reported": False,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "track": {"name": track.name, "config_sha256": track.config_sha256},
        "script": {"name": script_copy.name, "sha256": evidence.sha256_file(script_copy)},
        "data": data_hashes(track, data_files),
        "env": env,
        "hardware": hardware_label(env, nproc),
        "command": command,
        "nproc_per_node": nproc,
        "runs": runs,
        "seeds": seeds,
        "repetitions": [],
    }


def standalone_run_dir(track: Track, script: Path, seed: int, is_master: bool) -> Path:
    """Under plain `torchrun script.py`, rank 0 lays out a run directory itself (one repetition)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = runs_root() / track.name / f"{stamp}_{script.stem}_torchrun"
    if not is_master:
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    copy = run_dir / script.name
    shutil.copyfile(script, copy)
    train, val = data.track_files(track)
    manifest = build_manifest(track, copy, [sys.executable, *sys.argv], int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                              1, [seed], train + val)
    manifest["launcher"] = "torchrun"
    manifest["repetitions"] = [{"k": 1, "status": "unknown", "exit_code": None, "wall_s": None,
                                "note": "launched by plain torchrun: no process wallclock or exit code"}]
    evidence.write_json_atomic(run_dir / evidence.MANIFEST, manifest)
    return run_dir


# --- launching -----------------------------------------------------------------------------------------------


def torchrun_command(script: Path, nproc: int, script_args: list[str], rdzv: dict[str, str | None]) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    passthrough = {k: v for k, v in rdzv.items() if v is not None}
    if not passthrough:
        cmd.append("--standalone")
    for flag, value in passthrough.items():
        cmd.append(f"--{flag}={value}")
    cmd += [f"--nproc_per_node={nproc}", str(script), *script_args]
    return cmd


class Progress:
    """Follows `run-K.jsonl` as rank 0 writes it and shows step, timed seconds and the last val loss."""

    def __init__(self, path: Path, label: str, sink=None):
        self.path, self.label, self.sink = path, label, sink
        self._offset = 0
        self._partial = b""
        self.batches = 0
        self.timed = 0.0
        self.val_loss = None
        self.val_count = 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._on(event)

    def _on(self, event: dict) -> None:
        kind = event.get("event")
        if kind in ("train", "finish"):
            self.batches = event.get("batches", self.batches)
            self.timed = event.get("timed_s", self.timed)
        elif kind == "val":
            self.val_loss, self.timed = event.get("loss"), event.get("timed_s", self.timed)
            self.val_count += 1
            console.print(f"  {self.label} step {event.get('step')}: val loss {self.val_loss:.4f} "
                          f"at {self.timed:.2f} s timed")
        elif kind == "probe" and not event.get("passed"):
            console.print(f"  {self.label} probe {event.get('name')} FAILED: {event.get('detail')}")
        elif kind == "warning":
            console.print(f"  {self.label} warning: {event.get('message')}")
        if self.sink is not None:
            self.sink.log(event)

    def describe(self) -> str:
        loss = f"{self.val_loss:.4f}" if self.val_loss is not None else "-"
        return f"{self.label}  batch {self.batches}  timed {self.timed:7.2f} s  val loss {loss}"


_AGENT_FAILURE = re.compile(r"^E\d{4} .*torch/distributed/elastic/.*failed \(exitcode")
_ERROR_LINE = re.compile(r"^(\[rank\d+\]: )?([\w.]+(Error|Exception|Interrupt)\b.*)$")


def failure_summary(path: Path, lines: int = TAIL_LINES) -> tuple[str, str | None]:
    """The submission's last output lines (torchrun's own failure report cut off) and its error line."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "", None
    for i, line in enumerate(text):
        if _AGENT_FAILURE.match(line):
            text = text[:i]
            break
    error = None
    for line in reversed(text):
        m = _ERROR_LINE.match(line)
        if m:
            error = m.group(2)
            break
    return "\n".join(text[-lines:]), error


def run_repetition(cmd: list[str], env: dict, log: Path, progress: Progress, timeout: float | None) -> tuple[int, float]:
    """Run one torchrun launch; returns (exit code, process wallclock seconds)."""
    began = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        status = console.status(progress.describe())
        with status:
            try:
                while proc.poll() is None:
                    time.sleep(0.25)
                    progress.poll()
                    status.update(progress.describe())
                    if timeout and time.perf_counter() - began > timeout:
                        os.killpg(proc.pid, signal.SIGTERM)
                        try:
                            proc.wait(10)
                        except subprocess.TimeoutExpired:
                            os.killpg(proc.pid, signal.SIGKILL)
                        out.write(f"\n[speedrun] repetition killed after {timeout:.0f} s timeout\n".encode())
            except KeyboardInterrupt:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                raise
    wall = time.perf_counter() - began
    progress.poll()
    return proc.returncode, wall


class Launch:
    """One run directory and the torchrun command that fills it, one repetition at a time."""

    def __init__(self, script: Path, track: Track, nproc: int, runs: int, out: str | Path | None, seed: int,
                 script_args: list[str], rdzv: dict, data_dir: str | None = None, timeout: float | None = None,
                 wandb_project: str | None = None):
        if not script.is_file():
            raise SpeedrunError(f"{script}: no such script")
        if runs < 1 or nproc < 1:
            raise SpeedrunError("--runs and --nproc must be at least 1")
        self.track, self.runs, self.timeout, self.wandb_project = track, runs, timeout, wandb_project
        self.data_dir = str(Path(data_dir).resolve()) if data_dir else None
        train, val = data.track_files(track, Path(data_dir) if data_dir else None)
        self.run_dir = new_run_dir(track, script, str(out) if out else None)
        copy = self.run_dir / script.name
        shutil.copyfile(script, copy)
        self.cmd = torchrun_command(copy, nproc, script_args, rdzv)
        self.seeds = [seed + k for k in range(runs)]
        self.manifest = build_manifest(track, copy, self.cmd, nproc, runs, self.seeds, train + val)
        evidence.write_json_atomic(self.run_dir / evidence.MANIFEST, self.manifest)

    def repetition(self, k: int) -> dict:
        """Run repetition k (1-based); record its exit code, wallclock and status in the manifest."""
        env = dict(os.environ, SPEEDRUN_TRACK=str(self.track.path), SPEEDRUN_RUN_DIR=str(self.run_dir.resolve()),
                   SPEEDRUN_REPETITION=str(k), SPEEDRUN_SEED=str(self.seeds[k - 1]), PYTHONUNBUFFERED="1")
        if self.data_dir:
            env["SPEEDRUN_DATA_DIR"] = self.data_dir
        sink = None
        if self.wandb_project:
            from speedrun import wandb_log

            sink = wandb_log.WandbSink.open(self.wandb_project, self.manifest, k, self.run_dir,
                                            name=f"{self.run_dir.name}-{k}")
        label = f"{self.run_dir.name} {k}/{self.runs}"
        progress = Progress(evidence.events_path(self.run_dir, k), label, sink)
        code, wall = run_repetition(self.cmd, env, evidence.log_path(self.run_dir, k), progress, self.timeout)
        status = "ok" if code == 0 else "failed"
        rep = {"k": k, "status": status, "exit_code": code, "wall_s": round(wall, 3), "seed": self.seeds[k - 1]}
        if code != 0:
            rep["tail"], rep["error"] = failure_summary(evidence.log_path(self.run_dir, k))
            console.print(f"  {label} [red]failed[/red] with exit code {code}: "
                          f"{rep['error'] or 'see run-%d.log' % k}", highlight=False)
        else:
            console.print(f"  {progress.describe()}  (process {wall:.1f} s)", highlight=False)
        if sink is not None:
            sink.finish(status)
        self.manifest["repetitions"].append(rep)
        evidence.write_json_atomic(self.run_dir / evidence.MANIFEST, self.manifest)
        return rep


def launch(script: Path, track: Track, nproc: int, runs: int, out: str | None, seed: int,
           script_args: list[str], rdzv: dict, data_dir: str | None = None, timeout: float | None = None,
           wandb_project: str | None = None) -> Path:
    """Run the script `runs` times; returns the run directory (verification is separate)."""
    job = Launch(script, track, nproc, runs, out, seed, script_args, rdzv, data_dir, timeout, wandb_project)
    console.print(f"[bold]speedrun run[/bold] {script.name} on track {track.name}: {runs} x {nproc} proc "
                  f"-> {job.run_dir}", highlight=False)
    for k in range(1, runs + 1):
        job.repetition(k)
    return job.run_dir


# --- command ---------------------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="launch a submission with torchrun, keep the evidence, verify it",
                       usage="speedrun run SCRIPT --track T [options] [-- SCRIPT_ARGS...]",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script", type=Path)
    p.add_argument("--track", required=True, help="track name or path to a track .toml")
    p.add_argument("--nproc", type=int, default=1, help="processes per node (GPUs, or CPU ranks)")
    p.add_argument("--runs", type=int, default=1, help="repetitions (K)")
    p.add_argument("--out", help="run directory (default runs/<track>/<stamp>_<script>)")
    p.add_argument("--seed", type=int, default=0, help="seed of repetition 1; repetition k gets seed+k-1")
    p.add_argument("--data-dir", help="data directory (default $SPEEDRUN_DATA_DIR or ./data)")
    p.add_argument("--timeout", type=float, help="kill a repetition after this many seconds")
    p.add_argument("--no-verify", action="store_true", help="skip the verdict at the end")
    p.add_argument("--wandb", action="store_true", help="log events to Weights & Biases (offline works)")
    p.add_argument("--wandb-project", default="speedrun")
    for flag in ("nnodes", "node-rank", "rdzv-backend", "rdzv-endpoint", "rdzv-id"):
        p.add_argument(f"--{flag}", help="passed through to torchrun")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    track = load_track(args.track)
    rdzv = {"nnodes": args.nnodes, "node-rank": args.node_rank, "rdzv-backend": args.rdzv_backend,
            "rdzv-endpoint": args.rdzv_endpoint, "rdzv-id": args.rdzv_id}
    script_args = list(getattr(args, "passthrough", []))
    run_dir = launch(args.script, track, args.nproc, args.runs, args.out, args.seed, script_args, rdzv,
                     data_dir=args.data_dir, timeout=args.timeout,
                     wandb_project=args.wandb_project if args.wandb else None)
    failed = [r["k"] for r in evidence.read_json(run_dir / evidence.MANIFEST)["repetitions"] if r["status"] != "ok"]
    if args.no_verify:
        return 1 if failed else 0
    from speedrun import verify

    verdict = verify.verify_run_dir(run_dir)
    verify.print_verdict(verdict)
    return 0 if verdict["qualifies"] and not failed else 1
