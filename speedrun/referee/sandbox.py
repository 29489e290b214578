"""The OS sandbox every repetition's ranks run in (bubblewrap), and the launcher's fallback when there is none.

Why: the referee's figures come from the launcher's process, but a script running with the launcher's
rights could still reach it from outside Python: signal it (a stopped launcher stamps a whole timed run at
one instant), rewrite the evidence of an earlier repetition in the run directory, keep weights in $TMPDIR or
$HOME for the next repetition, read the records or other data. The sandbox takes those away. The launcher
wraps the torchrun invocation of a repetition in ONE sandbox per node, so the node's ranks share a network
namespace whose only interface is loopback (enough for gloo/NCCL rendezvous on one node). Inside:

- the root file system read-only (the Python environment and the harness as installed), but every top-level
  folder that is not the system's (/home, /root, /work, /mnt, /srv, ...) covered by an empty tmpfs, with the
  environment and the harness bound back: other checkouts and other copies of the data stay out of sight;
- a private /proc in its own PID namespace (`--unshare-pid`): the launcher is neither visible nor signalable;
  `--die-with-parent` (the sandbox ends with the launcher) and `--new-session` (no terminal to inject into);
- /dev minimal, plus the GPU device nodes `/dev/nvidia*` where they exist;
- a fresh tmpfs /tmp, HOME and working directory per repetition (nothing survives into the next one);
- tmpfs over the run directory, the checkout's data/, records/ and runs/ and the configured data and runs
  directories: no evidence, no records, no data but
- exactly what the ranks need, bound back on top: the script copy (read-only, at its path in the run
  directory), the channel's socket (the socket file alone, not its directory) and the repetition's directory
  of shared buffers (`speedrun.referee.shared.Place`: the referee agents hand batches and take logits there).
  No data file: the agents serve every batch from the launcher's side.

The ranks run as uid 65534 (nobody) where the files they need are readable so (one probe per launch checks
it), else as the caller's uid inside the user namespace, still on a read-only root. Where bwrap is missing or
its probe fails, the run goes on unsandboxed and the manifest says `"sandbox": "none"` with the reason; such
a run never qualifies for a record (`speedrun.ledger.compare.add_record`).
"""

from __future__ import annotations

import glob
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

NOBODY = 65534
PROBE_TIMEOUT_S = 20.0
NONE = "none"
HOME = "/tmp/home"
SOCKET_PLACEHOLDER = "<the referee's socket>"
# the namespaces and process rules, always
ISOLATION = ["--unshare-all", "--die-with-parent", "--new-session"]


def _version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    words = out.split()
    return words[-1] if words else "?"


def _inside(path: Path, outer: Path) -> bool:
    try:
        path.relative_to(outer)
        return True
    except ValueError:
        return False


@dataclass
class Sandbox:
    """One launch's sandbox: the bwrap executable and the mounts that do not change between repetitions."""

    exe: str
    version: str
    hide: list[Path] = field(default_factory=list)     # tmpfs over each (parents before children)
    files: list[tuple[Path, Path]] = field(default_factory=list)   # read-only binds: (source, destination)
    environment: list[Path] = field(default_factory=list)  # the Python environment and harness under /tmp
    private: list[Path] = field(default_factory=list)  # tmpfs over each: the user folders and closed ones
    uid: int | None = NOBODY                           # None: the caller's uid inside the user namespace
    devices: list[str] = field(default_factory=list)   # /dev/nvidia* bound into /dev

    @property
    def label(self) -> str:
        return f"bwrap {self.version}"

    def _uid_args(self) -> list[str]:
        return ["--uid", str(self.uid), "--gid", str(self.uid)] if self.uid is not None else []

    def mounts(self, socket: str | os.PathLike | None = None, shared: str | os.PathLike | None = None) -> list[str]:
        """bwrap's mount arguments, in order: later mounts sit on top of earlier ones."""
        args = ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
        for dev in self.devices:
            args += ["--dev-bind", dev, dev]
        args += ["--tmpfs", "/tmp"]
        for closed in self.private:  # /home, /work, a 700 /root holding the interpreter...: the environment bound back
            args += ["--tmpfs", str(closed)]
        for hidden in self.hide:
            args += ["--tmpfs", str(hidden)]
        for needed in self.environment:  # a venv or a clone under /tmp or a private folder: read-only, back
            args += ["--ro-bind", str(needed), str(needed)]
        for source, dest in self.files:
            args += ["--ro-bind", str(source), str(dest)]
        if socket is not None:  # the file alone: the ranks connect to it, and can put nothing beside it
            args += ["--bind", str(socket), str(socket)]
        if shared is not None:  # the repetition's shared buffers (batches in, logits out), nothing else of /dev/shm
            args += ["--bind", str(shared), str(shared)]
        args += ["--dir", HOME, "--chdir", HOME, "--setenv", "HOME", HOME, "--setenv", "TMPDIR", "/tmp"]
        return args

    def wrap(self, command: list[str], socket: str | os.PathLike | None = None,
             shared: str | os.PathLike | None = None) -> list[str]:
        """`command` (the torchrun invocation of one repetition) run inside the sandbox, with the channel's
        `socket` and the referee agents' `shared` buffer directory bound in."""
        return [self.exe, *ISOLATION, *self._uid_args(), *self.mounts(socket, shared), "--", *command]

    def record(self) -> dict:
        """What the manifest keeps: the label, the uid inside, and the mounts (the socket, which is new for
        every repetition, as a placeholder)."""
        return {"sandbox": self.label, "sandbox_uid": self.uid,
                "sandbox_mounts": [*ISOLATION, *self._uid_args(), *self.mounts(SOCKET_PLACEHOLDER)]}


def unsandboxed(reason: str) -> dict:
    return {"sandbox": NONE, "sandbox_reason": reason}


def hidden_paths(run_dir: Path, extra: list[Path] = ()) -> list[Path]:
    """The directories the ranks must not see: the run directory, the checkout's data/, records/ and runs/,
    the configured data, records and runs directories, and the user's cache (~/.cache: speedrun's and Hugging
    Face's downloads; the ranks get a HOME of their own). Only those that exist (or lie under /tmp, which is a
    tmpfs anyway), never one holding the Python environment or the harness, parents first."""
    from speedrun import paths

    wanted = [run_dir, *extra]
    root = paths.checkout()
    if root is not None:
        wanted += [root / "data", root / "records", root / "runs"]
    if os.environ.get("HF_HOME"):
        wanted.append(Path(os.environ["HF_HOME"]))
    for where in (paths.data_dir, paths.records_dir, paths.runs_dir, paths.user_cache_dir, lambda: Path.home() / ".cache"):
        try:
            wanted.append(where())
        except Exception:  # an unusable setting hides nothing more
            continue
    needed = [Path(p).resolve() for p in (sys.prefix, sys.base_prefix, paths.PACKAGE_DIR, Path(sys.executable).parent)]
    out: list[Path] = []
    for p in wanted:
        p = Path(os.path.realpath(p))
        if p == Path("/") or any(_inside(n, p) for n in needed):
            continue
        if not (p.is_dir() or _inside(p, Path("/tmp"))):
            continue
        if p not in out:
            out.append(p)
    out.sort(key=lambda p: len(p.parts))
    return [p for i, p in enumerate(out) if not any(_inside(p, q) for q in out[:i])]  # a tmpfs covers its children


def _environment_candidates() -> list[Path]:
    from speedrun import paths

    found = [sys.prefix, sys.base_prefix, sys.exec_prefix, paths.PACKAGE_DIR, Path(sys.executable).parent,
             *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    return [Path(os.path.realpath(c)) for c in found]


def private_dirs() -> list[Path]:
    """The folders on the way to the Python environment or the harness that others may not enter (no o+x, as a
    700 /root holding a pyenv interpreter): uid 65534 could not start Python behind them. The sandbox covers
    each with an empty tmpfs (what else lies there stays hidden) and binds the environment back
    (`environment_paths`). The outermost closed folder of each path."""
    out: list[Path] = []
    for path in _environment_candidates():
        for depth in range(2, len(path.parts) + 1):
            folder = Path(*path.parts[:depth])
            try:
                closed = folder.is_dir() and not folder.stat().st_mode & stat.S_IXOTH
            except OSError:
                closed = False
            if closed:
                if folder not in out:
                    out.append(folder)
                break
    out.sort(key=lambda p: len(p.parts))
    return [p for i, p in enumerate(out) if not any(_inside(p, q) for q in out[:i])]


# the operating system's own top-level folders, left visible (read-only); every other one (/home, /root, /work,
# /mnt, /srv, /opt, /data, ...) is covered, since that is where other checkouts and other copies of the data live
SYSTEM_DIRS = frozenset({"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run",
                         "sbin", "sys", "tmp", "usr", "var", "nix", "gnu", "snap"})


def user_dirs(root: Path = Path("/")) -> list[Path]:
    """The top-level folders that are not the system's: a second clone with its own data/, a dataset copied to
    /mnt or /home, are files the ranks could read without the referee (the data watch follows only the run's
    own files). The sandbox covers each with an empty tmpfs and binds the environment back
    (`environment_paths`), as for a closed folder."""
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    return [e for e in entries if e.name not in SYSTEM_DIRS and not e.is_symlink() and e.is_dir()]


def covered_dirs() -> list[Path]:
    """What the sandbox covers with a tmpfs before binding the environment back: the user folders and the
    closed folders on the way to the environment, the outermost of each."""
    out = sorted({*user_dirs(), *private_dirs()}, key=lambda p: len(p.parts))
    return [p for i, p in enumerate(out) if not any(_inside(p, q) for q in out[:i])]


def environment_paths(private: list[Path] = ()) -> list[Path]:
    """What the ranks import from that the sandbox's fresh /tmp or a tmpfs over a `private` folder would
    cover: the Python environment (a venv made under /tmp, a pyenv interpreter under /root), the harness (a
    clone under /tmp) and PYTHONPATH's folders; the outermost of each, read-only."""
    covered = [Path("/tmp"), *private]
    out: list[Path] = []
    for p in _environment_candidates():
        if any(_inside(p, c) and p != c for c in covered) and p.exists() and p not in out:
            out.append(p)
    out.sort(key=lambda p: len(p.parts))
    return [p for i, p in enumerate(out) if not any(_inside(p, q) for q in out[:i])]


def gpu_devices() -> list[str]:
    return sorted(glob.glob("/dev/nvidia*"))


def _probe(box: Sandbox, uid: int | None, readable: list[Path]) -> str | None:
    """None when bwrap starts a sandbox like the run's here (`box`'s mounts, but for the hidden folders, as
    `uid`, with `readable` readable), else why not."""
    test = ["sh", "-c", 'for f; do test -r "$f" || { echo "cannot read $f" >&2; exit 1; }; done', "sh",
            *map(str, readable)]
    uid_args = ["--uid", str(uid), "--gid", str(uid)] if uid is not None else []
    probe = Sandbox(box.exe, box.version, files=box.files, environment=box.environment, private=box.private)
    cmd = [box.exe, *ISOLATION, *uid_args, *probe.mounts(), "--", *test]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"bwrap could not be run ({exc})"
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        return f"bwrap's probe failed: {why}"
    return None


def prepare(run_dir: Path, script_copy: Path, hide: list[Path] = (),
            exe: str | None = None) -> tuple[Sandbox | None, str | None]:
    """The sandbox for a launch, or (None, the reason there is none). One probe: as nobody with every file the
    ranks need readable, else as the caller's uid."""
    exe = exe or shutil.which("bwrap")
    if not exe:
        return None, "bwrap (bubblewrap) is not installed"
    private = covered_dirs()
    copy = Path(os.path.abspath(script_copy))  # bwrap places a bind by its absolute path (a run dir may be relative)
    box = Sandbox(exe, "?", files=[(Path(os.path.realpath(copy)), copy)],
                  environment=environment_paths(private), private=private)
    readable = [Path(sys.executable), Path(__file__), copy]
    if _probe(box, NOBODY, readable) is not None:
        box.uid = None
        why_root = _probe(box, None, [])
        if why_root is not None:
            return None, why_root
    box.version = _version(exe)
    box.hide = hidden_paths(run_dir, list(hide))  # not in the probe: its sandbox needs none of them
    box.devices = gpu_devices()
    return box, None
