"""One exception type for every user-facing failure.

The CLI turns a `SpeedrunError` into a single line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback. Messages name the file and the field (or the event) at fault.
"""


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
