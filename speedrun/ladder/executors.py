"""Where a ladder's points run: here, as local processes, or on a Slurm cluster through submitit.

Why executors only run commands: every point is a plain `speedrun run ... --out <point dir>` (the launcher is
the referee either way), and completion is read from the point's directory, never from the executor. So a
job that dies, a Ctrl-C or a cancelled Slurm array loses at most the points that were running, and the next
`speedrun ladder` starts exactly those again.

- `LocalExecutor`: one point at a time, each on `nproc` ranks (the spec's). Points must not overlap on one
  machine: the referee watches the track's data files while a point runs, and another point's ranks opening
  them would be charged to this point's script (its repetition then counts as failed), besides the points
  slowing each other. `parallel` > 1 is for machines whose points read separate data copies. Ctrl-C stops
  the running point's process group and re-raises.
- `SubmititExecutor`: one submitit job per point (`cluster="slurm"` for Slurm; submitit's `"local"` and
  `"debug"` executors run the same path on this machine, which is how the tests check it). For the same
  reason as above, give each job a node of its own (`slurm_exclusive`)
  unless the nodes' data directories are separate (`--slurm-exclusive`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from speedrun.errors import SpeedrunError

Job = tuple[str, list[str], Path]   # (label, command, log file)


def run_command(cmd: list[str], log: str | None = None, env: dict | None = None) -> int:
    """Run one point's command to completion; its output goes to `log` (or is inherited). A submitit job body."""
    out = open(log, "ab") if log else None
    try:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None, env=env,
                                start_new_session=True)
        try:
            return proc.wait()
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGINT)
                proc.wait(30)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
            raise
    finally:
        if out:
            out.close()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


class LocalExecutor:
    """Points as child processes of this one, `parallel` at a time (default one: see the module's note)."""

    name = "local"

    def __init__(self, nproc: int, parallel: int | None = None):
        self.nproc = nproc
        self.parallel = max(1, parallel or 1)

    def oversubscribed(self) -> bool:
        """More ranks at once than this machine has cores."""
        return self.parallel * self.nproc > usable_cores()

    def run(self, jobs: Sequence[Job], on_done: Callable[[str, int], None] | None = None) -> list[int]:
        codes: list[int] = [0] * len(jobs)
        lock = threading.Lock()

        def one(i: int) -> None:
            label, cmd, log = jobs[i]
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            codes[i] = run_command(cmd, str(log))
            if on_done:
                with lock:
                    on_done(label, codes[i])

        if self.parallel == 1:
            for i in range(len(jobs)):
                one(i)
            return codes
        with ThreadPoolExecutor(self.parallel) as pool:
            for f in [pool.submit(one, i) for i in range(len(jobs))]:
                f.result()
        return codes


class SubmititExecutor:
    """One submitit job per point; `cluster` is "slurm", or submitit's "local"/"debug" to run it here."""

    name = "slurm"

    def __init__(self, folder: Path, nproc: int, cluster: str = "slurm", timeout_min: int = 60,
                 partition: str | None = None, gpus: bool = False, parallelism: int | None = None,
                 extra: dict | None = None):
        try:
            import submitit
        except ImportError:
            raise SpeedrunError("--executor slurm needs submitit: pip install 'speedrun[slurm]'") from None
        if cluster not in ("slurm", "local", "debug"):
            raise SpeedrunError(f"submitit cluster {cluster!r}: expected slurm, local or debug")
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        params: dict = {"timeout_min": timeout_min, "nodes": 1, "tasks_per_node": 1, "cpus_per_task": max(1, nproc),
                        "name": "speedrun-ladder"}
        if gpus:
            params["gpus_per_node"] = nproc
        if partition:
            params["slurm_partition"] = partition
        if parallelism:
            params["slurm_array_parallelism"] = parallelism
        params.update(extra or {})
        self.executor.update_parameters(**params)

    def run(self, jobs: Sequence[Job], on_done: Callable[[str, int], None] | None = None) -> list[int]:
        env = dict(os.environ)   # the job runs the same harness (PYTHONPATH) and sees the same folders
        submitted = []
        with self.executor.batch():
            for label, cmd, log in jobs:
                Path(log).parent.mkdir(parents=True, exist_ok=True)
                submitted.append(self.executor.submit(run_command, cmd, str(log), env))
        codes = []
        try:
            for (label, _, _), job in zip(jobs, submitted):
                try:
                    code = int(job.result())
                except Exception as exc:  # the job itself failed (preempted, killed): the point stays incomplete
                    code = -1
                    if on_done:
                        on_done(f"{label} (job failed: {type(exc).__name__})", code)
                    codes.append(code)
                    continue
                codes.append(code)
                if on_done:
                    on_done(label, code)
        except KeyboardInterrupt:
            for job in submitted:
                try:
                    job.cancel(check=False)
                except Exception:
                    pass
            raise
        return codes
