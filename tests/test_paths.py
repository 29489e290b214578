"""The one rule for where tracks, data, records and runs live (speedrun/paths.py), and its users."""

from __future__ import annotations

from pathlib import Path

import pytest

from speedrun.ledger import store
from speedrun import paths
from speedrun import tracks
from speedrun.errors import SpeedrunError

REPO = Path(__file__).resolve().parent.parent
VARS = ("SPEEDRUN_TRACKS_DIR", "SPEEDRUN_DATA_DIR", "SPEEDRUN_RECORDS_DIR", "SPEEDRUN_RUNS_DIR", "XDG_CACHE_HOME")


@pytest.fixture
def clean(monkeypatch):
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_in_a_checkout(clean, tmp_path):
    clean.chdir(tmp_path)
    assert paths.checkout() == REPO
    assert paths.tracks_dir() == REPO / "configs" / "tracks"
    assert paths.data_dir() == REPO / "data"
    assert paths.records_dir() == REPO / "records"
    assert paths.runs_dir().absolute() == tmp_path / "runs"  # runs land where the command is run


def test_installed_without_a_checkout(clean, tmp_path):
    site = tmp_path / "site-packages"
    (site / "speedrun" / "_tracks").mkdir(parents=True)
    clean.setattr(paths, "SOURCE_ROOT", site)
    clean.setattr(paths, "PACKAGED_TRACKS", site / "speedrun" / "_tracks")
    clean.setenv("HOME", str(tmp_path / "home"))
    clean.chdir(tmp_path)
    assert paths.checkout() is None
    assert paths.tracks_dir() == site / "speedrun" / "_tracks"
    assert paths.data_dir() == tmp_path / "home" / ".cache" / "speedrun" / "data"
    clean.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.data_dir() == tmp_path / "xdg" / "speedrun" / "data"
    assert paths.records_dir().absolute() == tmp_path / "records"
    assert paths.runs_dir().absolute() == tmp_path / "runs"


def test_environment_wins_and_empty_is_unset(clean, tmp_path):
    for var, fn in (("SPEEDRUN_TRACKS_DIR", paths.tracks_dir), ("SPEEDRUN_DATA_DIR", paths.data_dir),
                    ("SPEEDRUN_RECORDS_DIR", paths.records_dir), ("SPEEDRUN_RUNS_DIR", paths.runs_dir)):
        clean.setenv(var, str(tmp_path / var))
        assert fn() == tmp_path / var
        clean.setenv(var, "  ")
        assert fn() != Path("  ") and str(fn()).strip()
    clean.setenv("SPEEDRUN_DATA_DIR", "~/somewhere")
    assert paths.data_dir() == Path.home() / "somewhere"


def test_modules_follow_the_rule(clean, tmp_path):
    from speedrun.data import streams

    for var, fn in (("SPEEDRUN_TRACKS_DIR", tracks.tracks_dir), ("SPEEDRUN_DATA_DIR", streams.data_dir),
                    ("SPEEDRUN_RECORDS_DIR", store.records_dir)):
        assert fn() == {"SPEEDRUN_TRACKS_DIR": paths.tracks_dir, "SPEEDRUN_DATA_DIR": paths.data_dir,
                        "SPEEDRUN_RECORDS_DIR": paths.records_dir}[var]()
        clean.setenv(var, str(tmp_path / var))
        assert fn() == tmp_path / var


def test_a_missing_tracks_folder_is_one_clear_error(clean, tmp_path):
    clean.setenv("SPEEDRUN_TRACKS_DIR", str(tmp_path / "nope"))
    with pytest.raises(SpeedrunError, match=r"nope: no such tracks folder \(from \$SPEEDRUN_TRACKS_DIR\)"):
        tracks.track_names()
    with pytest.raises(SpeedrunError, match="no such tracks folder"):
        tracks.load_track("tiny")


def test_describe_shows_the_rule_and_the_present_values(clean, tmp_path):
    clean.setenv("SPEEDRUN_RUNS_DIR", str(tmp_path / "r"))
    text = paths.describe()
    assert text.startswith(paths.RULE)
    assert f"runs {tmp_path / 'r'}" in text and f"tracks {REPO / 'configs' / 'tracks'}" in text
