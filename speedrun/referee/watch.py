"""The launcher's watch on the data files: are they opened or written while the submissions run?

Every rank's bootstrap memory-maps all train and val shards (`speedrun.data.streams.preload`), tells the launcher,
and waits. When all local ranks have done so, the launcher `arm()`s this watch and lets them run their
scripts; from then on the referee reads only through those maps and never opens a data file again. So any
open of a data file after arming, and any write, is a submission reading or changing data behind the
referee's back -- including through calls that raise no Python audit event (`torch.from_file`,
`np.fromfile`, a subprocess). The kernel reports it: Linux inotify through ctypes, no privileges needed.
(inotify merges identical consecutive events, so the watch answers "did it happen", not "how often".)
Where inotify is missing the watch says so and reports nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import threading
from pathlib import Path

IN_MODIFY, IN_OPEN = 0x00000002, 0x00000020
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then `len` bytes of name)


class DataWatch:
    """Counts opens and writes of `paths` from `start()` to `stop()`."""

    def __init__(self, paths: list[Path] | dict[Path, str]):
        kinds = paths if isinstance(paths, dict) else {p: "" for p in paths}
        self.kinds = {os.path.realpath(p): kind for p, kind in kinds.items()}
        self.paths = list(self.kinds)
        self.opens = {p: 0 for p in self.paths}
        self.writes = {p: 0 for p in self.paths}
        self.available = False
        self.armed = False
        self._lock = threading.Lock()  # the channel thread arms, the launcher's main thread polls
        self._fd = -1
        self._wd: dict[int, str] = {}
        libc_name = ctypes.util.find_library("c")
        try:
            self._libc = ctypes.CDLL(libc_name or "libc.so.6", use_errno=True)
            self._libc.inotify_init1  # noqa: B018  (AttributeError where there is no inotify)
        except (OSError, AttributeError):
            self._libc = None

    def start(self) -> "DataWatch":
        if self._libc is None:
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

    def poll(self) -> None:
        """Read and count what the kernel has queued (never blocks)."""
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        while self._fd >= 0:
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

    def arm(self) -> None:
        """Forget what happened so far (the bootstraps' own opens): count from now on."""
        with self._lock:
            self._poll()
            self.opens = {p: 0 for p in self.paths}
            self.writes = {p: 0 for p in self.paths}
            self.armed = True

    def stop(self) -> None:
        with self._lock:
            self._poll()
            if self._fd >= 0:
                os.close(self._fd)
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
