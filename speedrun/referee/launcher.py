"""`speedrun run SCRIPT --track T`: the referee's process. Launch a submission K times and keep the evidence.

For each run the launcher copies the script's bytes into a fresh run directory, pins the harness, the track
file and the data files (`speedrun.evidence.pins`), records the hardware fingerprint and the software versions, and
writes `manifest.json`. For each repetition it opens the referee channel (`speedrun.referee.channel`), starts
`torchrun ... -m speedrun.rank.bootstrap <copy> ARGS`, judges what the ranks report (`speedrun.referee.repetition`), writes
`run-K.jsonl` and `run-K.log`, re-checks the pins, and records the exit code, process wallclock and status.
Finally it calls `speedrun verify` on the directory.

Each repetition's ranks run in an OS sandbox (`speedrun.referee.sandbox`, bubblewrap; `--no-sandbox` or a
missing bwrap runs them without one, which the manifest says and which no record accepts). The launcher keeps
every sealed `run-K.jsonl`'s sha256 in the manifest and, at the end of the run, re-checks them and re-reads
every pinned file (`Launch.close`). A heartbeat thread (`speedrun.referee.heartbeat`) notices the launcher
being stopped during a timed run.

It never hangs on a broken submission: a rank that never connects, a rank whose process ended while the
others wait (e.g. died mid-validation), or a run past `--timeout` is stopped with the reason in the verdict.
That reason, or else the first exception a rank raised (with the script's line it came from), is the
repetition's root cause: what is missing because of it (ranks that never called finish()) is recorded under
it, not as problems of its own. A deterministic failure of repetition 1 (a syntax error before launch, an
import error, a crash before `speedrun.init()`) stops the remaining repetitions. Ctrl-C (or SIGTERM, SIGHUP) keeps
what ran: the repetition it interrupts is sealed and recorded as "interrupted", the manifest says the run was
interrupted, and `launch` raises `Interrupted` so that `speedrun run` still writes the verdict.

Multi-node runs are refused for now: each node's launcher would see only its own ranks, and the verdict
rests on every rank's evidence (the val sums, the probes, the served batches). The `--rdzv-*` flags are
passed through to torchrun for one-node runs that need them; the tracks' hardware is one node (8xH100).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from speedrun.version import API_VERSION, __version__
from speedrun.evidence import rundir
from speedrun.evidence import hardware
from speedrun import env, paths
from speedrun.errors import STOP_SIGNALS, SpeedrunError, Stopped, signal_handlers, signal_name, stop_signal
from speedrun.report import SILENT, Reporter

TAIL_LINES = 30
CONNECT_TIMEOUT_S = 180.0     # from launch to the first rank's hello (imports of torch can be slow)
ORPHAN_GRACE_S = 60.0         # a rank's process ended; the others are stopped after this long
DRAIN_S = 10.0                # after the processes exit, wait this long for the channel to close


def interrupted_text(exc: BaseException) -> str:
    """A repetition's error when the launcher is stopped by a signal while it runs."""
    return f"the launcher was interrupted ({stop_signal(exc)}) before the repetition ended"


class Interrupted(Stopped):
    """Ctrl-C (or SIGTERM, SIGHUP: `signal_name`) reached the launcher: the run directory it leaves holds the
    repetitions that ran (the one it interrupted marked "interrupted") and a manifest that says so. Still a
    KeyboardInterrupt, so whoever runs launches in a loop (compare, replay, a ladder) stops as before; `speedrun
    run` first writes the verdict."""

    def __init__(self, run_dir: Path, signal_name: str = "SIGINT"):
        super().__init__(signal_name, str(run_dir))
        self.run_dir = run_dir


# --- run directories and manifests ---------------------------------------------------------------------------


def runs_root() -> Path:
    return paths.runs_dir()


def new_run_dir(track, script: Path, out: str | None) -> Path:
    """The run's directory, made empty (`out`, else runs/<track>/<stamp>_<script>), as an absolute path."""
    if out:
        run_dir = Path(out)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise SpeedrunError(f"{run_dir}: output directory exists and is not empty")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run_dir = runs_root() / track.name / f"{stamp}_{script.stem}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir.absolute()  # the ranks start elsewhere (the sandbox's HOME): every path handed to them is whole


def no_data_level(track, val_files: list[Path]) -> float:
    """The start check's threshold: the track's stored unigram entropy, else that of its val tokens."""
    if track.unigram_entropy is not None:
        return float(track.unigram_entropy)
    import numpy as np

    from speedrun.data import streams

    p = streams.val_unigram(val_files, track.val_tokens, track.vocab_size)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def build_manifest(track, script_copy: Path, command: list[str], nproc: int, nnodes: int, runs: int,
                   seeds: list[int], pins: dict, refereed: bool = True) -> dict:
    fp = hardware.fingerprint()
    return {
        "harness_version": __version__,
        "api_version": API_VERSION,
        "self_reported": False,
        "refereed": refereed,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "track": {"name": track.name, "config_sha256": track.config_sha256},
        "script": {"name": script_copy.name, "sha256": rundir.sha256_file(script_copy)},
        "pins": pins,
        "env": hardware.software(),
        "hardware": hardware.label(fp, nproc, nnodes),
        "hardware_fingerprint": fp,
        "command": command,
        "nproc_per_node": nproc,
        "nnodes": nnodes,
        "runs": runs,
        "seeds": seeds,
        "repetitions": [],
    }


def torchrun_command(script: Path, nproc: int, script_args: list[str], rdzv: dict[str, str | None]) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    passthrough = {k: v for k, v in rdzv.items() if v is not None}
    if not passthrough:
        cmd.append("--standalone")
    for flag, value in passthrough.items():
        cmd.append(f"--{flag}={value}")
    cmd += [f"--nproc_per_node={nproc}", "-m", "speedrun.rank.bootstrap", str(script), *script_args]
    return cmd


def check_syntax(script: Path) -> None:
    """A script that does not compile fails here, once, instead of in every repetition."""
    try:
        compile(script.read_bytes(), str(script), "exec")
    except SyntaxError as exc:
        raise SpeedrunError(f"{script}:{exc.lineno}: syntax error: {exc.msg}; nothing was launched") from None
    except ValueError as exc:
        raise SpeedrunError(f"{script}: cannot be compiled: {exc}; nothing was launched") from None


# --- what went wrong, from the log ------------------------------------------------------------------------------

_AGENT_FAILURE = re.compile(r"^E\d{4} .*torch/distributed/elastic/.*failed \(exitcode")
_ERROR_LINE = re.compile(r"^(\[rank\d+\]: )?([\w.]+(Error|Exception|Interrupt)\b.*)$")
DETERMINISTIC = ("SyntaxError", "IndentationError", "ImportError", "ModuleNotFoundError", "NameError")


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


# --- one repetition ----------------------------------------------------------------------------------------------


REPLICA_EVENTS, REPLICA_LOG = "replica.jsonl", "replica.log"  # the replica run's events and output
REPLICA_TIMEOUT_S = 600.0      # the least a replica run is given before it is stopped (without --timeout)


def _unchecked(k: int, why: str | None) -> dict:
    """A repetition the replica did not check, in the manifest's `replica.repetitions`."""
    return {"k": k, "checked": False, "why": why or "not checked", "positions": 0, "d_sum": 0.0, "d_sq": 0.0,
            "d_max": 0.0, "live_sum": 0.0, "replica_sum": 0.0}


class Repetition:
    """The channel server and the referee of one repetition, with the rank processes they watch.

    `data_files` (launcher runs): path -> "train" or "val"; watched from the moment every rank has mapped them;
    `harness`: the package directory every rank must import (None for the in-process referee)."""

    def __init__(self, track, k: int, seed: int, nproc: int, run_dir: Path, welcome: dict, sink=None,
                 echo=None, data_files: dict[Path, str] | None = None, harness: str | None = None,
                 events: Path | None = None):
        from speedrun.referee import channel
        from speedrun.referee import repetition
        from speedrun.referee import watch

        self.server = channel.Server(self._handle)  # first: a socket that cannot be opened leaves nothing behind
        self.t0 = time.monotonic()
        self.log = rundir.EventWriter(events or rundir.events_path(run_dir, k))
        self.echo, self.sink = echo, sink
        self.referee = repetition.Referee(track, k, seed, nproc, self.log, self.t0, welcome, on_event=self._on_event,
                                       harness=harness)
        self.watch = watch.DataWatch(data_files).start() if data_files else None
        if self.watch is not None:
            self.referee.on_all_preloaded = self.watch.arm
        self._outbox: queue.Queue = queue.Queue()
        self._deliverer = threading.Thread(target=self._deliver, name="speedrun-events", daemon=True)
        self._deliverer.start()
        self.stopped_early: str | None = None
        self.heartbeat = None  # the launcher's (speedrun.referee.heartbeat), judged at close
        # an open of a data file that the watch cannot attribute to a process (inotify): the run's doing, unless
        # its ranks are sandboxed (then a `speedrun verify` in another terminal hashing the data is as likely)
        self.blame_unattributed = True
        self._watch_report: tuple[list[str], list[str]] | None = None

    def _handle(self, cid: int, msg, t: float, error: str | None) -> None:
        for to, answer in self.referee.handle(cid, msg, t, error):
            self.server.reply(to, answer)

    def _on_event(self, event: dict) -> None:
        # printing and wandb happen on a thread of their own: the channel thread stamps arrival times, and
        # any time it spends elsewhere would delay the stamps of the messages waiting behind
        if self.echo is not None or self.sink is not None:
            self._outbox.put(event)

    def _deliver(self) -> None:
        while True:
            event = self._outbox.get()
            if event is None:
                return
            try:
                if self.echo is not None:
                    self.echo(event)
                if self.sink is not None:
                    self.sink.log(event)
            except Exception:  # a printing or wandb failure must not stop the run
                pass

    def stray_rank(self) -> str | None:
        """A rank whose process is gone while others still run, described; None if there is none."""
        with self.server.locked():
            ranks = list(self.referee.ranks.values())
            gone = [st for st in ranks if st.closed_in is not None or st.phase == "exited"]
            alive = [st for st in ranks if st not in gone and st.phase != "finished"]
            if gone and alive:
                st = gone[0]
                return f"rank {st.rank}'s process ended ({st.closed_in or st.phase}) while rank {alive[0].rank} was still running"
        return None

    def stop_watch(self) -> tuple[list[str], list[str]]:
        """Wait for the ranks' last messages, stop watching the data files and say what the watch saw:
        (problems, warnings). Called before the launcher re-reads the pinned files itself, which the watch
        must not mistake for the script's reads."""
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and self.server._conns:
            time.sleep(0.05)
        if self.watch is None or self._watch_report is not None:
            return self._watch_report or ([], [])
        self.watch.stop()
        problems, warnings = [], []
        if self.watch.armed and not self.watch.attributed and not self.blame_unattributed:
            problems = [p for p in self.watch.problems() if "written" in p]
            warnings = self.watch.unattributed()
        elif self.watch.armed:
            problems = self.watch.problems()
        elif not self.watch.available:
            warnings = ["the data files could not be watched here (no inotify): reads the script made itself "
                        "through calls without an audit event were not seen"]
        self._watch_report = (problems, warnings)
        return self._watch_report

    def close(self, exit_code: int | None, extra: list[str] = (), warnings: list[str] = (),
              stopped: str | None = None, planned: bool = False) -> dict:
        """End the repetition: the watch's findings join `extra`; `stopped` and `planned` as in
        `speedrun.referee.repetition.Referee.close`."""
        seen, unwatched = self.stop_watch()
        extra, warnings = list(extra) + seen, [*warnings, *unwatched]
        with self.server.locked():
            if self.heartbeat is not None:
                from speedrun.referee import heartbeat

                heartbeat.judge(self.referee, self.heartbeat)
            if self.log.tampered():
                extra.append(f"{self.log.path.name} was modified by someone other than the launcher while the "
                             f"repetition ran (the launcher rewrote it from its own record)")
            for w in warnings:
                self.referee._emit("warning", message=w)
            summary = self.referee.close(exit_code, extra, stopped=stopped, planned=planned)
        self.server.close()
        self._outbox.put(None)
        self._deliverer.join(timeout=30)
        return summary


def become_subreaper() -> bool:
    """Make orphaned descendants (a double-forked daemon, a `setsid` child) this process's children instead of
    init's, so that none outlives its repetition unseen (Linux prctl PR_SET_CHILD_SUBREAPER; no privileges)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int | None = None) -> set[int]:
    """Every process below `pid` (default: this one), from /proc."""
    pid = pid or os.getpid()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def kill_leftovers(before: set[int]) -> list[int]:
    """Kill the descendants that appeared since `before` (what a repetition left behind); returns the pids of
    those that were still running (an exited process waiting to be reaped, such as the sandbox's init handed to
    this subreaper as it ends, is reaped, not counted)."""
    new = sorted(descendants() - before)
    left = [pid for pid in new if not _zombie(pid)]
    for pid in new:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    for pid in new:
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass
    return left


@contextlib.contextmanager
def shielded():
    """While the launcher writes what a stop leaves (the interrupted repetition's seal and record, the manifest,
    the verdict), a further Ctrl-C or SIGTERM is let go: the stop already under way ends the program once the
    evidence is whole."""
    with signal_handlers((signal.SIGINT, *STOP_SIGNALS), lambda *_: None,
                         replaces=lambda h: h not in (signal.SIG_IGN, None)):
        yield


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except OSError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # and anything the ranks left behind in their session
    except OSError:
        pass


def run_processes(cmd: list[str], env: dict, log: Path, rep: Repetition, timeout: float | None,
                  status_line=None, stop_after_logs: int | None = None) -> tuple[int, float, list[str]]:
    """Run one torchrun launch under the referee; returns (exit code, process wallclock, stop reasons).
    `stop_after_logs`: stop the run once rank 0 has logged that many steps (a prefix replay)."""
    began = time.perf_counter()
    reasons: list[str] = []
    stray_since = None
    # O_APPEND: the ranks share this file, and each line one of them writes lands whole at the end
    with os.fdopen(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644), "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        if rep.watch is not None:
            rep.watch.root = proc.pid  # the run's process tree: only its opens of the data count (fanotify)
        try:
            while proc.poll() is None:
                time.sleep(0.2)
                if status_line is not None:
                    status_line(rep.referee.describe())
                if rep.watch is not None:
                    rep.watch.poll()
                elapsed = time.perf_counter() - began
                if stop_after_logs and rep.referee.logged >= stop_after_logs:
                    rep.stopped_early = f"prefix replay: stopped after {stop_after_logs} logged steps"
                    out.write(f"\n[speedrun] {rep.stopped_early}\n".encode())
                    _kill_group(proc)
                    break
                if timeout and elapsed > timeout:
                    reasons.append(f"stopped after the {timeout:.0f} s timeout")
                elif not rep.referee.ranks and elapsed > CONNECT_TIMEOUT_S:
                    reasons.append(f"no rank connected to the referee within {CONNECT_TIMEOUT_S:.0f} s")
                else:
                    stray = rep.stray_rank()
                    stray_since = (stray_since or time.perf_counter()) if stray else None
                    if stray and time.perf_counter() - stray_since > ORPHAN_GRACE_S:
                        reasons.append(f"{stray}; the others were stopped after {ORPHAN_GRACE_S:.0f} s")
                if reasons:
                    out.write(f"\n[speedrun] {reasons[-1]}\n".encode())
                    out.flush()
                    _kill_group(proc)
                    break
        except KeyboardInterrupt:
            with shielded():
                _kill_group(proc)
            raise
        wall = time.perf_counter() - began
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers of an ended run (daemons in its session)
        except OSError:
            pass
    return proc.wait(), wall, reasons


class Launch:
    """One run directory and the torchrun command that fills it, one repetition at a time."""

    def __init__(self, script: Path, track, nproc: int, runs: int, out: str | Path | None, seed: int,
                 script_args: list[str], rdzv: dict, data_dir: str | None = None, timeout: float | None = None,
                 wandb: dict | None = None, stop_after_logs: int | None = None, report: Reporter = SILENT,
                 sandbox: bool = True, replica: bool | None = None):
        from speedrun.data import check, streams
        from speedrun.evidence import pins
        from speedrun.referee import sandbox as sandboxes

        if not script.is_file():
            raise SpeedrunError(f"{script}: no such script")
        if runs < 1 or nproc < 1:
            raise SpeedrunError("--runs and --nproc must be at least 1")
        check_syntax(script)
        become_subreaper()
        self.track, self.runs, self.timeout, self.wandb, self.report = track, runs, timeout, wandb, report
        self.stop_after_logs = stop_after_logs
        self.nproc, self.nnodes = nproc, int(rdzv.get("nnodes") or 1) if str(rdzv.get("nnodes") or 1).isdigit() else 1
        self.data_dir = Path(data_dir).resolve() if data_dir else None
        self.train_files, self.val_files = streams.track_files(track, self.data_dir)
        check.require_track_data(track, self.data_dir)  # bad shards stop here, not in the submission
        self.run_dir = new_run_dir(track, script, str(out) if out else None)
        copy = rundir.script_copy_path(self.run_dir, script)
        shutil.copyfile(script, copy)
        self.cmd = torchrun_command(copy, nproc, script_args, rdzv)
        self.seeds = [seed + k for k in range(runs)]
        self.pins = pins.pin_run(track, self.train_files + self.val_files)
        self.manifest = build_manifest(track, copy, self.cmd, nproc, self.nnodes, runs, self.seeds, self.pins)
        if sandbox:
            self.sandbox, why = sandboxes.prepare(self.run_dir, copy, hide=[self.data_dir] if self.data_dir else [])
        else:
            self.sandbox, why = None, "--no-sandbox was given"
        self.manifest.update(self.sandbox.record() if self.sandbox else sandboxes.unsandboxed(why))
        self.welcome = {"track_toml": Path(track.path).read_text(), "track_path": str(track.path),
                        "train_files": [str(p) for p in self.train_files], "val_files": [str(p) for p in self.val_files],
                        "no_data_level": no_data_level(track, self.val_files), "run_dir": str(self.run_dir.resolve())}
        self.stopped_reason: str | None = None
        # the replica check (speedrun.referee.replica): sealed states go to a directory of the launcher's own,
        # outside the sandbox (its /tmp is a tmpfs of its own); what each repetition kept waits for the end
        replica = env.replica_default() if replica is None else replica
        self.replica_off = None if replica else "the replica check was off (--no-replica, or SPEEDRUN_REPLICA=0)"
        self.replica_dir = None if self.replica_off else tempfile.mkdtemp(prefix="speedrun-seal-")
        self.replica_kept: dict[int, tuple[dict, str | None]] = {}
        self.welcome["seal"] = self.replica_dir is not None
        rundir.write_json_atomic(self.run_dir / rundir.MANIFEST, self.manifest)
        from speedrun.referee.heartbeat import Heartbeat

        self.heartbeat = Heartbeat().start()
        from speedrun.judge import verify# noqa: F401  (imported before any submission runs: a .pyc it could
        #   plant later would not be loaded)

    def _rank_env(self, socket_path: str) -> dict:
        from speedrun.referee import channel

        env = {k: v for k, v in os.environ.items() if not k.startswith("SPEEDRUN_") or k == "SPEEDRUN_DEVICE"}
        env.update({channel.ENV: socket_path, "PYTHONUNBUFFERED": "1"})
        # the ranks must import this very harness (the one pinned), wherever they run from: first on their path,
        # and no current directory put before it (`python -m` would; PYTHONSAFEPATH stops that, Python >= 3.11)
        env["PYTHONPATH"] = os.pathsep.join([str(paths.SOURCE_ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env["PYTHONSAFEPATH"] = "1"
        return env

    def _command(self, rep_ref: Repetition):
        """(the shared-buffer place, the command) of one launch: in the sandbox, with a place of its own bound
        in, or bare (no place: the buffers go to /dev/shm)."""
        if self.sandbox is None:
            return None, self.cmd
        from speedrun.referee.shared import Place

        place = Place.make()
        rep_ref.referee.shared_place = place
        return place, self.sandbox.wrap(self.cmd, rep_ref.server.path, place.directory)

    def repetition(self, k: int, report: Reporter | None = None) -> dict:
        """Run repetition k (1-based); record its exit code, wallclock and status in the manifest. Its progress
        (a line per validation, problem and warning, a status line, the outcome) goes to `report` (default:
        the launch's)."""
        from speedrun.evidence import pins

        report = report or self.report
        label = f"{self.run_dir.name} {k}/{self.runs}"
        seed = self.seeds[k - 1]
        if self.stopped_reason:
            rep = {"k": k, "status": "stopped", "exit_code": None, "wall_s": None, "seed": seed,
                   "error": self.stopped_reason}
            report.line(f"  {label} not run: {self.stopped_reason}")
            return self._record(rep)
        sink = None
        if self.wandb:
            from speedrun.referee import wandb_log

            sink = wandb_log.WandbSink.open(self.wandb["project"], self.manifest, k, self.run_dir,
                                            name=self.wandb.get("name") or f"{self.run_dir.name}-{k}",
                                            entity=self.wandb.get("entity"), report=self.wandb.get("report") or SILENT)

        log = rundir.log_path(self.run_dir, k)

        def echo(event: dict) -> None:
            from speedrun.judge import verify

            kind = event.get("event")
            if kind == "val":
                report.line(f"  {label} step {event.get('step')}: val loss {event['loss']:.4f} at "
                            f"{event['timed_s']:.2f} s timed")
            elif kind in ("problem", "warning"):
                report.line(f"  {label} {kind}: {event['message']}")
                if event.get("where") or event.get("consequences"):  # a root cause: what it explains, the log
                    for line in verify.detail_lines(verify.problem_detail(event, log)):
                        report.line(f"      {line}")

        rep_ref = Repetition(self.track, k, seed, self.nproc, self.run_dir, self.welcome, sink=sink, echo=echo,
                             data_files={**{p: "train" for p in self.train_files}, **{p: "val" for p in self.val_files}},
                             harness=str(paths.PACKAGE_DIR))
        rep_ref.blame_unattributed = self.sandbox is None
        rep_ref.heartbeat = self.heartbeat
        rep_ref.referee.replica_dir = self.replica_dir
        place, cmd = self._command(rep_ref)
        before = descendants()
        began = time.perf_counter()
        try:
            with report.status(f"{label} starting") as status:
                code, wall, reasons = run_processes(cmd, self._rank_env(rep_ref.server.path), log, rep_ref,
                                                    self.timeout, status_line=lambda s: status.update(f"{label}  {s}"),
                                                    stop_after_logs=self.stop_after_logs)
        except BaseException as exc:  # Ctrl-C or a launcher fault: seal what the referee saw, record it, then stop
            interrupted = isinstance(exc, KeyboardInterrupt)
            why = (interrupted_text(exc) if interrupted else
                   f"the launcher failed before the repetition ended ({type(exc).__name__}: {exc})")
            try:
                with shielded():
                    kill_leftovers(before)
                    rep_ref.close(None, stopped=why)
                    if place is not None:
                        place.remove()
                    if sink is not None:
                        sink.finish("interrupted")
                    self._record({"k": k, "status": "interrupted" if interrupted else "failed", "exit_code": None,
                                  "wall_s": round(time.perf_counter() - began, 3), "seed": seed, "error": why})
            except Exception:
                pass
            raise
        left = kill_leftovers(before)
        if rep_ref.stopped_early or reasons:  # the launcher stopped the run itself (a planned stop, a timeout, a
            left = []                          # stray rank): what is left is that stop in progress, not the script's
        warnings = [f"the script left {len(left)} process(es) running after it ended (pids "
                    f"{', '.join(map(str, left[:5]))}); the launcher killed them"] if left else []
        rep_ref.stop_watch()  # before the launcher re-reads the pinned files itself
        summary = rep_ref.close(code, pins.changed(self.pins), warnings, stopped=reasons[0] if reasons else None,
                                planned=bool(rep_ref.stopped_early))
        if place is not None:
            place.remove()
        self.replica_kept[k] = (self._file_seals(rep_ref.referee.replica_pairs), rep_ref.referee.replica_why)
        rep = {"k": k, "status": summary["status"] if not reasons else "failed", "exit_code": code,
               "wall_s": round(wall, 3), "seed": seed}
        if rep_ref.stopped_early:
            rep.update(status="stopped", error=rep_ref.stopped_early)
            report.line(f"  {label} {rep_ref.stopped_early}")
            if sink is not None:
                sink.finish(rep["status"])
            return self._record(rep)
        if code != 0 or reasons or summary["status"] != "ok":
            tail, error = failure_summary(log)
            rep["tail"] = tail
            rep["error"] = summary["cause"] or error or (summary["problems"][0] if summary["problems"] else None)
            # a problem was shown as it happened (with what it explains): the outcome line does not repeat it
            said = rep["error"] in summary["problems"]
            report.line(f"  {label} {rep['status']} (exit code {code})"
                        + ("" if said else f": {rep['error'] or f'see {log}'}"))
            if k == 1 and self.runs > 1 and self._deterministic(rep_ref, error):
                self.stopped_reason = f"repetition 1 failed before training could start ({rep['error']})"
        else:
            loss = summary["final_loss"]
            loss = "-" if loss is None else f"{loss:.4f}"  # finished without a validation: no loss to show
            report.line(f"  {label} val loss {loss}  timed {summary['timed_s']:.2f} s  steps "
                        f"{summary['steps']}  (process {wall:.1f} s)")
        if sink is not None:
            sink.finish(rep["status"])
        return self._record(rep)

    def replica_check(self, report: Reporter | None = None) -> dict:
        """After the repetitions: start the script once more as a replica (`speedrun.referee.replica`), which
        checks every repetition's sealed state on rows it has never seen; the outcome goes to the manifest
        (`replica`) and `replica.log`. Returns that record."""
        report = report or self.report
        record: dict = {"status": "checked", "why": None, "seconds": None, "repetitions": []}
        plan: dict[int, dict] = {}
        for rep in self.manifest["repetitions"]:
            k = rep["k"]
            pairs, why = self.replica_kept.get(k, ({}, None))
            if self.replica_off:
                why = self.replica_off
            elif rep["status"] not in ("ok", "invalid"):  # a run that finished with problems is checked too
                why = f"repetition {k} did not finish ({rep['status']})"
            elif len(pairs) < self.nproc * self.nnodes:
                why = why or f"{len(pairs)} of {self.nproc * self.nnodes} ranks sealed a state and kept positions"
            else:
                plan[k] = pairs
            if k not in plan:
                record["repetitions"].append(_unchecked(k, why))
        if not plan:
            record.update(status="off" if self.replica_off else "none",
                          why=self.replica_off or "no repetition to check")
        else:
            checked, failure, seconds = self._replica_run(plan, report)
            record["seconds"] = seconds
            if failure:
                record.update(status="failed", why=failure)
            for k in sorted(plan):
                by_rank = checked.get(k, {})
                if len(by_rank) < len(plan[k]):
                    record["repetitions"].append(_unchecked(k, failure or "the replica did not answer every rank"))
                    continue
                sums = list(by_rank.values())
                entry = {"k": k, "checked": True, "why": None,
                         **{f: sum(e[f] for e in sums) for f in ("positions", "d_sum", "d_sq", "live_sum",
                                                                 "replica_sum")},
                         "d_max": max(e["d_max"] for e in sums), "bare": any(e["bare"] for e in sums)}
                record["repetitions"].append(entry)
        record["repetitions"].sort(key=lambda e: e["k"])
        self.manifest["replica"] = record
        rundir.write_json_atomic(self.run_dir / rundir.MANIFEST, self.manifest)
        self._drop_seals()
        return record

    def _replica_run(self, plan: dict, report: Reporter) -> tuple[dict, str | None, float]:
        """Launch the replica: (k -> rank -> sums, why it failed or None, its wallclock)."""
        welcome = {**self.welcome, "replica": sorted(plan), "seal": False}
        rep_ref = Repetition(self.track, 0, self.seeds[0], self.nproc, self.run_dir, welcome,
                             harness=str(paths.PACKAGE_DIR), events=self.run_dir / REPLICA_EVENTS)
        rep_ref.referee.replica_plan = plan
        place, cmd = self._command(rep_ref)
        before = descendants()
        label = f"{self.run_dir.name} replica"
        # a replica that hangs (it runs the script's own code) must not hold the run: it gets --timeout, else
        # twice the longest repetition and at least REPLICA_TIMEOUT_S
        walls = [r.get("wall_s") or 0.0 for r in self.manifest["repetitions"]]
        timeout = self.timeout or max(REPLICA_TIMEOUT_S, 2.0 * max(walls, default=0.0))
        try:
            with report.status(f"{label} starting") as status:
                code, wall, reasons = run_processes(cmd, self._rank_env(rep_ref.server.path),
                                                    self.run_dir / REPLICA_LOG, rep_ref, timeout,
                                                    status_line=lambda s: status.update(f"{label}  {s}"))
        finally:
            with shielded():
                kill_leftovers(before)
                summary = rep_ref.close(None)
                if place is not None:
                    place.remove()
        results = rep_ref.referee.replica_results
        failure = None
        if reasons or code != 0 or rep_ref.referee.replica_errors or len(results) < len(plan):
            _, error = failure_summary(self.run_dir / REPLICA_LOG)
            failure = (rep_ref.referee.replica_errors[:1] or reasons[:1] or [summary.get("cause") or error
                       or f"the replica exited with code {code}"])[0]
        checked = sum(len(v) for v in results.values())
        report.line(f"  {label}: " + (f"failed: {failure}" if failure else
                                      f"{checked} rank repetition(s) checked in {wall:.1f} s"))
        return results, failure, round(wall, 3)

    def _file_seals(self, kept: dict) -> dict:
        """Move what a repetition's ranks sealed from memory into the launcher's seal directory, one file per
        distinct state (ranks that trained in step seal the same bytes): rank -> (state, Pairs)."""
        import hashlib

        filed = {}
        for rank, (sealed, pairs) in kept.items():
            path = Path(self.replica_dir) / f"{hashlib.sha256(sealed['data']).hexdigest()}.state"
            if not path.exists():
                path.write_bytes(sealed["data"])
            filed[rank] = ({"path": str(path), "training": sealed["training"], "tensors": sealed["tensors"]}, pairs)
        kept.clear()
        return filed

    def _drop_seals(self) -> None:
        if self.replica_dir is not None:
            shutil.rmtree(self.replica_dir, ignore_errors=True)

    def close(self) -> list[str]:
        """The end of the run: every repetition's evidence is still what the launcher sealed, and every pinned
        file's bytes are read again (no stat-keyed cache: a file rewritten with its old size and mtime is
        still seen). What differs is kept in the manifest (`end_check`) for the verdict."""
        from speedrun.evidence import pins

        self._drop_seals()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        problems = []
        for rep in self.manifest["repetitions"]:
            digest, path = rep.get("events_sha256"), rundir.events_path(self.run_dir, rep["k"])
            if digest and (not path.exists() or rundir.sha256_file(path) != digest):
                problems.append(f"{path.name} changed after the launcher sealed it, before the run ended")
        problems += pins.changed(self.pins, pins.FreshHasher())
        self.manifest["end_check"] = {"problems": problems, "events_rehashed": True, "pins_rehashed": True}
        rundir.write_json_atomic(self.run_dir / rundir.MANIFEST, self.manifest)
        return problems

    def interrupted(self, k: int, exc: BaseException) -> Path:
        """Ctrl-C (or SIGTERM, `exc` says which) during repetition k or between k - 1 and k: record the repetition
        if it is not yet, say in the manifest that the run was interrupted, and end the run as `close` does.
        Returns the run directory."""
        rep = next((r for r in self.manifest["repetitions"] if r["k"] == k), None)
        if rep is None and rundir.events_path(self.run_dir, k).exists():  # interrupted while it was recorded
            rep = self._record({"k": k, "status": "interrupted", "exit_code": None, "wall_s": None,
                                "seed": self.seeds[k - 1], "error": interrupted_text(exc)})
        when = "before" if rep is None else "during" if rep["status"] == "interrupted" else "after"
        self.manifest["interrupted"] = f"{stop_signal(exc)} {when} repetition {k} of {self.runs}"
        self.close()
        return self.run_dir

    @staticmethod
    def _deterministic(rep: Repetition, error: str | None) -> bool:
        """Would the same failure happen again? An import/syntax/name error, or no rank reaching init()."""
        if error and error.split(":")[0].split(".")[-1] in DETERMINISTIC:
            return True
        ranks = rep.referee.ranks.values()
        return not ranks or all(st.seed is None for st in ranks)

    def _record(self, rep: dict) -> dict:
        events = rundir.events_path(self.run_dir, rep["k"])
        if events.exists():  # sealed: kept to re-check at the end of the run, and by `speedrun verify`
            rep["events_sha256"] = rundir.sha256_file(events)
        self.manifest["repetitions"].append(rep)
        rundir.write_json_atomic(self.run_dir / rundir.MANIFEST, self.manifest)
        return rep


def launch(script: Path, track, nproc: int, runs: int, out: str | None, seed: int, script_args: list[str],
           rdzv: dict, data_dir: str | None = None, timeout: float | None = None, wandb: dict | None = None,
           report: Reporter = SILENT, sandbox: bool = True, replica: bool | None = None) -> Path:
    """Run the script `runs` times, telling `report` how it goes; returns the run directory (verification is
    separate). Ctrl-C leaves the run directory complete as far as it got and raises `Interrupted`."""
    job = Launch(script, track, nproc, runs, out, seed, script_args, rdzv, data_dir, timeout, wandb, report=report,
                 sandbox=sandbox, replica=replica)
    report.line(f"speedrun run {script.name} on track {track.name}: {runs} x {nproc} proc -> {job.run_dir}")
    k = 0
    try:
        for k in range(1, runs + 1):
            job.repetition(k)
        job.replica_check()
    except KeyboardInterrupt as exc:
        with shielded():
            job.interrupted(max(k, 1), exc)
        report.line(f"  {job.run_dir.name} interrupted: {job.manifest['interrupted']}")
        raise Interrupted(job.run_dir, signal_name(exc)) from None
    for problem in job.close():
        report.line(f"  {job.run_dir.name} problem: {problem}")
    return job.run_dir


# --- plain torchrun: the referee inside rank 0 (unrefereed) -------------------------------------------------------


class Standalone:
    """The referee for a run started without the launcher, living in rank 0's process: a run directory as
    complete as the launcher's, marked `"refereed": false` (it can never qualify: the script shares the
    referee's interpreter). It closes itself when the process exits."""

    @classmethod
    def start(cls, track_name: str, seed: int, script: Path, data_dir: str | None, world_size: int) -> "Standalone":
        from speedrun.data import streams
        from speedrun.evidence import pins
        from speedrun.tracks import load_track

        self = cls()
        track = load_track(track_name)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.run_dir = runs_root() / track.name / f"{stamp}_{script.stem}_torchrun"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        copy = rundir.script_copy_path(self.run_dir, script)
        shutil.copyfile(script, copy)
        train, val = streams.track_files(track, Path(data_dir) if data_dir else None)
        local = env.local_world_size(world_size)
        self.manifest = build_manifest(track, copy, [sys.executable, *sys.argv], local, 1, 1, [seed],
                                       pins.pin_run(track, train + val), refereed=False)
        from speedrun.referee import sandbox

        self.manifest.update(sandbox.unsandboxed("launched by plain torchrun: the ranks run as they were started"))
        welcome = {"track_toml": Path(track.path).read_text(), "track_path": str(track.path),
                   "train_files": [str(p) for p in train], "val_files": [str(p) for p in val],
                   "no_data_level": no_data_level(track, val), "run_dir": str(self.run_dir.resolve())}
        self.rep = Repetition(track, 1, seed, world_size, self.run_dir, welcome)
        self.socket_path = self.rep.server.path
        import atexit

        atexit.register(self.close)  # runs after the session's own exit hook has closed rank 0's connection
        return self

    def close(self) -> None:
        summary = self.rep.close(0, [])
        rep = {"k": 1, "status": summary["status"] if summary["status"] != "failed" else "unknown",
               "exit_code": None, "wall_s": None, "seed": self.manifest["seeds"][0],
               "note": "launched by plain torchrun: unrefereed; no process wallclock or exit code"}
        self.manifest["repetitions"] = [rep]
        rundir.write_json_atomic(self.run_dir / rundir.MANIFEST, self.manifest)
