"""`speedrun compare A B --track T`: time two scripts or records interleaved on this machine.

The comparison is `speedrun.ledger.compare.compare`'s; this module resolves A and B, passes the reporters
(what is compared and the result on stdout, each repetition on stderr) and turns the result into the exit
status: 0 when A is shown better.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from speedrun.cli.console import add_sandbox_flag

    c = sub.add_parser("compare", help="run two scripts or records interleaved on this machine",
                       usage="speedrun compare A B --track T [options] [-- SCRIPT_ARGS...]",
                       epilog="Everything after `--` goes to both scripts untouched, e.g. `-- --steps 200`.")
    c.add_argument("a", help="script, record directory or record number (the challenger)")
    c.add_argument("b", help="script, record directory or record number (the incumbent)")
    c.add_argument("--track", required=True)
    c.add_argument("--runs", type=int, default=3, help="repetitions of each side (default: 3)")
    c.add_argument("--nproc", type=int, help="processes per side (default: the incumbent record's, else the track's "
                                             "current record's, else the count in the track's hardware)")
    c.add_argument("--out", type=Path)
    c.add_argument("--timeout", type=float)
    add_sandbox_flag(c)
    c.set_defaults(func=_cmd_compare)


def _cmd_compare(args) -> int:
    from speedrun.cli import console
    from speedrun.evidence import rundir
    from speedrun.ledger import compare
    from speedrun.tracks import load_track

    track = load_track(args.track)
    a, b = compare.resolve_script(args.a, track), compare.resolve_script(args.b, track)
    report = console.RichReporter(console.stdout())
    nproc = args.nproc
    if not nproc:
        nproc, source = compare.default_nproc(track, b)
        report.line(f"{nproc} process(es) per side, from {source} (--nproc to choose)")
    out = compare.compare(a, b, track, args.runs, nproc, args.out, script_args=list(getattr(args, "passthrough", [])),
                          timeout=args.timeout, report=report, sandbox=args.sandbox, replica=args.replica,
                          progress=console.progress())
    result = rundir.read_json(out / compare.RESULT)
    return 0 if result["a_faster"] else 1
