"""Pins: the sha256 of every file a run's verdict depends on, computed from the bytes on disk.

A verdict is only as good as the code and data behind it. The launcher pins, for each run:
- the harness: every file of the installed `speedrun` package (a submission that edits the referee, or a run
  made with a modified harness, no longer matches an unmodified install);
- the track file it loaded;
- the data files the ranks were given (train shards and val files).
Each file is hashed from its own bytes once per run. Hashes are cached (per user, by real path) and reused
only while the file's device, inode, size and mtime are unchanged; any change re-hashes. After each
repetition the launcher re-checks every pin (`changed()`): a file edited during the run is a problem naming it;
at the end of the run it re-reads every pinned file's bytes (`FreshHasher`: no stat-keyed cache on that path).
`speedrun verify` compares a run's pins with what is installed now (`diff()`).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from speedrun import paths
from speedrun.evidence.rundir import sha256_file, write_json_atomic

HARNESS_SUFFIXES = (".py", ".toml")


def cache_path() -> Path:
    return paths.user_cache_dir() / "sha256-cache.json"


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


class Hasher:
    """sha256 of files, cached by (device, inode, size, mtime); `flush()` saves the cache."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_path()
        try:
            self.cache = json.loads(self.path.read_text())
            if not isinstance(self.cache, dict):
                self.cache = {}
        except (OSError, ValueError):
            self.cache = {}
        self._dirty = False

    def sha256(self, file: str | os.PathLike) -> str:
        real = os.path.realpath(file)
        key = _stat_key(os.stat(real))
        hit = self.cache.get(real)
        if isinstance(hit, dict) and hit.get("stat") == key:
            return hit["sha256"]
        digest = sha256_file(real)
        if _stat_key(os.stat(real)) != key:  # changed while we read it: hash again, do not cache
            return sha256_file(real)
        self.cache[real] = {"stat": key, "sha256": digest}
        self._dirty = True
        return digest

    def flush(self) -> None:
        if not self._dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path.with_suffix(".lock"), "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    on_disk = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    on_disk = {}
                if isinstance(on_disk, dict):
                    on_disk.update(self.cache)
                    self.cache = on_disk
                write_json_atomic(self.path, self.cache)
            self._dirty = False
        except OSError:
            pass  # an unwritable cache only costs a re-hash next time


class FreshHasher(Hasher):
    """sha256 from the file's bytes every time: no cache read or written (the end-of-run check)."""

    def __init__(self):
        self.path, self.cache, self._dirty = cache_path(), {}, False

    def sha256(self, file: str | os.PathLike) -> str:
        return sha256_file(os.path.realpath(file))

    def flush(self) -> None:
        pass


def harness_files() -> list[Path]:
    """The installed harness: every source file of the `speedrun` package, in a fixed order."""
    return sorted(p for p in paths.PACKAGE_DIR.rglob("*") if p.is_file() and p.suffix in HARNESS_SUFFIXES
                  and "__pycache__" not in p.parts)


def harness_pins(hasher: Hasher | None = None) -> dict[str, str]:
    hasher = hasher or Hasher()
    return {p.relative_to(paths.SOURCE_ROOT).as_posix(): hasher.sha256(p) for p in harness_files()}


def pin_files(paths: list[Path], hasher: Hasher) -> dict[str, dict]:
    """{name: {"path": real path, "sha256": ..., "stat": [...]}} for data or track files."""
    out = {}
    for p in paths:
        real = os.path.realpath(p)
        out[Path(p).name] = {"path": real, "sha256": hasher.sha256(real), "stat": _stat_key(os.stat(real))}
    return out


def pin_run(track, data_files: list[Path], hasher: Hasher | None = None) -> dict:
    """Everything a run depends on: {"harness": {relpath: sha}, "track": {...}, "data": {name: {...}}}."""
    hasher = hasher or Hasher()
    pins = {"harness": harness_pins(hasher),
            "track": {"name": track.name, "path": os.path.realpath(track.path), "sha256": track.config_sha256},
            "data": pin_files(data_files, hasher)}
    hasher.flush()
    return pins


def changed(pins: dict, hasher: Hasher | None = None) -> list[str]:
    """Files whose bytes differ now from their pin (checked after each repetition): readable phrases."""
    hasher = hasher or Hasher()
    problems = []
    for rel, digest in pins.get("harness", {}).items():
        path = paths.SOURCE_ROOT / rel
        if not path.exists():
            problems.append(f"harness file {rel} disappeared during the run")
        elif hasher.sha256(path) != digest:
            problems.append(f"harness file {rel} changed during the run")
    track = pins.get("track") or {}
    if track.get("path"):
        if not os.path.exists(track["path"]) or hasher.sha256(track["path"]) != track.get("sha256"):
            problems.append(f"track file {track['path']} changed during the run")
    for name, pin in pins.get("data", {}).items():
        if not os.path.exists(pin["path"]):
            problems.append(f"data file {name} disappeared during the run")
        elif hasher.sha256(pin["path"]) != pin["sha256"]:
            problems.append(f"data file {name} changed during the run")
    hasher.flush()
    return problems


def diff_harness(recorded: dict[str, str], hasher: Hasher | None = None) -> list[str]:
    """How a run's harness pins differ from the installed harness: one phrase per file."""
    now = harness_pins(hasher)
    out = []
    for rel in sorted(set(recorded) | set(now)):
        if rel not in now:
            out.append(f"harness file {rel} is not in the installed harness")
        elif rel not in recorded:
            out.append(f"harness file {rel} is installed now but was not part of the run's harness")
        elif recorded[rel] != now[rel]:
            out.append(f"harness file {rel} differs from the installed harness")
    return out
