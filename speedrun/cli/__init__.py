"""The `speedrun` command: one argparse front over one module per command (`speedrun.cli.<command>`), quick to answer.

`COMMANDS` maps each sub-command to the module that implements it and the one line `speedrun --help` shows.
Building the parser imports only the module of the command being run (its `register(subparsers)` adds its
sub-command, with `func(args) -> int`); every other command is a placeholder carrying the table's help
line. So `speedrun --help` loads no module of the harness at all, and `speedrun tracks` loads no torch, numpy,
scipy, matplotlib or wandb. A `SpeedrunError` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from speedrun.version import __version__
from speedrun import paths
from speedrun.errors import STOP_SIGNALS, SpeedrunError, Stopped, signal_handlers, signal_name


def _stop(signum, frame) -> None:
    raise Stopped(signal.Signals(signum).name)

# sub-command -> (module with its `register`, the help line `speedrun --help` shows), in the order it lists them;
# one module per command, each in this package, each registering exactly its own command
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("speedrun.cli.run", "launch a submission with torchrun under the referee, keep the evidence, verify"),
    "verify": ("speedrun.cli.verify", "re-check a run directory and write verdict.json"),
    "tracks": ("speedrun.cli.tracks", "list tracks, or show one in full"),
    "data": ("speedrun.cli.data", "fetch, prepare and verify token shards"),
    "record": ("speedrun.cli.record", "add a verified run to the ledger"),
    "leaderboard": ("speedrun.cli.leaderboard", "print the records; --write regenerates the tables"),
    "compare": ("speedrun.cli.compare", "run two scripts or records interleaved on this machine"),
    "replay": ("speedrun.cli.replay", "re-run a record under this harness and hardware"),
    "import-log": ("speedrun.cli.import_log", "import modded-nanogpt logs as self-reported run evidence"),
    "plot": ("speedrun.cli.plot", "plot val loss of run directories, or the record progression of a track"),
    "new": ("speedrun.cli.new", "write a commented starter submission NAME.py for a track"),
    "ladder": ("speedrun.cli.ladder", "tune methods per size under the referee; speed-up and crossover"),
}


def command_of(argv: list[str]) -> str | None:
    """The sub-command named in `argv`: the first word that is not an option (the top level takes no values)."""
    return next((word for word in argv if not word.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with `command`'s module registered for real and every other command as a placeholder."""
    parser = argparse.ArgumentParser(
        prog="speedrun", description="Referee and ledger for the NanoGPT speedrun. "
                                     "`speedrun COMMAND --help` shows a command's options.",
        epilog=paths.describe(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"speedrun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = COMMANDS[command][0] if command in COMMANDS else None
    for name, (module_name, help_line) in COMMANDS.items():
        if name in sub.choices:  # registered together with an earlier command of the same module
            continue
        if module_name != wanted:
            sub.add_parser(name, help=help_line, add_help=False)
            continue
        importlib.import_module(module_name).register(sub)
        missing = [n for n, (m, _) in COMMANDS.items() if m == module_name and n not in sub.choices]
        if missing:
            raise RuntimeError(f"{module_name}.register did not add {', '.join(missing)} (see cli.COMMANDS)")
    return parser


class _Notes(logging.Handler):
    """Prints a library log record as one `speedrun: note: ...` line on the stderr of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"speedrun: note: {record.getMessage()}", file=sys.stderr)


def show_notes() -> None:
    """Show what the library says through its loggers ("speedrun.*", INFO and up: a corpus regenerated, ...)
    on stderr; the library itself never prints."""
    log = logging.getLogger("speedrun")
    if not any(isinstance(h, _Notes) for h in log.handlers):
        log.addHandler(_Notes())
    log.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_notes()
    # everything after the first `--` belongs to the submission script, untouched by argparse
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    # the stop signals as Ctrl-C while the command runs (not one whoever started us chose to ignore: nohup)
    with signal_handlers(STOP_SIGNALS, _stop, replaces=lambda h: h == signal.SIG_DFL):
        try:
            return int(args.func(args) or 0)
        except SpeedrunError as exc:
            print(f"speedrun: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt as exc:
            name = signal_name(exc)
            print(f"speedrun: interrupted ({name})" if name != "SIGINT" else "speedrun: interrupted",
                  file=sys.stderr)
            return 128 + getattr(signal, name)


if __name__ == "__main__":
    sys.exit(main())
