"""One exception type for every user-facing failure, and the signals that stop a command as Ctrl-C does.

The CLI turns a `SpeedrunError` into a single line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback. Messages name the file and the field (or the event) at fault. SIGTERM (`kill`, Slurm at
a job's time limit) and SIGHUP (the terminal closing) are raised as `Stopped`, a KeyboardInterrupt, while a
command runs (`signal_handlers`, set by the CLI): what ran is kept, and the evidence says which signal.
"""

import contextlib
import signal
import threading
from typing import Callable, Iterator

# the signals taken as Ctrl-C (SIGINT) is
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class SpeedrunError(Exception):
    """A clear, one-line failure caused by the user's input (a file, a flag, a submission)."""


class Stopped(KeyboardInterrupt):
    """A signal asking the program to stop (SIGTERM from `kill` or from Slurm at a job's time limit, SIGHUP when
    the terminal closes), taken the way Ctrl-C is: what ran is kept and said to be interrupted, by which signal.
    A KeyboardInterrupt, so every loop that stops on Ctrl-C stops on these too."""

    def __init__(self, signal_name: str = "SIGINT", *args):
        super().__init__(signal_name, *args)
        self.signal_name = signal_name


def signal_name(exc: BaseException) -> str:
    """The signal behind a KeyboardInterrupt: SIGINT (Ctrl-C) unless a `Stopped` says otherwise."""
    return getattr(exc, "signal_name", "SIGINT")


def stop_signal(exc: BaseException) -> str:
    """How a stop is named in the evidence: "SIGINT (Ctrl-C)", or the signal's name."""
    name = signal_name(exc)
    return "SIGINT (Ctrl-C)" if name == "SIGINT" else name


@contextlib.contextmanager
def signal_handlers(signums, handler, replaces: Callable[[object], bool]) -> Iterator[None]:
    """`handler` for each of `signums` whose present handler `replaces` accepts, the present ones put back on
    exit. Only the main thread can set handlers: elsewhere this changes nothing."""
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for signum in signums:
            if replaces(signal.getsignal(signum)):
                saved[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, previous in saved.items():
            signal.signal(signum, previous)
