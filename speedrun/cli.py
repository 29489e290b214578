"""The `speedrun` command: one argparse front for every concept module.

Each module that offers commands has `register(subparsers)`, which adds its sub-commands and sets
`func(args) -> int` on each. A `SpeedrunError` becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from speedrun import __version__
from speedrun.errors import SpeedrunError

# modules that add sub-commands, in the order `speedrun --help` lists them
COMMAND_MODULES = (
    "speedrun.launcher",   # run
    "speedrun.verify",     # verify
    "speedrun.tracks_cli", # tracks
    "speedrun.data_cli",   # data fetch / prepare / verify
    "speedrun.ledger",     # record add, leaderboard
    "speedrun.compare",    # compare, replay
    "speedrun.legacy",     # import-log
    "speedrun.plots",      # plot
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="speedrun", description="Referee and ledger for the NanoGPT speedrun.")
    parser.add_argument("--version", action="version", version=f"speedrun {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after the first `--` belongs to the submission script, untouched by argparse
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    args.passthrough = passthrough
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpeedrunError as exc:
        print(f"speedrun: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("speedrun: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
