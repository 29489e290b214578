"""`speedrun replay NNN --track T`: re-run a record under this harness and hardware, and say how it compares.

The replay is `speedrun.ledger.compare.replay` (or `prefix_replay` with `--steps`); this module shows the
run's progress on stderr and renders the returned report: the verdict, the times and losses against the
recorded ones, and any reason they are not comparable.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from speedrun.cli.console import add_sandbox_flag

    r = sub.add_parser("replay", help="re-run a record under this harness and hardware")
    r.add_argument("number", type=int)
    r.add_argument("--track", required=True)
    r.add_argument("--runs", type=int, help="repetitions (default: the track's minimum)")
    r.add_argument("--steps", type=int, help="only the first N logged steps of repetition 1, compared exactly with "
                                             "the recorded ones (a cheap check that the record still runs the same)")
    r.add_argument("--nproc", type=int, help="processes (default: as recorded)")
    r.add_argument("--out", type=Path)
    r.add_argument("--timeout", type=float)
    add_sandbox_flag(r)
    r.set_defaults(func=_cmd_replay)


def print_prefix_replay(report: dict) -> None:
    from speedrun.cli import console as consoles

    diff = not report["same_hardware"]
    consoles.stdout(highlight=False).print(
        f"record #{report['record']}: the first {len(report['replayed'])} of {report['steps']} logged steps "
        f"{'match the recorded run exactly' if report['identical'] else 'differ from the recorded run'}"
        + (f" ({report['flags'][0]})" if diff else ""), markup=False)


def print_replay(report: dict) -> None:
    from speedrun.cli import console as consoles
    from speedrun.cli.verify import print_verdict

    print_verdict(report["verdict"])
    console = consoles.stdout(highlight=False)
    unit, number = report["unit"], report["record"]
    if report["ratio"] is not None:
        console.print(f"record #{number}: recorded {report['recorded']:.3f} {unit}, replayed "
                      f"{report['replayed']:.3f} {unit} (ratio {report['ratio']:.3f}); val losses "
                      f"{'identical to' if report['losses_identical'] else 'differ from'} the recorded run's",
                      markup=False)
    elif not report["recorded_verified"]:
        console.print(f"record #{number} has no verified run to compare with ({report['note']})", markup=False)
    for f in report["flags"]:
        console.print(f"note: {f}", style="yellow", markup=False)


def _cmd_replay(args) -> int:
    from speedrun.cli import console
    from speedrun.cli import verify  # noqa: F401  (before the record runs, like the launcher's own imports)
    from speedrun.ledger import compare
    from speedrun.tracks import load_track

    track = load_track(args.track)
    if args.steps:
        report = compare.prefix_replay(track, args.number, args.steps, args.nproc, args.out, args.timeout,
                                       report=console.progress(), sandbox=args.sandbox)
        print_prefix_replay(report)
        return 0 if report["identical"] or not report["same_hardware"] else 1
    report = compare.replay(track, args.number, args.runs or track.rule.min_runs, args.nproc, args.out,
                            args.timeout, report=console.progress(), sandbox=args.sandbox, replica=args.replica)
    print_replay(report)
    return 0 if report["qualifies"] else 1
