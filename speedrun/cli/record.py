"""`speedrun record add | add-unverified`: put a run (or a baseline) into the ledger.

Deciding whether a run becomes a record is `speedrun.ledger.compare.add_record`'s; this module parses the flags,
shows a comparison run now (its lines on stdout, its repetitions on stderr) and says where the entry went.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="add a verified run to the ledger")
    rsub = p.add_subparsers(dest="record_command", metavar="ACTION", required=True)
    a = rsub.add_parser("add", help="verify RUN_DIR, check it beats the current record, append it")
    a.add_argument("run_dir", type=Path)
    a.add_argument("--description", required=True)
    a.add_argument("--contributors", required=True, help="comma-separated")
    a.add_argument("--track", help="refuse unless the run is of this track")
    a.add_argument("--slug")
    a.add_argument("--compare", type=Path, help="a `speedrun compare` directory made on this hardware")
    a.add_argument("--compare-runs", type=int, default=3, help="runs per side when comparing now")
    a.add_argument("--yes", action="store_true",
                   help="run the side-by-side comparison with the current record without asking (it launches "
                        "2 x --compare-runs full training runs; without --yes it is asked for on a terminal and "
                        "refused otherwise)")
    a.add_argument("--systems-speedup", action="store_true",
                   help="a pure systems speedup: accepted on time alone where the track allows it")
    a.add_argument("--step", type=int, help="the declared judging step of every run (optimization track)")
    a.set_defaults(func=_cmd_add)
    u = rsub.add_parser("add-unverified", help="enter a baseline that has no verified run yet")
    u.add_argument("script", type=Path)
    u.add_argument("--track", required=True)
    u.add_argument("--description", required=True)
    u.add_argument("--contributors", required=True)
    u.add_argument("--note", default="no verified run exists yet")
    u.add_argument("--slug")
    u.set_defaults(func=_cmd_add_unverified)


def _contributors(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _confirm(args):
    """How `record add` agrees to launch a comparison: --yes, else a question on a terminal, else no."""
    import sys

    def ask(plan: str) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            print(f"speedrun: {plan}; pass --yes to run it, or --compare DIR with a comparison already made",
                  file=sys.stderr)
            return False
        return input(f"{plan}. Run it now? [y/N] ").strip().lower() in ("y", "yes")
    return ask


def _cmd_add(args) -> int:
    from speedrun.cli import console
    from speedrun.ledger import compare

    rec = compare.add_record(args.run_dir, args.description, _contributors(args.contributors),
                             track_name=args.track, slug=args.slug, compare_dir=args.compare,
                             compare_runs=args.compare_runs, systems_speedup=args.systems_speedup, step=args.step,
                             report=console.RichReporter(console.stdout()), progress=console.progress(),
                             confirm=_confirm(args))
    print(f"added record #{rec.number} to track {rec.track}: {rec.path}")
    return 0


def _cmd_add_unverified(args) -> int:
    from speedrun.ledger import store
    from speedrun.tracks import load_track

    rec = store.add_unverified(args.script, load_track(args.track), args.description,
                               _contributors(args.contributors), args.note, args.slug)
    print(f"entered #{rec.number} on track {rec.track} (not verified): {rec.path}")
    return 0
