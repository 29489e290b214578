"""The one place the `speedrun` command makes its consoles, and the pieces every command module shares.

Every command prints through a rich console made here (`stdout()` for results, `stderr()` for the referee's
progress), so widths, wrapping and highlighting are decided once. `RichReporter` is the rich side of
`speedrun.report.Reporter`: library functions report progress through it without importing rich or the cli.
`DefaultsFormatter` is the help formatter of the commands' parsers. Imported only by command modules (never
by `speedrun.cli` itself, so `speedrun --help` stays free of rich).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from typing import Iterator


def stdout(width: int | None = None, follow_columns: bool = False, **options):
    """A rich console on stdout. `width`: the columns to use when stdout is not a terminal (None: rich's own
    choice, 80); on a terminal its width is always the terminal's. `follow_columns`: piped, `$COLUMNS` wins
    over `width` (the leaderboard's one-line tables fit whatever they are given; tables of digests do not)."""
    import os

    from rich.console import Console

    if not sys.stdout.isatty():
        columns = os.environ.get("COLUMNS", "")
        if follow_columns and columns.isdigit() and int(columns) > 0:
            options["width"] = int(columns)
        elif width is not None:
            options["width"] = width
    return Console(**options)


def stderr():
    """The console of the referee's progress: stderr, lines never wrapped, nothing highlighted."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True, highlight=False)


def escape(text: str) -> str:
    """`text` with rich markup escaped, to print literally where markup is on."""
    from rich.markup import escape as rich_escape

    return rich_escape(text)


class RichReporter:
    """`speedrun.report.Reporter` on a rich console: lines are printed literally (no markup, no highlighting),
    the status is rich's spinner."""

    def __init__(self, console) -> None:
        self.console = console

    def line(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False, highlight=False, emoji=False)

    @contextmanager
    def status(self, text: str) -> Iterator["_RichStatus"]:
        status = self.console.status(escape(text), spinner="dots")
        with status:
            yield _RichStatus(status)


class _RichStatus:
    def __init__(self, status) -> None:
        self._status = status

    def update(self, text: str) -> None:
        self._status.update(escape(text))


def progress() -> RichReporter:
    """The reporter of the referee's per-repetition lines and spinner (on stderr)."""
    return RichReporter(stderr())


def notices() -> RichReporter:
    """The reporter of one-line notices on stdout (e.g. wandb's), never wrapped."""
    return RichReporter(stdout(soft_wrap=True, highlight=False))


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help when it has a real default (not None or False) and the help
    does not already say it: `formatter_class=DefaultsFormatter` on a command's parser."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False or default is argparse.SUPPRESS
                or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return text
        return f"{text} (default: %(default)s)"


def add_sandbox_flag(parser) -> None:
    """`--no-sandbox` and `--no-replica` for the commands that launch ranks (run, compare, replay)."""
    from speedrun import env

    parser.add_argument("--no-sandbox", dest="sandbox", action="store_false",
                        help="run the ranks without the bubblewrap sandbox (such a run can never be a record)")
    parser.add_argument("--no-replica", dest="replica", action="store_false", default=env.replica_default(),
                        help="skip the replica check after the repetitions (such a run can never be a record; "
                             "the default where SPEEDRUN_REPLICA=0)")
    parser.add_argument("--replica", dest="replica", action="store_true",
                        help="run the replica check even where SPEEDRUN_REPLICA=0")
