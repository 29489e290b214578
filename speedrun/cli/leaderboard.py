"""`speedrun leaderboard`: the records on the terminal, one line each (or in full), and the external history.

The ledger (`speedrun.ledger.store`) reads the records and writes the generated markdown tables; this module
draws the same records as rich tables for a person (`--write` and `--check` only ask the ledger), and the
external, self-reported history (`speedrun.ledger.history`) as one table labelled so. It loads no torch,
numpy or plotting: `speedrun leaderboard` answers quickly.
"""

from __future__ import annotations

import argparse

LEADERBOARD_WIDTH = 100  # columns of `speedrun leaderboard` when the output is not a terminal


def register(sub: argparse._SubParsersAction) -> None:
    from speedrun.cli.console import DefaultsFormatter

    lb = sub.add_parser("leaderboard", help="print the records; --write regenerates the tables",
                        description="Print each track's records, one line each (at most 100 columns); --long adds "
                                    "contributors, p-values, notes and full descriptions.",
                        formatter_class=DefaultsFormatter)
    lb.add_argument("--track", help="only this track (default: every track)")
    lb.add_argument("--long", action="store_true",
                    help="every field in full: description, contributors, p-value, prior record, notes")
    lb.add_argument("--write", action="store_true", help="regenerate records/*/README.md and the README section")
    lb.add_argument("--check", action="store_true", help="exit 1 when a generated table is stale")
    lb.add_argument("--history", action="store_true", help="show the external (self-reported) history instead")
    lb.set_defaults(func=_cmd_leaderboard)


def _metric_text(track, r) -> str:
    if r.metric_mean is None:
        return "-"
    digits = 2 if track.timed else 0
    spread = "" if r.metric_sd is None else f" ± {r.metric_sd:.{digits}f}"
    return f"{r.metric_mean:.{digits}f}{spread}"


def leaderboard_table(track, records: list, width: int = LEADERBOARD_WIDTH):
    """One track's records as a rich Table of one line per record, `width` columns at most: text that does
    not fit is cut with an ellipsis (`leaderboard_details` has it in full)."""
    from rich.table import Table

    from speedrun.ledger.store import fmt

    current = next((r.number for r in reversed(records) if r.verified), None)
    lead = (f"current record #{current}" if current is not None
            else "no verified record yet" if records else "no entries yet")
    title = f"{track.name}: target val loss {track.target_val_loss:g}, {track.metric}, {track.hardware}; {lead}"
    table = Table(title=title, title_justify="left", title_style="bold", box=None, padding=(0, 1),
                  pad_edge=False, header_style="bold underline", min_width=min(len(title), width),
                  show_header=bool(records))
    rows = [[str(r.number), r.date, _metric_text(track, r), fmt(r.val_loss_mean, 4), str(r.n_runs or "-"),
             "verified" if r.verified else "unverified", r.hardware or "-", r.description] for r in records]
    headers = ["#", "date", "wallclock (s)" if track.timed else "steps", "val loss", "n", "status",
               "hardware", "description"]
    if width < LEADERBOARD_WIDTH:  # narrow: the machine each record ran on is in `--long`; the description stays
        headers.pop(6)
        for row in rows:
            row.pop(6)
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    # every column is sized to its content; hardware, then the description, give way to fit `width`
    budget = width - 2 * (len(headers) - 1)
    if "hardware" in headers:
        widths[6] = min(widths[6], 16)
    widths[-1] = max(12, min(widths[-1], budget - sum(widths[:-1])))
    for i, header in enumerate(headers):
        table.add_column(header, justify="right" if i in (0, 2, 3, 4) else "left", no_wrap=True,
                         overflow="ellipsis", max_width=widths[i], min_width=min(widths[i], len(header)))
    for row in rows:
        table.add_row(*row)
    return table


def leaderboard_details(track, records: list):
    """Every field of every record, wrapped (`speedrun leaderboard --long`)."""
    from rich.console import Group
    from rich.table import Table

    from speedrun.ledger.store import fmt, throughput_text

    parts = []
    for r in records:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column(overflow="fold")
        fields = [("description", r.description), ("contributors", ", ".join(r.contributors) or "-"),
                  ("status", "verified" if r.verified else "not verified"), ("note", r.note or "-"),
                  (track.metric, _metric_text(track, r)), ("val loss", fmt(r.val_loss_mean, 4)),
                  ("runs", str(r.n_runs or "-")), ("p-value", "-" if r.p_value is None else f"{r.p_value:.3g}"),
                  ("prior record", f"#{r.prior}" if r.prior else "-"), ("hardware", r.hardware or "-"),
                  ("throughput", throughput_text(r)),
                  ("harness", f"{r.harness_version} (API {r.api_version})"), ("script sha256", r.script_sha256),
                  ("entry", str(r.path) if r.path else "-")]
        for key, value in fields:
            grid.add_row(key, value)
        parts += [f"[bold]{track.name} #{r.number}[/bold] {r.date}", grid, ""]
    return Group(*parts)


def _evidence(r) -> str:
    if r.mean_loss is None:
        return "-"
    mark = "ok" if r.valid else "fails rule"
    if r.figures_from == "logs":  # read from the logs: shown to the digit the logs print
        return f"{r.mean_loss:.5f} (n={r.n}) @{r.judged_step}, {r.margin_score:.5f} {mark}"
    return f"{r.mean_loss:.4f} (n={r.n}) (README), {r.margin_score:.5f} {mark}"


def history_lines(rows: list, track: str | None, width: int):
    """The external records one line each (`leaderboard --history`): number, record, date and as much of
    the description as fits `width`, grouped by track; `--long` has every field (`history_table`)."""
    from rich.table import Table

    from speedrun.ledger.history import format_seconds

    tables = []
    for name in dict.fromkeys(r.track for r in rows if track is None or r.track == track):
        chosen = [r for r in rows if r.track == name]
        table = Table(title=f"modded-nanogpt record history ({name}): external, self-reported, not refereed",
                      title_justify="left", title_style="bold", box=None, padding=(0, 1), pad_edge=False,
                      header_style="bold underline")
        cells = [[str(r.number), format_seconds(r.seconds) if r.seconds is not None else
                  f"{r.steps} steps" + (" (WR)" if r.world_record else ""), r.date or "-", r.description]
                 for r in chosen]
        headers = ["#", "record", "date", "description"]
        widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(headers)]
        widths[3] = max(12, min(widths[3], width - 2 * (len(headers) - 1) - sum(widths[:3])))
        for i, header in enumerate(headers):
            table.add_column(header, justify="right" if i < 2 else "left", no_wrap=True, overflow="ellipsis",
                             max_width=widths[i])
        for c in cells:
            table.add_row(*c)
        tables.append(table)
    return tables


def history_table(rows: list, track: str | None = None):
    """A rich table of the external records (`speedrun.ledger.history.HistoryRow`s, optionally of one track),
    labelled external and self-reported, every field wrapped (`leaderboard --history --long`)."""
    from rich.markup import escape
    from rich.table import Table

    from speedrun.ledger.history import format_seconds

    chosen = [r for r in rows if track is None or r.track == track]
    title = "modded-nanogpt record history" + (f" ({track})" if track else "")
    steps = any(r.steps is not None for r in chosen)
    caption = "external, self-reported results (not refereed by speedrun)"
    if steps:
        caption += "; evidence: mean val loss (n runs) and the margin score (3.28 - mean) * sqrt(n) >= 0.004, " \
                   "from the logs at the judged step where read (they win where the README differs)"
    table = Table(title=title, caption=caption)
    if track is None:
        table.add_column("track")
    table.add_column("#", justify="right")
    table.add_column("record", justify="right")
    table.add_column("steps" if steps and all(r.steps is not None for r in chosen) else "value", justify="right")
    if steps:
        table.add_column("evidence")
    table.add_column("date")
    table.add_column("description")
    table.add_column("contributors")
    notes = any(r.note for r in chosen)
    if notes:
        table.add_column("note")
    for r in chosen:
        if r.seconds is not None:
            record, value = format_seconds(r.seconds), f"{r.seconds:g}"
        else:
            record, value = f"{r.steps} steps" + (" (WR)" if r.world_record else ""), str(r.steps)
        cells = [str(r.number), record, value] + ([_evidence(r)] if steps else []) + \
            [r.date or "-", escape(r.description), escape(", ".join(r.contributors) or "-")] + \
            ([escape(r.note or "")] if notes else [])
        table.add_row(*([r.track] if track is None else []), *cells)
    return table


def _cmd_leaderboard(args) -> int:
    from speedrun.cli import console as consoles
    from speedrun.ledger import store
    from speedrun.tracks import load_track, track_names

    console = consoles.stdout(width=LEADERBOARD_WIDTH, follow_columns=True)
    if args.history:
        from speedrun.ledger import history

        if args.long:
            console.print(history_table(history.load_history(), args.track))
            return 0
        for i, table in enumerate(history_lines(history.load_history(), args.track, console.width)):
            if i:
                console.print()
            console.print(table)
        console.print("\n[dim]`speedrun leaderboard --history --long`: contributors, evidence and notes, "
                      "wrapped[/dim]")
        return 0
    if args.write:
        for path in store.write_tables():
            print(f"wrote {path}")
        return 0
    if args.check:
        stale = store.stale_tables()
        for path in stale:
            print(f"stale: {path} (run `speedrun leaderboard --write`)")
        return 1 if stale else 0
    root = store.records_dir()
    if not root.is_dir():
        console.print(f"no records folder at {root.absolute()} (`speedrun --help` says where records live)",
                      soft_wrap=True, markup=False)
    shown = 0
    for i, name in enumerate([args.track] if args.track else track_names()):
        track = load_track(name)
        records = store.load_records(name)
        shown += len(records)
        if i:
            console.print()
        console.print(leaderboard_table(track, records, width=min(console.width, LEADERBOARD_WIDTH)))
        if args.long and records:
            console.print()
            console.print(leaderboard_details(track, records))
    if shown and not args.long:
        console.print("\n[dim]`speedrun leaderboard --long`: full descriptions, contributors, p-values, notes[/dim]")
    return 0
