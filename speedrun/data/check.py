"""The pre-launch check of a track's data: bad shards are found before a run starts, not by its crash.

Without it a val shard with flipped bytes was launched anyway and the submission died of an `IndexError`
deep in its embedding, with verify blaming the wrong thing. `check_track_data` lists every problem it finds,
each one line naming the file; `require_track_data` raises the first as a `SpeedrunError` (the launcher's
call, just before it launches).

What is checked:
  * always: each file's shard header and its size against the header's token count, and, for a generated
    corpus, the token count the track expects; the val tokens against the vocabulary (val data is small);
  * contents (sha256), hashed afresh on every call: a cache keyed by size and mtime (`evidence.pins.Hasher`)
    misses a same-size edit whose mtime was put back, and a cache keyed by content would need the hash it
    saves. Generated (tiny) data is small (5 files, ~34 MB, a fraction of a second), so every file is
    hashed, against the track's pin or else the digest recorded when it was generated. Hub data is
    large (gigabytes), so only the files the track pins (`[data.sha256]`) are hashed; the others were
    checked against the hub's own sha256 when `speedrun data fetch` downloaded them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from speedrun import paths
from speedrun.errors import SpeedrunError


def _files(track, root: Path, named: bool) -> tuple[Path, list[str], dict[str, int], dict[str, str], str]:
    """(folder, file names to check, expected sizes by name, sha256 wanted by name, how to get fresh data);
    `named`: the data folder was given (the fix names it)."""
    from speedrun.data import corpus

    fix = f"`speedrun data fetch {track.name}" + (f" --data-dir {root}`" if named else "`")
    folder = paths.track_data_dir(track, root)
    if track.data.source == "generator":
        sizes = corpus._expected_sizes(track)
        wanted = dict((corpus._read_meta(folder) or {}).get("sha256") or {})
        wanted.update(track.data.sha256)
        return folder, list(sizes), sizes, wanted, f"delete {folder} and run {fix}"
    names = list(track.data.all_val_files)
    for name in track.data.train_files:  # the train shards present, as an unbroken prefix (as `track_files`)
        if not (folder / name).exists():
            break
        names.append(name)
    return folder, names, {}, dict(track.data.sha256), f"delete it and run {fix}"


def check_track_data(track, data_dir: str | os.PathLike | None = None) -> list[str]:
    """Every problem with the track's data files in `data_dir` (default: `paths.data_dir()`), one line each;
    empty when the data is sound. Missing files are problems too (nothing is generated or fetched here)."""
    from speedrun import paths
    from speedrun.data import shards

    root = Path(data_dir) if data_dir is not None else paths.data_dir()
    folder, names, sizes, wanted, fix = _files(track, root, data_dir is not None)
    val_names = set(track.data.all_val_files)
    problems: list[str] = []
    for name in names:
        path = folder / name
        try:
            count = shards.shard_tokens(path)
        except SpeedrunError as exc:
            problems.append(f"{exc}; {fix}")
            continue
        if name in sizes and shards.shard_bytes(count) != sizes[name]:
            expected = (sizes[name] - shards.HEADER_BYTES) // 2
            problems.append(f"{path}: holds {count} tokens, the track expects {expected}; {fix}")
            continue
        want = wanted.get(name)
        if want:
            got = shards.sha256_file(path)
            if got != want:
                problems.append(f"{path}: contents changed (sha256 {got[:16]}..., expected {want[:16]}...); {fix}")
                continue
        if name in val_names and count:
            top = int(np.max(shards.read_shard(path)))
            if top >= track.vocab_size:
                problems.append(f"{path}: holds token {top}, outside the track's vocabulary "
                                f"[0, {track.vocab_size}); {fix}")
    return problems


def require_track_data(track, data_dir: str | os.PathLike | None = None) -> None:
    """Raise the first problem `check_track_data` finds as a one-line `SpeedrunError` (the launcher's check)."""
    problems = check_track_data(track, data_dir)
    if problems:
        where = f" --data-dir {data_dir}" if data_dir is not None else ""
        more = (f" (and {len(problems) - 1} more: `speedrun data verify --track {track.name}{where}`)"
                if len(problems) > 1 else "")
        raise SpeedrunError(f"bad data, not launching: {problems[0]}{more}")
