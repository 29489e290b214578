"""The external record history (modded-nanogpt's record tables), read from `records/history/` as data.

The speedrun did not start with this harness: its first years are tables of self-reported results. Keeping
them as CSV (not code) lets the leaderboard and the progression plot show where the ledger's own, refereed
records stand against them, while every consumer can see these rows are external and self-reported.

Two files, two shapes:
- `modded-nanogpt.csv`: the wallclock tracks (track_1_short, track_2_medium): a record time in seconds.
- `modded-nanogpt-optimization.csv`: track_3_optimization: a step count with its evidence (mean val loss over
  n runs, whether it meets the margin rule). Where the logs were read, `mean_loss`/`n` are the logs' figures at
  `judged_step` (`figures_from = logs`) and the README's own figures sit beside them; a note says where they
  differ. Otherwise `figures_from = readme`.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
from dataclasses import dataclass
from pathlib import Path

from speedrun.errors import SpeedrunError
from speedrun.legacy.modded import MODDED_TRACKS

COLUMNS = ("track", "number", "record_time_seconds", "description", "date_iso", "contributors")
STEP_COLUMNS = ("track", "number", "steps", "mean_loss", "n", "figures_from", "judged_step", "readme_mean_loss",
                "readme_n", "valid", "world_record", "description", "date_iso", "contributors", "note")
TRACK3_TARGET = 3.28


def default_history_path() -> Path:
    from speedrun import paths

    return paths.history_dir() / "modded-nanogpt.csv"


def default_history_paths() -> list[Path]:
    """Every shipped history file: the wallclock tracks' table, then the optimization track's."""
    folder = default_history_path().parent
    return [folder / "modded-nanogpt.csv", folder / "modded-nanogpt-optimization.csv"]


@dataclass(frozen=True)
class HistoryRow:
    """One external record. `date` is ISO `YYYY-MM-DD` or "" when the table has none.

    Wallclock rows have `seconds`; optimization rows have `steps` and their evidence (`mean_loss` over `n`
    runs, `valid` as published). `value` is whichever the track measures.
    """

    track: str  # our track name
    number: int
    seconds: float | None
    description: str
    date: str
    contributors: tuple[str, ...]
    source_track: str  # modded-nanogpt's folder name
    self_reported: bool = True
    steps: int | None = None
    mean_loss: float | None = None
    n: int | None = None
    figures_from: str = ""  # "logs" or "readme" (optimization rows)
    judged_step: int | None = None
    readme_mean_loss: float | None = None
    readme_n: int | None = None
    valid: bool | None = None  # meets the margin rule, as published
    world_record: bool = False
    note: str = ""

    @property
    def day(self) -> dt.date | None:
        return dt.date.fromisoformat(self.date) if self.date else None

    @property
    def value(self) -> float:
        """The record's metric value: seconds on the wallclock tracks, steps on the optimization track."""
        return float(self.seconds if self.seconds is not None else self.steps)

    @property
    def unit(self) -> str:
        return "s" if self.seconds is not None else "steps"

    @property
    def margin_score(self) -> float | None:
        """`(3.28 - mean_loss) * sqrt(n)`, the optimization track's validity score (None without evidence)."""
        if self.mean_loss is None or not self.n:
            return None
        return (TRACK3_TARGET - self.mean_loss) * math.sqrt(self.n)


def _contributors(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if names in ((), ("-",)) else names


class _Cells:
    """Typed access to one CSV row; every error names the file, line and column."""

    def __init__(self, path: Path, lineno: int, raw: dict):
        self.path, self.lineno, self.raw = path, lineno, raw

    def fail(self, column: str, problem: str) -> SpeedrunError:
        return SpeedrunError(f"{self.path}:{self.lineno}: field '{column}': {problem}")

    def text(self, column: str) -> str:
        return self.raw[column].strip()

    def integer(self, column: str, optional: bool = False) -> int | None:
        text = self.text(column)
        if optional and not text:
            return None
        try:
            value = int(text)
        except ValueError:
            raise self.fail(column, f"expected an integer, got {self.raw[column]!r}") from None
        if value <= 0 and column != "number":
            raise self.fail(column, f"must be positive, got {value}")
        return value

    def number(self, column: str, what: str) -> float:
        try:
            value = float(self.text(column))
        except ValueError:
            raise self.fail(column, f"expected {what}, got {self.raw[column]!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise self.fail(column, f"must be positive, got {value}")
        return value

    def flag(self, column: str) -> bool:
        text = self.text(column).lower()
        if text not in ("true", "false"):
            raise self.fail(column, f"expected true or false, got {self.raw[column]!r}")
        return text == "true"

    def date(self) -> str:
        date = self.text("date_iso")
        if date:
            try:
                dt.date.fromisoformat(date)
            except ValueError:
                raise self.fail("date_iso", f"expected YYYY-MM-DD or empty, got {date!r}") from None
        return date

    def source_track(self) -> str:
        source = self.raw["track"]
        if source not in MODDED_TRACKS:
            raise self.fail("track", f"unknown track {source!r} (known: {', '.join(MODDED_TRACKS)})")
        return source


def _time_row(cells: _Cells) -> HistoryRow:
    source = cells.source_track()
    number = cells.integer("number")
    seconds = cells.number("record_time_seconds", "seconds")
    return HistoryRow(track=MODDED_TRACKS[source], number=number, seconds=seconds,
                      description=cells.text("description"), date=cells.date(),
                      contributors=_contributors(cells.raw["contributors"]), source_track=source)


def _step_row(cells: _Cells) -> HistoryRow:
    source = cells.source_track()
    if MODDED_TRACKS[source] != "optimization":
        raise cells.fail("track", f"{source} is a wallclock track; its rows belong in the time table")
    number = cells.integer("number")
    steps = cells.integer("steps")
    mean = cells.number("mean_loss", "a mean val loss")
    n = cells.integer("n")
    figures_from = cells.text("figures_from")
    if figures_from not in ("logs", "readme"):
        raise cells.fail("figures_from", f"expected logs or readme, got {figures_from!r}")
    judged = cells.integer("judged_step", optional=True)
    if figures_from == "logs" and judged is None:
        raise cells.fail("judged_step", "figures from the logs need the step they were read at")
    return HistoryRow(track="optimization", number=number, seconds=None, description=cells.text("description"),
                      date=cells.date(), contributors=_contributors(cells.raw["contributors"]),
                      source_track=source, steps=steps, mean_loss=mean, n=n, figures_from=figures_from,
                      judged_step=judged, readme_mean_loss=cells.number("readme_mean_loss", "a mean val loss"),
                      readme_n=cells.integer("readme_n"), valid=cells.flag("valid"),
                      world_record=cells.flag("world_record"), note=cells.text("note"))


def _load_file(path: Path) -> list[HistoryRow]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot read the record history: {exc.strerror}") from None
    reader = csv.DictReader(text.splitlines())
    fields = reader.fieldnames or []
    expected, make = (STEP_COLUMNS, _step_row) if "steps" in fields else (COLUMNS, _time_row)
    missing = [c for c in expected if c not in fields]
    if missing:
        raise SpeedrunError(f"{path}: missing column '{missing[0]}' (expected {', '.join(expected)})")
    rows = []
    for raw in reader:
        lineno = reader.line_num
        if None in raw.values() or None in raw:
            raise SpeedrunError(f"{path}:{lineno}: expected {len(fields)} columns")
        rows.append(make(_Cells(path, lineno, raw)))
    return rows


def load_history(path: str | os.PathLike | None = None) -> list[HistoryRow]:
    """All rows of the external record tables (default: every shipped file), in file order; a malformed row
    is an error naming file, line and field."""
    paths = [Path(path)] if path is not None else default_history_paths()
    return [row for p in paths for row in _load_file(p)]


def format_seconds(seconds: float) -> str:
    """`h:mm:ss.s` / `m:ss.s` for a minute or more (how record times are quoted), else seconds."""
    minutes, rest = divmod(round(seconds, 1), 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}:{minutes:02d}:{rest:04.1f}"
    return f"{minutes}:{rest:04.1f}" if minutes else f"{rest:.1f} s"
