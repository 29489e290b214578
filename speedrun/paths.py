"""Where speedrun keeps things: one rule, here, for tracks, data, records and runs.

A *checkout* is the source tree this package was imported from: the folder above `speedrun/` when it holds
the project's `pyproject.toml` and `configs/tracks/` (a clone, used in place or installed with `pip install
-e`). A plain `pip install .` has no checkout. An environment variable always wins; an empty one counts as
unset.

  tracks   $SPEEDRUN_TRACKS_DIR, else <checkout>/configs/tracks, else the track files shipped in the package
  data     $SPEEDRUN_DATA_DIR, else <checkout>/data, else $XDG_CACHE_HOME/speedrun/data (~/.cache/speedrun/data);
           a track's files in <data>/<repo name> (hub tracks: shared by tracks of one repo) or <data>/<track>
           (generated corpora)
  records  $SPEEDRUN_RECORDS_DIR, else <checkout>/records, else ./records (of the current directory)
  runs     $SPEEDRUN_RUNS_DIR, else ./runs (of the current directory)

Only the standard library is imported here: `speedrun --help` prints this rule.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SOURCE_ROOT = PACKAGE_DIR.parent
# where the wheel puts the track files and the external record history (built from configs/tracks and
# records/history, see pyproject.toml)
PACKAGED_TRACKS = PACKAGE_DIR / "_tracks"
PACKAGED_HISTORY = PACKAGE_DIR / "_history"

RULE = """\
where things live (an environment variable always wins):
  tracks   $SPEEDRUN_TRACKS_DIR, else the checkout's configs/tracks/, else the tracks shipped in the package
  data     $SPEEDRUN_DATA_DIR, else the checkout's data/, else $XDG_CACHE_HOME/speedrun/data (~/.cache/...)
  records  $SPEEDRUN_RECORDS_DIR, else the checkout's records/, else ./records
  runs     $SPEEDRUN_RUNS_DIR, else ./runs
(the checkout is the source tree speedrun was imported from; a plain `pip install .` has none)"""


def from_env(name: str) -> Path | None:
    """The path a `SPEEDRUN_*_DIR` (or XDG) variable names, None when unset or empty: the one reader of them
    (`speedrun.env` reads every other variable; these stay here, beside the rule they feed)."""
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else None


def checkout() -> Path | None:
    """The source tree speedrun runs from, or None for an installed (non-editable) package."""
    if (SOURCE_ROOT / "pyproject.toml").is_file() and (SOURCE_ROOT / "configs" / "tracks").is_dir():
        return SOURCE_ROOT
    return None


def tracks_dir() -> Path:
    env = from_env("SPEEDRUN_TRACKS_DIR")
    if env is not None:
        return env
    root = checkout()
    return root / "configs" / "tracks" if root is not None else PACKAGED_TRACKS


def user_cache_dir() -> Path:
    base = from_env("XDG_CACHE_HOME")
    return (base if base is not None else Path.home() / ".cache") / "speedrun"


def data_dir() -> Path:
    env = from_env("SPEEDRUN_DATA_DIR")
    if env is not None:
        return env
    root = checkout()
    return root / "data" if root is not None else user_cache_dir() / "data"


def track_data_dir(track, root: str | os.PathLike | None = None) -> Path:
    """The folder of a track's data files under `root` (default: `data_dir()`): `<root>/<repo name>` for a hub
    track (tracks of one repo share it), `<root>/<track name>` for a generated corpus."""
    base = Path(root) if root is not None else data_dir()
    if track.data.source == "generator":
        return base / track.name
    return base / track.data.repo.split("/")[-1]


def records_dir() -> Path:
    env = from_env("SPEEDRUN_RECORDS_DIR")
    if env is not None:
        return env
    root = checkout()
    return root / "records" if root is not None else Path("records")


def history_dir() -> Path:
    """The external record history (modded-nanogpt's tables): the records folder's `history/`, else the copy
    shipped in the package (a plain install has no records folder of its own)."""
    folder = records_dir() / "history"
    return folder if folder.is_dir() or not PACKAGED_HISTORY.is_dir() else PACKAGED_HISTORY


def runs_dir() -> Path:
    env = from_env("SPEEDRUN_RUNS_DIR")
    return env if env is not None else Path("runs")


def describe() -> str:
    """The rule and, under it, what it resolves to right now (for `speedrun --help`)."""
    now = (f"here and now: tracks {tracks_dir().absolute()}, data {data_dir().absolute()}, "
           f"records {records_dir().absolute()}, runs {runs_dir().absolute()}")
    return f"{RULE}\n{now}"
