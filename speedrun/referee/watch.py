"""The launcher's watch on the data files: are they opened or written while the submissions run, and by whom?

Every rank's bootstrap memory-maps all train and val shards (`speedrun.data.streams.preload`), tells the launcher,
and waits. When all local ranks have done so, the launcher `arm()`s this watch and lets them run their
scripts; from then on the referee reads only through those maps and never opens a data file again. So any
open of a data file after arming by a process of the run, and any write, is a submission reading or changing
data behind the referee's back -- including through calls that raise no Python audit event (`torch.from_file`,
`np.fromfile`, a subprocess). The kernel reports it, through ctypes:

- fanotify (needs CAP_SYS_ADMIN, e.g. a root launcher): each open names the process that made it, and
  `FAN_OPEN_PERM` holds that process until the watch has looked at it, so the watch blames only processes of
  the run's own tree (below `root`, the repetition's torchrun or sandbox). Another process reading the same
  files meanwhile (a `speedrun verify` in another terminal hashing the data dir, a backup) is not the run's
  doing: it is counted apart and never blamed. Without a `root` every open counts.
- inotify otherwise (no privileges): it says that a file was opened, not by whom (`attributed` is false); the
  launcher then blames the run only where nothing else could have been seen (see `speedrun.referee.launcher`).
  inotify merges identical consecutive events, so it answers "did it happen", not "how often".
Where neither is available the watch says so and reports nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
import threading
from pathlib import Path

IN_MODIFY, IN_OPEN = 0x00000002, 0x00000020
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then `len` bytes of name)

FAN_CLOEXEC, FAN_NONBLOCK, FAN_CLASS_CONTENT = 0x01, 0x02, 0x04
FAN_MARK_ADD = 0x01
FAN_MODIFY, FAN_OPEN_PERM = 0x02, 0x00010000
FAN_ALLOW = 0x01
AT_FDCWD = -100
_FAN_EVENT = struct.Struct("IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_FAN_RESPONSE = struct.Struct("iI")    # fd, response


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().decode(errors="replace").rsplit(")", 1)[1].split()[1])


def below(pid: int, root: int, hops: int = 256) -> bool:
    """Is process `pid` `root` or one of its descendants (by the parent chain in /proc)?"""
    try:
        while pid > 1 and hops:
            if pid == root:
                return True
            pid, hops = _ppid(pid), hops - 1
    except (OSError, IndexError, ValueError):
        return False
    return pid == root


class DataWatch:
    """Counts opens and writes of `paths` from `start()` to `stop()`. `root`: the pid whose process tree is the
    run's (set once it is started); with fanotify only opens by that tree count."""

    def __init__(self, paths: list[Path] | dict[Path, str]):
        kinds = paths if isinstance(paths, dict) else {p: "" for p in paths}
        self.kinds = {os.path.realpath(p): kind for p, kind in kinds.items()}
        self.paths = list(self.kinds)
        self.opens = {p: 0 for p in self.paths}
        self.writes = {p: 0 for p in self.paths}
        self.foreign = {p: 0 for p in self.paths}   # opens by processes outside the run (fanotify only)
        self.root: int | None = None
        self.available = False
        self.attributed = False  # fanotify: each open has its process
        self.armed = False
        self._lock = threading.Lock()  # the channel thread arms, the launcher's main thread polls
        self._fd = -1
        self._wd: dict[int, str] = {}
        self._inodes: dict[tuple[int, int], str] = {}
        self._reader: threading.Thread | None = None
        self._stop = threading.Event()
        libc_name = ctypes.util.find_library("c")
        try:
            self._libc = ctypes.CDLL(libc_name or "libc.so.6", use_errno=True)
            self._libc.inotify_init1  # noqa: B018  (AttributeError where there is no inotify)
        except (OSError, AttributeError):
            self._libc = None

    def start(self) -> "DataWatch":
        if self._libc is None:
            return self
        if self._start_fanotify():
            return self
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return self
        self._fd = fd
        for p in self.paths:
            wd = self._libc.inotify_add_watch(fd, os.fsencode(p), IN_OPEN | IN_MODIFY)
            if wd >= 0:
                self._wd[wd] = p
        self.available = len(self._wd) == len(self.paths)
        return self

    # --- fanotify ----------------------------------------------------------------------------------------------

    def _start_fanotify(self) -> bool:
        init = getattr(self._libc, "fanotify_init", None)
        mark = getattr(self._libc, "fanotify_mark", None)
        if init is None or mark is None or not self.paths:
            return False
        mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        fd = init(FAN_CLOEXEC | FAN_NONBLOCK | FAN_CLASS_CONTENT, os.O_RDONLY | os.O_CLOEXEC | os.O_LARGEFILE)
        if fd < 0:  # EPERM without CAP_SYS_ADMIN
            return False
        try:
            for p in self.paths:
                st = os.stat(p)
                self._inodes[(st.st_dev, st.st_ino)] = p
                if mark(fd, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_MODIFY, AT_FDCWD, os.fsencode(p)) != 0:
                    raise OSError(ctypes.get_errno(), "fanotify_mark")
        except OSError:
            os.close(fd)
            self._inodes.clear()
            return False
        self._fd = fd
        self.available = self.attributed = True
        self._reader = threading.Thread(target=self._read_fanotify, name="speedrun-data-watch", daemon=True)
        self._reader.start()
        return True

    def _read_fanotify(self) -> None:
        # answers every permission event at once (always: allow); a process waits only while it is looked at
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.1)
                if not ready:
                    continue
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                return
            offset = 0
            while offset + _FAN_EVENT.size <= len(chunk):
                length, _, _, _, mask, fd, pid = _FAN_EVENT.unpack_from(chunk, offset)
                offset += max(length, _FAN_EVENT.size)
                if fd < 0:
                    continue
                try:
                    self._count_fanotify(mask, fd, pid)
                finally:
                    if mask & FAN_OPEN_PERM:
                        try:
                            os.write(self._fd, _FAN_RESPONSE.pack(fd, FAN_ALLOW))
                        except OSError:
                            pass
                    os.close(fd)

    def _count_fanotify(self, mask: int, fd: int, pid: int) -> None:
        try:
            st = os.fstat(fd)
        except OSError:
            return
        path = self._inodes.get((st.st_dev, st.st_ino))
        if path is None:
            return
        ours = self.root is None or below(pid, self.root)
        with self._lock:
            if not self.armed:
                return
            if mask & FAN_MODIFY:
                self.writes[path] += 1
            if mask & FAN_OPEN_PERM:
                if ours:
                    self.opens[path] += 1
                else:
                    self.foreign[path] += 1

    # --- inotify -----------------------------------------------------------------------------------------------

    def poll(self) -> None:
        """Read and count what the kernel has queued (never blocks; fanotify is read on a thread of its own)."""
        if self.attributed:
            return
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        while self._fd >= 0 and not self.attributed:
            try:
                chunk = os.read(self._fd, 1 << 16)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            offset = 0
            while offset + _EVENT.size <= len(chunk):
                wd, mask, _, length = _EVENT.unpack_from(chunk, offset)
                offset += _EVENT.size + length
                path = self._wd.get(wd)
                if path is None:
                    continue
                if mask & IN_OPEN:
                    self.opens[path] += 1
                if mask & IN_MODIFY:
                    self.writes[path] += 1

    # --- both --------------------------------------------------------------------------------------------------

    def arm(self) -> None:
        """Forget what happened so far (the bootstraps' own opens): count from now on."""
        with self._lock:
            self._poll()
            self.opens = {p: 0 for p in self.paths}
            self.writes = {p: 0 for p in self.paths}
            self.foreign = {p: 0 for p in self.paths}
            self.armed = True

    def stop(self) -> None:
        if self._reader is not None:
            self._stop.set()
            self._reader.join(timeout=5)
            self._reader = None
        with self._lock:
            self._poll()
            if self._fd >= 0:
                os.close(self._fd)  # any permission event still pending is allowed by the kernel
                self._fd = -1

    def problems(self) -> list[str]:
        """Opens and writes of data files after `arm()`, one phrase per file."""
        out = []
        for p in self.paths:
            what = f"{self.kinds[p]} data file {os.path.basename(p)}".lstrip()
            if self.writes[p]:
                out.append(f"the {what} was written to while the scripts ran")
            elif self.opens[p]:
                out.append(f"the {what} was opened while the scripts ran (the referee had mapped it before they "
                           f"started): a script read the data itself")
        return out

    def unattributed(self) -> list[str]:
        """Opens after `arm()` that inotify saw without a process to name, one phrase per file (for a run whose
        ranks are sandboxed, where they are not blamed on the script)."""
        return [f"the {self.kinds[p]} data file {os.path.basename(p)} was opened while the scripts ran, by a process "
                f"this machine's watch cannot name (inotify; fanotify needs CAP_SYS_ADMIN)".replace("the  ", "the ")
                for p in self.paths if self.opens[p] and not self.writes[p]]
