"""The canonical data: the FineWeb `.bin` shard format and the streams every submission is fed from.

The referee, not the submission, decides which tokens a run trains and validates on, so both streams live
here and are the only way a run sees data.

Shard format (the one modded-nanogpt's FineWeb shards use): a header of 256 little-endian int32 -- magic
20240520, version 1, token count, the rest zero -- followed by exactly `count` uint16 tokens. Reading
memory-maps the tokens (no copy); every inconsistency is a `SpeedrunError` naming the file.

Train stream (`TrainStream`): walks the train shards in order. Each step consumes one global batch of
`batch_tokens` tokens; rank r of W receives tokens [r*local, (r+1)*local + 1) of the step's window (local =
batch_tokens // W), i.e. its inputs and the one extra token its last target needs, as [local // seq_len,
seq_len] int64 inputs and targets. When the current shard cannot supply a whole step, the stream moves to the
start of the next shard; past the last shard it raises a `SpeedrunError`.

  * `align_to_bos=True`: each rank's slice starts at a document boundary. Walking ranks in order from the
    step's cursor, rank r's slice starts at the first BOS token at or after the cursor and the cursor then
    moves to the slice's last token (its last target; as in the contiguous layout, the next slice may begin
    there). Tokens between a slice's end and the next BOS are skipped. Every rank computes the whole step's
    layout, so all ranks agree without communication.
  * `max_doc_len=M` (implies BOS alignment): a slice is built from whole documents in order, each cut to its
    first M tokens (the rest of a long document is skipped); documents are concatenated until the slice is
    full, the last one possibly cut short. This bounds how much of a batch one long document can occupy.

`tokens_served` counts input tokens handed out over all ranks (`step * batch_tokens`), whatever the mode.

Val stream (`ValStream`): the first `val_tokens` tokens of the val shard(s), read as one concatenated
sequence, are the inputs (targets shifted by one), split into steps of `batch_tokens` and across ranks the
same way as the train stream. A batch shape that does not tile `val_tokens` exactly is an error, never a
silent truncation.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from speedrun.errors import SpeedrunError
from speedrun.evidence import sha256_file  # re-exported: data.sha256_file

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """Where datasets live: `$SPEEDRUN_DATA_DIR`, else `<repo>/data` (gitignored)."""
    env = os.environ.get("SPEEDRUN_DATA_DIR")
    return Path(env) if env else REPO_ROOT / "data"


_default_data_dir = data_dir  # `track_files` takes a parameter of the same name


# --- the shard format ---------------------------------------------------------------------------------------


def _read_token_count(path: Path) -> int:
    """Validate the header and the file size against it; return the token count."""
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
    path = Path(path)
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


# --- where a track's files are ------------------------------------------------------------------------------


def hub_dir(track, root: Path | None = None) -> Path:
    """Local folder of a hub track's files: `<data_dir>/<repo name>` (shared by tracks using one repo)."""
    return Path(root or data_dir()) / track.data.repo.split("/")[-1]


def track_files(track, data_dir: str | os.PathLike | None = None, generate: bool = True,
                check_sha256: bool = False) -> tuple[list[Path], list[Path]]:
    """(train, val) shard paths of a track, validated (headers and sizes; sha256 pins if `check_sha256`).

    Tiny (generator) track: generates the corpus on first use (under a file lock) and reuses it after.
    Hub tracks: the val file(s) and the train shards present locally as an unbroken prefix of the track's
    list (fetch more with `speedrun data fetch TRACK --train-shards N`).
    """
    root = Path(data_dir) if data_dir is not None else _default_data_dir()
    if track.data.source == "generator":
        from speedrun import corpus

        return corpus.ensure(track, root / track.name, allow_generate=generate, check_sha256=check_sha256)

    folder = hub_dir(track, root)
    hint = f"run `speedrun data fetch {track.name}`" + (f" --data-dir {root}" if data_dir is not None else "")
    val = [folder / name for name in track.data.all_val_files]
    for path in val:
        if not path.exists():
            raise SpeedrunError(f"missing val file {path}; {hint}")
    train: list[Path] = []
    for name in track.data.train_files:
        if not (folder / name).exists():
            break
        train.append(folder / name)
    if not train:
        raise SpeedrunError(f"missing train shards in {folder} (first: {track.data.train_files[0]}); {hint}")
    for path in val + train:
        _read_token_count(path)
        pin = track.data.sha256.get(path.name)
        if check_sha256 and pin and sha256_file(path) != pin:
            raise SpeedrunError(f"{path}: sha256 does not match the track's pin {pin}; delete it and {hint}")
    return train, val


# --- streams ------------------------------------------------------------------------------------------------


def _local_shape(batch_tokens: int, seq_len: int, world_size: int, rank: int, what: str) -> int:
    for name, value in (("batch_tokens", batch_tokens), ("seq_len", seq_len), ("world_size", world_size)):
        if not isinstance(value, int) or value <= 0:
            raise SpeedrunError(f"{what}: {name} must be a positive integer, got {value!r}")
    if not 0 <= rank < world_size:
        raise SpeedrunError(f"{what}: rank {rank} is outside [0, {world_size})")
    if batch_tokens % world_size:
        raise SpeedrunError(f"{what}: batch_tokens {batch_tokens} is not divisible by world_size {world_size}")
    local = batch_tokens // world_size
    if local % seq_len:
        raise SpeedrunError(f"{what}: per-rank batch {local} tokens is not a multiple of seq_len {seq_len}")
    return local


def _to_device(window: np.ndarray, rows: int, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 (inputs, targets) of shape [rows, seq_len] from a window of rows*seq_len + 1 tokens.

    Inputs and targets never share memory, so a submission may modify one in place. On CUDA the host copy
    is pinned and both copies are non-blocking (the caching host allocator keeps the pinned block alive
    until its copy has finished).
    """
    buf = torch.from_numpy(np.asarray(window, dtype=np.int64))
    if device.type == "cpu":
        return buf[:-1].view(rows, seq_len), buf[1:].clone().view(rows, seq_len)
    if device.type == "cuda":
        buf = buf.pin_memory()
    inputs = buf[:-1].view(rows, seq_len).to(device, non_blocking=True)
    targets = buf[1:].view(rows, seq_len).to(device, non_blocking=True)
    return inputs, targets


class TrainStream:
    """This rank's slice of the canonical training stream; an endless iterator of (inputs, targets).

    See the module docstring for the layout. Checkpointable: `state_dict()` / `load_state_dict()` /
    `reset()` (the referee rewinds the stream after an untimed warmup).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], batch_tokens: int, seq_len: int, rank: int = 0,
                 world_size: int = 1, device: str | torch.device = "cpu", align_to_bos: bool = False,
                 bos_token: int = 50256, max_doc_len: int | None = None):
        self.local = _local_shape(batch_tokens, seq_len, world_size, rank, "train stream")
        if not paths:
            raise SpeedrunError("train stream: no train shards given")
        if max_doc_len is not None and (not isinstance(max_doc_len, int) or max_doc_len <= 0):
            raise SpeedrunError(f"train stream: max_doc_len must be a positive integer, got {max_doc_len!r}")
        self.paths = [Path(p) for p in paths]
        self.batch_tokens, self.seq_len = batch_tokens, seq_len
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.max_doc_len = max_doc_len
        self.align_to_bos = align_to_bos or max_doc_len is not None
        self.bos_token = bos_token
        for path in self.paths:  # fail at construction, not hours into a run
            _read_token_count(path)
        self.reset()

    # position ---------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.step = 0
        self._shard = 0
        self._pos = 0
        self._tokens: np.ndarray | None = None
        self._bos: np.ndarray | None = None

    @property
    def tokens_served(self) -> int:
        return self.step * self.batch_tokens

    def _config(self) -> dict:
        return {"batch_tokens": self.batch_tokens, "seq_len": self.seq_len, "world_size": self.world_size,
                "align_to_bos": self.align_to_bos, "bos_token": self.bos_token, "max_doc_len": self.max_doc_len,
                "files": [p.name for p in self.paths]}

    def state_dict(self) -> dict:
        return {"step": self.step, "shard": self._shard, "pos": self._pos, "config": self._config()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("config") != self._config():
            raise SpeedrunError("train stream: state was saved by a stream with a different configuration")
        self.reset()
        self.step, self._shard, self._pos = int(state["step"]), int(state["shard"]), int(state["pos"])

    # iteration --------------------------------------------------------------------------------------------
    def __iter__(self) -> "TrainStream":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._shard >= len(self.paths):
                raise SpeedrunError(
                    f"train data exhausted after {self.step} steps ({self.tokens_served} tokens) in "
                    f"{len(self.paths)} shard(s); fetch more (`speedrun data fetch TRACK --train-shards N`)")
            if self._tokens is None:
                self._tokens = read_shard(self.paths[self._shard])
                self._bos = None
            window = self._take()
            if window is not None:
                break
            self._shard, self._pos, self._tokens = self._shard + 1, 0, None
        self.step += 1
        return _to_device(window, self.local // self.seq_len, self.seq_len, self.device)

    def _take(self) -> np.ndarray | None:
        """This rank's window for the current step, advancing the cursor; None if the shard is too short."""
        tokens, need = self._tokens, self.local + 1
        if not self.align_to_bos:
            if self._pos + self.batch_tokens + 1 > len(tokens):
                return None
            start = self._pos + self.rank * self.local
            self._pos += self.batch_tokens
            return tokens[start:start + need]
        if self._bos is None:
            self._bos = np.flatnonzero(tokens == self.bos_token)
        pos, mine = self._pos, None
        for r in range(self.world_size):
            mine_now = r == self.rank
            piece = self._doc_slice(pos, need, mine_now) if self.max_doc_len else self._bos_slice(pos, need)
            if piece is None:
                return None
            window, pos = piece
            if mine_now:
                mine = window
        self._pos = pos
        return mine

    def _bos_slice(self, pos: int, need: int) -> tuple[np.ndarray, int] | None:
        i = np.searchsorted(self._bos, pos)
        if i == len(self._bos) or self._bos[i] + need > len(self._tokens):
            return None
        start = int(self._bos[i])
        return self._tokens[start:start + need], start + need - 1  # next slice may start at our last target

    def _doc_slice(self, pos: int, need: int, build: bool) -> tuple[np.ndarray | None, int] | None:
        """Capped documents from the first BOS at/after `pos` until `need` tokens; the tokens only if `build`."""
        bos, tokens, cap = self._bos, self._tokens, self.max_doc_len
        first = np.searchsorted(bos, pos)
        starts = bos[first:first + need]  # a slice never spans more than `need` documents
        if len(starts) == 0:
            return None
        ends = bos[first + 1:first + 1 + len(starts)]
        if len(ends) < len(starts):  # the shard's last document runs to its end
            ends = np.append(ends, len(tokens))
        lengths = np.minimum(ends - starts, cap)
        filled = np.cumsum(lengths)
        k = int(np.searchsorted(filled, need))  # documents 0..k contribute
        if k == len(starts):
            return None
        lengths = lengths[:k + 1].copy()
        lengths[k] -= int(filled[k]) - need
        end = int(starts[k]) + int(lengths[k]) - 1  # as in `_bos_slice`: the position of our last target
        if not build:
            return None, end
        pieces = [tokens[s:s + n] for s, n in zip(starts[:k + 1].tolist(), lengths.tolist(), strict=True)]
        return np.concatenate(pieces), end


class ValStream:
    """This rank's share of the first `val_tokens` tokens of the val shard(s); re-iterable, `len()` = steps."""

    def __init__(self, paths: Sequence[str | os.PathLike], val_tokens: int, batch_tokens: int, seq_len: int,
                 rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu"):
        self.local = _local_shape(batch_tokens, seq_len, world_size, rank, "val stream")
        if not isinstance(val_tokens, int) or val_tokens <= 0:
            raise SpeedrunError(f"val stream: val_tokens must be a positive integer, got {val_tokens!r}")
        if val_tokens % batch_tokens:
            raise SpeedrunError(
                f"val stream: batch of {batch_tokens} tokens ({world_size} rank(s) x {self.local}) does not tile "
                f"val_tokens {val_tokens} exactly ({val_tokens % batch_tokens} tokens left over)")
        if not paths:
            raise SpeedrunError("val stream: no val shards given")
        self.paths = [Path(p) for p in paths]
        self.val_tokens, self.batch_tokens, self.seq_len = val_tokens, batch_tokens, seq_len
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self._shards = [read_shard(p) for p in self.paths]
        self._offsets = np.cumsum([0] + [len(s) for s in self._shards])
        if self._offsets[-1] < val_tokens + 1:
            raise SpeedrunError(
                f"val stream: {', '.join(str(p) for p in self.paths)} hold {int(self._offsets[-1])} tokens; "
                f"{val_tokens} val tokens need {val_tokens + 1} (inputs plus the last target)")

    def __len__(self) -> int:
        return self.val_tokens // self.batch_tokens

    @property
    def tokens_per_rank(self) -> int:
        return len(self) * self.local

    def _window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the concatenated val shards."""
        parts = []
        while length > 0:
            i = int(np.searchsorted(self._offsets, start, side="right")) - 1
            offset = start - int(self._offsets[i])
            part = self._shards[i][offset:offset + length]
            parts.append(part)
            start, length = start + len(part), length - len(part)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rows = self.local // self.seq_len
        for step in range(len(self)):
            start = step * self.batch_tokens + self.rank * self.local
            yield _to_device(self._window(start, self.local + 1), rows, self.seq_len, self.device)
