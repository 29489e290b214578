"""The launcher's heartbeat: does the launcher notice being stopped?

Why: every time in the evidence is the launcher's monotonic clock read when a rank's message arrives. A
launcher that is stopped (SIGSTOP, a frozen cgroup, a debugger) while the ranks keep running reads nothing:
when it resumes, every message queued meanwhile is stamped at the same instant, so a `start` sent before the
stop and a `finish` sent at its end would bracket a timed run of almost no seconds. The sandbox's PID
namespace keeps the script from signalling the launcher, but the referee must not rest on that alone.

A thread of the launcher's own beats every `period` seconds on `time.monotonic()`; a gap between two beats
longer than `limit` means the whole process did not run for that long (threads are stopped together). A gap
from the repetition's beginning to the end of its timed run becomes a `launcher_stopped` event and a problem
of that repetition: not only one inside the span between the stamps of `start` and `finish`, since a `start`
sent while the launcher was stopped is stamped only after it resumes, after the gap. (A gap before the timed
run began cannot be told from one that swallowed it.)
The clock is injectable so the rule can be tested without stopping anything.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

PERIOD_S = 0.1
LIMIT_S = 2.0


class Heartbeat:
    """Beats on `clock` every `period` seconds (from `start()` to `stop()`), keeping the gaps over `limit`."""

    def __init__(self, period: float = PERIOD_S, limit: float = LIMIT_S, clock: Callable[[], float] = time.monotonic):
        self.period, self.limit, self.clock = period, limit, clock
        self.gaps: list[tuple[float, float]] = []   # (last beat before, first beat after) on `clock`
        self._last: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        now = self.clock()
        with self._lock:
            if self._last is not None and now - self._last > self.limit:
                self.gaps.append((self._last, now))
            self._last = now

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.beat()

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread = threading.Thread(target=self._run, name="speedrun-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.beat()  # a gap that is still open (stopped just now) is closed and counted

    def gaps_within(self, begin: float, end: float) -> list[tuple[float, float]]:
        """The gaps that overlap [begin, end] (after one more beat, so a gap that has just ended counts)."""
        self.beat()
        with self._lock:
            return [(a, b) for a, b in self.gaps if b > begin and a < end]


def judge(referee, heartbeat: Heartbeat, now: float | None = None) -> None:
    """Make every gap of `heartbeat` from the repetition's beginning (`referee.t0`) to the end of its timed
    run (the last rank's finish, or now if it has not finished) an event and a problem of `referee`; nothing
    when the timed run never started."""
    if referee.start_t is None:
        return
    finished = [st.finish_t for st in referee.ranks.values() if st.finish_t is not None]
    end = max(finished) if finished and len(finished) == len(referee.ranks) else (now or heartbeat.clock())
    for a, b in heartbeat.gaps_within(referee.t0, end):
        seconds = b - a
        referee._emit("launcher_stopped", t=referee._t(a), seconds=round(seconds, 3))
        referee.problem(f"the launcher was stopped for {seconds:.1f} s during the timed run (its heartbeat, every "
                        f"{heartbeat.period:g} s, saw nothing from {referee._t(a):.2f} s to {referee._t(b):.2f} s): "
                        f"the times it stamped are not the ranks' times")
