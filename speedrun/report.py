"""How library code tells a person what it is doing, without printing: the `Reporter` interface.

Only the `speedrun` command (`speedrun.cli`) owns the terminal. Long-running library functions (the launcher's
repetitions, a comparison, a data fetch, a wandb notice) still have progress worth showing, so they take a
`report` argument and call it; the command passes one that draws on a rich console (`speedrun.cli.console`),
and everyone else (tests, scripts, the rank side) gets `SILENT`. This module is a leaf: it imports nothing of
the harness, so both sides may import it without an arrow pointing back up.
"""

from __future__ import annotations

from typing import ContextManager, Protocol


class Status(Protocol):
    """A transient status line (a spinner on a terminal) whose text can be replaced while it is shown."""

    def update(self, text: str) -> None: ...


class Reporter(Protocol):
    """Where progress goes. Text is plain (never markup); `style` is a hint a rich reporter may colour by
    ("red", "yellow", ...)."""

    def line(self, text: str, style: str | None = None) -> None:
        """One line of progress or result."""

    def status(self, text: str) -> ContextManager[Status]:
        """A status line shown while the `with` block runs; `update(text)` on what it yields replaces it."""


class _SilentStatus:
    def __enter__(self) -> "_SilentStatus":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def update(self, text: str) -> None:
        pass


class Silent:
    """The reporter that says nothing: the default of every library function that reports."""

    def line(self, text: str, style: str | None = None) -> None:
        pass

    def status(self, text: str) -> _SilentStatus:
        return _SilentStatus()


SILENT: Reporter = Silent()


class Collect:
    """A reporter that keeps the lines it is given (for callers that show them later, and for tests)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str | None]] = []

    def line(self, text: str, style: str | None = None) -> None:
        self.lines.append((text, style))

    def status(self, text: str) -> _SilentStatus:
        return _SilentStatus()
