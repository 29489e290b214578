"""The referee channel: newline-delimited JSON over a Unix socket, ranks -> launcher.

The launcher (`Server`) opens a socket in a private directory before it starts torchrun and hands its path to
the ranks in `$SPEEDRUN_REFEREE_SOCKET`. Each rank's bootstrap connects once (`Client`), says `hello`, gets a
`welcome`, and from then on only sends. The server stamps every line with its own monotonic clock the moment
it is read, on a thread of its own, so nothing a rank does to its own clocks changes a recorded time.

Bad input never hangs or crashes the server: a line that is not JSON, is too long, or does not match
`speedrun.evidence.schema.MESSAGES` is reported to the handler as a garbled message; a connection that closes is
reported once.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from speedrun import env
from speedrun.errors import SpeedrunError

ENV = env.REFEREE_SOCKET  # the variable the launcher sets for its ranks
MAX_LINE = 1 << 20


def encode(obj: dict) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), allow_nan=True) + "\n").encode()


class Server:
    """Accepts rank connections and calls `handler(conn_id, message_or_None, t, error)` for each line.

    `message` is the decoded dict (None with `error` set for a garbled line, None with error "closed" when the
    connection ends). `t` is `time.monotonic()` at the moment the line was read. `reply(conn_id, obj)` answers.
    """

    def __init__(self, handler: Callable[[int, dict | None, float, str | None], None]):
        self.handler = handler
        self._dir = tempfile.mkdtemp(prefix="speedrun-referee-")
        os.chmod(self._dir, 0o700)
        self.path = str(Path(self._dir) / "referee.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(self.path)
        except OSError as exc:
            self._listener.close()
            os.rmdir(self._dir)
            raise SpeedrunError(f"cannot open the referee's socket {self.path} ({exc.strerror or exc}); a Unix "
                                f"socket path must stay under 108 bytes: set TMPDIR to a shorter directory") from None
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._conns: dict[int, socket.socket] = {}
        self._buffers: dict[int, bytes] = {}
        self._next_id = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="speedrun-referee", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                ready = self._selector.select(timeout=0.1)
            except (OSError, ValueError):  # closed under us by close() after a slow handler
                return
            for key, _ in ready:
                if self._stop.is_set():
                    return
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)

    def _accept(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        conn.setblocking(False)
        cid = self._next_id
        self._next_id += 1
        self._conns[cid] = conn
        self._buffers[cid] = b""
        self._selector.register(conn, selectors.EVENT_READ, cid)

    def _read(self, cid: int) -> None:
        conn = self._conns.get(cid)
        if conn is None:
            return
        try:
            chunk = conn.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        t = time.monotonic()
        if not chunk:
            self._close(cid)
            self._deliver(cid, None, t, "closed")
            return
        buf = self._buffers[cid] + chunk
        *lines, rest = buf.split(b"\n")
        for line in lines:
            try:
                msg = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                self._deliver(cid, None, t, f"not JSON: {line[:80]!r}")
                continue
            self._deliver(cid, msg, t, None)
        if len(rest) > MAX_LINE:
            self._deliver(cid, None, t, f"a message longer than {MAX_LINE} bytes")
            rest = b""
        self._buffers[cid] = rest

    def _deliver(self, cid: int, msg, t: float, error: str | None) -> None:
        with self._lock:
            try:
                self.handler(cid, msg, t, error)
            except Exception as exc:  # a bug in the handler must not kill the channel (and hang the ranks)
                try:
                    self.handler(cid, None, t, f"referee error while handling a message: {exc!r}")
                except Exception:
                    pass

    def _close(self, cid: int) -> None:
        conn = self._conns.pop(cid, None)
        self._buffers.pop(cid, None)
        if conn is not None:
            try:
                self._selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            conn.close()

    def reply(self, cid: int, obj: dict) -> None:
        conn = self._conns.get(cid)
        if conn is None:
            return
        data = encode(obj)
        conn.setblocking(True)
        try:
            conn.settimeout(5.0)
            conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.setblocking(False)

    def locked(self):
        """Hold while reading the handler's state from another thread."""
        return self._lock

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        with self._lock:  # a handler still running (the join timed out) finishes before its sockets go
            for cid in list(self._conns):
                self._close(cid)
            self._selector.close()
            self._listener.close()
        try:
            os.unlink(self.path)
            os.rmdir(self._dir)
        except OSError:
            pass


class Client:
    """A rank's end of the channel: `request()` once (hello -> welcome), then `send()`."""

    def __init__(self, path: str, timeout: float = 60.0):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as exc:
            raise SpeedrunError(f"cannot reach the referee at {path}: {exc.strerror or exc}") from None
        self._sendall = self._sock.sendall  # bound now: later monkeypatching of socket changes nothing here
        self._encode = encode
        self.closed = False

    def send(self, kind: str, **fields) -> None:
        if self.closed:
            raise SpeedrunError("the referee channel is closed")
        try:
            self._sendall(self._encode({"m": kind, **fields}))
        except OSError as exc:
            self.closed = True
            raise SpeedrunError(f"lost the referee (the launcher went away?): {exc}") from None

    def request(self, kind: str, timeout: float = 600.0, **fields) -> dict:
        """Send, then wait for the referee's one-line answer (up to `timeout` seconds)."""
        self.send(kind, **fields)
        buf = b""
        old = self._sock.gettimeout()
        self._sock.settimeout(timeout)
        while not buf.endswith(b"\n"):
            try:
                chunk = self._sock.recv(1 << 16)
            except OSError as exc:
                self._sock.settimeout(old)
                raise SpeedrunError(f"no answer from the referee: {exc}") from None
            if not chunk:
                raise SpeedrunError("the referee closed the channel before answering")
            buf += chunk
        self._sock.settimeout(old)
        try:
            return json.loads(buf)
        except ValueError:
            raise SpeedrunError("the referee's answer is not JSON") from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._sock.close()
            except OSError:
                pass
