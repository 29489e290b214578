"""Output folders that a failed `data fetch` or `data prepare` does not leave behind.

Both commands create their output folder (and any missing parents) before the work that can fail; a failure
used to leave it there empty, looking like a half-made dataset. `made_for(folder)` creates it and, if the
block fails, removes again the folders it created that hold nothing of value -- nothing at all, or only the
download bookkeeping (`.cache`) of the attempt that failed. A folder that existed before, or that holds any
other file, is never touched.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LEFTOVERS = {".cache"}  # huggingface_hub's per-folder download metadata (`local_dir/.cache/huggingface`)


@contextmanager
def made_for(folder: str | os.PathLike) -> Iterator[Path]:
    """`mkdir -p folder` for the block; on failure remove the folders made here that are still empty."""
    folder = Path(folder)
    made, p = [], folder
    while not p.exists():  # deepest first
        made.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield folder
    except BaseException:
        for d in made:
            try:
                entries = {e.name for e in d.iterdir()}
            except OSError:
                continue
            if not entries <= LEFTOVERS:
                break  # something kept: so are the folders above it
            for name in entries:
                shutil.rmtree(d / name, ignore_errors=True)
            try:
                d.rmdir()
            except OSError:
                break
        raise
