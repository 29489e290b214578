"""One exception type for every user-facing failure.

The CLI turns a `SpeedrunError` into a single line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback. Messages name the file and the field (or the event) at fault.
"""


class SpeedrunError(Exception):
    """A clear, one-line failure caused by the user's input (a file, a flag, a submission)."""
