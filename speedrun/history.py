"""The external record history (modded-nanogpt's record table), read from `records/history/` as data.

The speedrun did not start with this harness: its first years are a table of self-reported times. Keeping
that table as a CSV (not code) lets the leaderboard and the progression plot show where the ledger's own,
refereed records stand against it, while every consumer can see these rows are external and self-reported.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from speedrun.errors import SpeedrunError
from speedrun.legacy import MODDED_TRACKS
from speedrun.tracks import REPO_ROOT

COLUMNS = ("track", "number", "record_time_seconds", "description", "date_iso", "contributors")


def default_history_path() -> Path:
    return REPO_ROOT / "records" / "history" / "modded-nanogpt.csv"


@dataclass(frozen=True)
class HistoryRow:
    """One external record. `date` is ISO `YYYY-MM-DD` or "" when the table has none."""

    track: str  # our track name
    number: int
    seconds: float
    description: str
    date: str
    contributors: tuple[str, ...]
    source_track: str  # modded-nanogpt's folder name
    self_reported: bool = True

    @property
    def day(self) -> dt.date | None:
        return dt.date.fromisoformat(self.date) if self.date else None


def _contributors(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if names in ((), ("-",)) else names


def _row(path: Path, lineno: int, raw: dict) -> HistoryRow:
    def fail(column: str, problem: str) -> SpeedrunError:
        return SpeedrunError(f"{path}:{lineno}: field '{column}': {problem}")

    source = raw["track"]
    if source not in MODDED_TRACKS:
        raise fail("track", f"unknown track {source!r} (known: {', '.join(MODDED_TRACKS)})")
    try:
        number = int(raw["number"])
    except ValueError:
        raise fail("number", f"expected an integer, got {raw['number']!r}") from None
    try:
        seconds = float(raw["record_time_seconds"])
    except ValueError:
        raise fail("record_time_seconds", f"expected seconds, got {raw['record_time_seconds']!r}") from None
    if not seconds > 0:
        raise fail("record_time_seconds", f"must be positive, got {seconds}")
    date = raw["date_iso"].strip()
    if date:
        try:
            dt.date.fromisoformat(date)
        except ValueError:
            raise fail("date_iso", f"expected YYYY-MM-DD or empty, got {date!r}") from None
    return HistoryRow(track=MODDED_TRACKS[source], number=number, seconds=seconds,
                      description=raw["description"].strip(), date=date,
                      contributors=_contributors(raw["contributors"]), source_track=source)


def load_history(path: str | os.PathLike | None = None) -> list[HistoryRow]:
    """All rows of the external record table, in file order; a malformed row is an error naming line and field."""
    path = Path(path) if path is not None else default_history_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot read the record history: {exc.strerror}") from None
    reader = csv.DictReader(text.splitlines())
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise SpeedrunError(f"{path}: missing column '{missing[0]}' (expected {', '.join(COLUMNS)})")
    rows = []
    for raw in reader:
        lineno = reader.line_num
        if None in raw.values() or None in raw:
            raise SpeedrunError(f"{path}:{lineno}: expected {len(COLUMNS)} columns")
        rows.append(_row(path, lineno, raw))
    return rows


def format_seconds(seconds: float) -> str:
    """`h:mm:ss.s` / `m:ss.s` for a minute or more (how record times are quoted), else seconds."""
    minutes, rest = divmod(round(seconds, 1), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}:{minutes:02d}:{rest:04.1f}"
    return f"{minutes}:{rest:04.1f}" if minutes else f"{rest:.1f} s"


def history_table(rows: list[HistoryRow], track: str | None = None):
    """A rich table of the external records (optionally one track), labelled external and self-reported."""
    from rich.table import Table

    chosen = [r for r in rows if track is None or r.track == track]
    title = "modded-nanogpt record history" + (f" ({track})" if track else "")
    table = Table(title=title, caption="external, self-reported times (not refereed by speedrun)")
    if track is None:
        table.add_column("track")
    table.add_column("#", justify="right")
    table.add_column("time", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("date")
    table.add_column("description")
    table.add_column("contributors")
    for r in chosen:
        cells = [str(r.number), format_seconds(r.seconds), f"{r.seconds:g}", r.date or "-", r.description,
                 ", ".join(r.contributors) or "-"]
        table.add_row(*([r.track] if track is None else []), *cells)
    return table
