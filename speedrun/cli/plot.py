"""`speedrun plot RUN_DIR...` and `speedrun plot progression --track T`: draw a PNG and say where it went.

The drawing is `speedrun.ledger.plots`'; this module checks the flags against each other, picks the default
file, prints the notes the plot raised (`plots.PlotNote` warnings) and the path written.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from speedrun.errors import SpeedrunError


def register(subparsers) -> None:
    from speedrun.cli.console import DefaultsFormatter
    from speedrun.ledger.plots import X_CHOICES

    p = subparsers.add_parser(
        "plot", help="plot val loss of run directories, or the record progression of a track",
        description="`plot RUN_DIR...`: val loss against timed seconds and/or steps, one line per repetition, "
                    "with the target and the track's current record. `plot progression --track T`: record "
                    "time against date (log scale), external history and ledger records marked apart.",
        formatter_class=DefaultsFormatter)
    p.add_argument("targets", nargs="+", metavar="RUN_DIR", help="run directories, or the word `progression`")
    p.add_argument("--out", help="PNG to write (default: RUN_DIR/val_loss.png for one run, "
                                 "FIRST_RUN_DIR/val_loss-compare.png for several, RUNS/progression-TRACK.png "
                                 "with RUNS = $SPEEDRUN_RUNS_DIR, else ./runs)")
    p.add_argument("--x", choices=X_CHOICES, default="both", help="x axis for run plots")
    p.add_argument("--track", help="track for `plot progression`")
    p.add_argument("--records", help="ledger records directory (default: $SPEEDRUN_RECORDS_DIR, else the "
                                     "checkout's records/, else ./records)")
    p.set_defaults(func=_cmd_plot)


def _cmd_plot(args) -> int:
    from speedrun.ledger import plots

    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", plots.PlotNote)
        try:
            out = _draw(args, plots)
        finally:  # the notes of a plot that failed still say what was missing
            for note in notes:
                if issubclass(note.category, plots.PlotNote):
                    print(f"speedrun: note: {note.message}")
                else:  # any other warning raised while drawing is shown as it would have been
                    warnings.showwarning(note.message, note.category, note.filename, note.lineno)
    print(f"wrote {out}")
    return 0


def _draw(args, plots) -> Path:
    """Draw what the flags ask for; returns the file written."""
    targets = args.targets
    if targets[0] == "progression":  # a run directory of that name can be given as ./progression
        if len(targets) > 1:
            raise SpeedrunError("plot progression takes no run directories (use ./progression for a run dir "
                                "named so)")
        if not args.track:
            raise SpeedrunError("plot progression needs --track (e.g. --track gpt2-small)")
        out = Path(args.out) if args.out else plots.progression_path(args.track)
        plots.plot_progression(args.track, out, records_dir=args.records)
    else:
        if args.track:
            raise SpeedrunError("--track is only for `plot progression`; run plots take the track from each "
                                "run's manifest")
        out = Path(args.out) if args.out else plots.run_plot_path(targets)
        plots.plot_runs(targets, out, x=args.x, records_dir=args.records)
    return out
