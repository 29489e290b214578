"""`speedrun import-log PATH...`: turn modded-nanogpt logs into self-reported run directories, and say what
they hold.

Parsing and checking the logs is `speedrun.legacy.modded`'s; this module groups the inputs as the flags say,
imports each group (one bad file is one error line, the others still import) and prints a table of the trials
and how the track's rule judges them.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from speedrun.errors import SpeedrunError


def register(subparsers) -> None:
    from speedrun.legacy.modded import DEFAULT_LOSS_FIELD

    p = subparsers.add_parser(
        "import-log", help="import modded-nanogpt logs as self-reported run evidence",
        description="Parse modded-nanogpt record logs (every era) into run directories marked self-reported. "
                    "A FILE becomes one run directory (one run-K.jsonl per trial in it); a record FOLDER, or "
                    "several files with --as-record, becomes ONE run directory whose repetitions are the trials "
                    "of all its logs, judged together by the track's rule.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="modded-nanogpt log file(s) or record folder(s)")
    p.add_argument("--as-record", action="store_true",
                   help="import the given files as one record (one run directory)")
    p.add_argument("--track", help="our track name (default: from the path, e.g. track_1_short, or the content)")
    p.add_argument("--out", help="parent directory for the run directories (default runs/imported)")
    p.add_argument("--name", help="the run directory's name (default: the file's stem or the folder's name)")
    p.add_argument("--step", type=int,
                   help="judge every trial at its validation of this step (the record's declared step)")
    p.add_argument("--loss-field", default=DEFAULT_LOSS_FIELD, metavar="FIELD",
                   help="validation field to judge (default val_loss; e.g. val_ema_loss)")
    p.add_argument("--force", action="store_true", help="replace an existing run directory of the same name")
    p.set_defaults(func=_cmd_import)


def _summary_table(imp):
    from rich.markup import escape
    from rich.table import Table

    from speedrun.legacy import modded

    many = len(imp.logs) > 1
    title = f"{imp.log.path.parent.name if many else imp.log.path.name} -> {imp.run_dir}"
    # one short phrase a line: a narrow table wraps its caption at its own width, and mid-phrase read badly
    what = f"record of {len(imp.logs)} logs" if many else f"{imp.log.era} log"
    caption = "\n".join([f"track {imp.track}, told by {imp.track_from}", f"self-reported {what}, not refereed",
                          f"hardware {imp.hardware or 'not stated'}"]
                         + ([f"loss field {imp.loss_field}"] if imp.loss_field != modded.DEFAULT_LOSS_FIELD else []))
    table = Table(title=escape(title), caption=escape(caption))
    table.add_column("run", justify="right")
    if many:
        table.add_column("log")
    table.add_column("trial", justify="right")
    table.add_column("steps", justify="right")
    table.add_column("val loss", justify="right")
    table.add_column("time (s)", justify="right")
    table.add_column("status")
    for j in imp.trials:
        steps = "-" if j.last_step is None else f"{j.last_step}" + (f"/{j.total}" if j.total is not None else "")
        loss = "-" if j.result is None or j.result.loss is None else f"{j.result.loss:.5f}".rstrip("0").rstrip(".")
        secs = "-" if j.result is None or j.result.seconds is None else f"{j.result.seconds:.3f}"
        status = j.status
        if j.result is not None and j.result.step != j.last_step:
            status += f" (judged at step {j.result.step})"
        elif j.status == "truncated":
            status += " (no final validation)"
        elif j.status == "missing-step":
            status += f" (no validation at step {imp.requested_step})"
        cells = [str(j.k)] + ([escape(j.source)] if many else []) + [str(j.trial), steps, loss, secs, status]
        table.add_row(*cells)
    return table


def _print_import(console, imp) -> None:
    from rich.markup import escape

    from speedrun.evidence.rundir import MANIFEST, read_json
    from speedrun.judge.verify import check_imported
    from speedrun.tracks import load_track

    console.print(_summary_table(imp))
    unknown = sum(len(t.unknown) for log in imp.logs for t in log.trials)
    if unknown:
        console.print(f"  skipped {unknown} unrecognised line(s) (warnings in the run-K.jsonl files)")
    check = check_imported(imp.run_dir, read_json(imp.run_dir / MANIFEST), load_track(imp.track))
    at = f"at step {check.judged_step}" if check.judged_step is not None else "at each run's final validation"
    console.print(escape(f"  track rule {at}: {check.target.reason}"), highlight=False)
    if check.earliest is not None and check.earliest.step is not None and check.earliest.step != check.judged_step:
        console.print(f"  the rule already holds at step {check.earliest.step} across all runs", highlight=False)
    for p in check.problems:
        console.print(escape(f"  problem: {p}"), highlight=False)
    for w in check.warnings:  # the group's warnings; each run's own are in its run-K.jsonl
        if not re.match(r"^repetition \d+: ", w):
            console.print(escape(f"  warning: {w}"), highlight=False)


def _cmd_import(args) -> int:
    from speedrun.cli import console as consoles
    from speedrun.legacy.modded import default_out_dir, import_logs, import_record_dir

    console = consoles.stdout()
    paths = [Path(p) for p in args.paths]
    dirs = [p for p in paths if p.is_dir()]
    if args.as_record:
        if dirs:
            raise SpeedrunError(f"{dirs[0]}: --as-record groups log files; a folder is already one record")
        jobs = [("group", paths)]
    else:
        if args.name and len(paths) > 1:
            raise SpeedrunError("--name names one run directory: use it with one folder or with --as-record")
        jobs = [("dir" if p.is_dir() else "file", [p]) for p in paths]
        targets = [Path(args.out or "runs/imported") / args.name if args.name else default_out_dir(p, args.out)
                   for _, (p,) in jobs]
        dupes = {t for t in targets if targets.count(t) > 1}
        if dupes:
            raise SpeedrunError(f"several inputs would be imported to {sorted(dupes)[0]}; import them separately "
                                f"with different --out directories")
    failed = 0
    for kind, group in jobs:
        try:
            if kind == "group":
                imp = import_logs(group, args.track, args.out, args.step, args.force, args.loss_field,
                                  name=args.name or group[0].resolve().parent.name)
            elif kind == "dir":
                imp = import_record_dir(group[0], args.track, args.out, args.step, args.force, args.loss_field,
                                        name=args.name)
            else:
                imp = import_logs(group, args.track, args.out, args.step, args.force, args.loss_field,
                                  name=args.name)
        except SpeedrunError as exc:
            print(f"speedrun: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        _print_import(console, imp)
    return 1 if failed else 0
