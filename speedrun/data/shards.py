"""The FineWeb `.bin` shard format: the one file format every token stream in speedrun is read from.

A shard (the format of modded-nanogpt's FineWeb shards) is a header of 256 little-endian int32 -- magic
20240520, version 1, token count, the rest zero -- followed by exactly `count` uint16 tokens. Reading
memory-maps the tokens (no copy); every inconsistency is a `SpeedrunError` naming the file. Writing goes to a
temporary file that is renamed into place, so a shard on disk is always whole.

This module sits at the bottom: the streams (`speedrun.data.streams`), the tiny corpus (`speedrun.data.corpus`), `fetch`
and `prepare` all build on it, and it imports none of them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from speedrun.errors import SpeedrunError
from speedrun.evidence.rundir import sha256_file

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4


# --- the shard format ---------------------------------------------------------------------------------------


# shards opened ahead of time by a rank's bootstrap (real path -> tokens), before the submission runs: later
# reads through this module are served from these maps without opening the files again (see `preload`)
_PRELOADED: dict[str, np.ndarray] = {}


def preload(paths: Sequence[str | os.PathLike]) -> None:
    """Validate and memory-map shards now; `read_shard` and the streams then reuse the maps for these paths.

    The referee's bootstrap calls this before the submission's first line, so that afterwards any open of a
    data file in that process is the submission's own (and a problem)."""
    for p in paths:
        real = os.path.realpath(p)
        if real not in _PRELOADED:
            _PRELOADED[real] = _map_shard(Path(real))


def _read_token_count(path: Path) -> int:
    """Validate the header and the file size against it; return the token count."""
    if _PRELOADED:
        hit = _PRELOADED.get(os.path.realpath(path))
        if hit is not None:
            return len(hit)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise SpeedrunError(f"{path}: missing") from None
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) < HEADER_BYTES:
        raise SpeedrunError(f"{path}: truncated: {len(raw)} bytes is shorter than the {HEADER_BYTES}-byte header")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise SpeedrunError(f"{path}: not a token shard (magic {int(header[0])}, expected {MAGIC})")
    if header[1] != VERSION:
        raise SpeedrunError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    count = int(header[2])
    if count < 0:
        raise SpeedrunError(f"{path}: corrupt header: negative token count {count}")
    expected = HEADER_BYTES + 2 * count
    if size != expected:
        problem = "truncated" if size < expected else "has trailing bytes"
        raise SpeedrunError(f"{path}: {problem}: header says {count} tokens ({expected} bytes), file has {size} bytes")
    return count


def shard_tokens(path: str | os.PathLike) -> int:
    """A shard's token count after validating its header and size (cheap: reads 1 KiB)."""
    return _read_token_count(Path(path))


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """Memory-map a shard's tokens (read-only uint16, no copy) after validating its header and size."""
    if _PRELOADED:
        hit = _PRELOADED.get(os.path.realpath(path))
        if hit is not None:
            return hit
    return _map_shard(Path(path))


def _map_shard(path: Path) -> np.ndarray:
    count = _read_token_count(path)
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))


def write_shard(path: str | os.PathLike, tokens: np.ndarray | Sequence[int]) -> None:
    """Write tokens as a shard: into a temp file beside `path`, fsync, then rename over it."""
    path = Path(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise SpeedrunError(f"{path}: tokens must be one-dimensional, got shape {tokens.shape}")
    if tokens.size and (tokens.dtype.kind not in "iu" or tokens.min() < 0 or tokens.max() > 65535):
        raise SpeedrunError(f"{path}: tokens must be integers in [0, 65535] to fit the uint16 shard format")
    if tokens.size >= 2**31:
        raise SpeedrunError(f"{path}: {tokens.size} tokens exceed the format's int32 token count")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, tokens.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.astype("<u2", copy=False).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; shards are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    tokens: int
    sha256: str


def shard_info(path: str | os.PathLike) -> ShardInfo:
    """Validate a shard's format and return its token count and the sha256 of its bytes."""
    path = Path(path)
    count = _read_token_count(path)
    return ShardInfo(path=path, tokens=count, sha256=sha256_file(path))


def shard_bytes(tokens: int) -> int:
    """The exact size of a valid shard holding `tokens` tokens."""
    return HEADER_BYTES + 2 * tokens
