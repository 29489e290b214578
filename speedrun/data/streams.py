"""The canonical data: where a track's shards are, and the streams every submission is fed from.

The referee, not the submission, decides which tokens a run trains and validates on, so both streams live
here and are the only way a run sees data. The file format itself is `speedrun.data.shards` (re-exported here).

Canonical token order (train). `TrainStream` is one cursor over the train shards, walked in order; it knows
nothing of ranks. `next_step(batch_tokens, seq_len, align_to_bos=..., max_doc_len=...)` takes one optimizer
step from the cursor: P = batch_tokens // seq_len pieces, each seq_len inputs plus the one token the last
target needs (seq_len + 1 tokens), numbered 0..P-1 in stream order.

  * Contiguous (the default): piece i = shard[c + i*seq_len : c + (i+1)*seq_len + 1], c = the cursor; the
    cursor then moves to c + batch_tokens (the step's last target is the next step's first input). This is
    API 1's order exactly.
  * Aligned (`align_to_bos=True`): piece 0 starts at the first BOS at or after the cursor, piece i+1 at the
    first BOS at or after piece i's last target position; the tokens in between are skipped, and the
    cursor moves to the last piece's last target position.
  * `max_doc_len=M` (implies aligned): a piece is built from whole documents in order, each cut to its first
    M tokens (the rest of a long document is skipped), concatenated until the piece has seq_len + 1 tokens
    (the last one possibly cut short); the next piece starts at the first BOS at or after the position of
    this piece's last token.

So the tokens of a step depend only on the cursor and (batch_tokens, seq_len, align_to_bos, max_doc_len),
never on the world size or gradient accumulation. Schedules: the arguments may change from one step to the
next; each step simply starts from where the previous one left the cursor. When the current shard cannot
supply a whole step, the step starts at the beginning of the next shard; past the last shard `next_step`
raises a `SpeedrunError`.

Who gets which piece: with W ranks and A micro-batches per step (accumulation), k = P // (W*A) and piece i
goes to micro-batch m of rank r when i // k == m*W + r (`owned_pieces`; `serve` builds that micro-batch).
Every rank walks the same cursor, so all ranks agree without communication.

Layouts of a micro-batch (`serve`, `make_batch`, `ValStream`, `random_batch`), int64 on the given device:
  * "rows": (inputs, targets), each [k, seq_len]; row j is piece j's tokens [0, seq_len) and [1, seq_len].
  * "flat": (inputs, targets, cu_seqlens): the k pieces concatenated, inputs and targets [n = k*seq_len],
    and cu_seqlens int32 [docs + 1]: the document starts inside the concatenation for variable-length
    attention -- 0, every position holding BOS, every piece start, and n, deduplicated and sorted. Train
    steps served flat must be aligned (every piece starts with BOS).
Inputs and targets never overlap in memory: a submission may modify one in place.

Validation (`ValStream`): the first `val_tokens` tokens of the val shard(s), read as one concatenated
sequence (targets shifted by one), cut into contiguous pieces of seq_len (never re-aligned or skipped:
validation covers exactly val_tokens) and split over val steps of `batch_tokens` and over ranks as above
(one micro-batch per step). A shape that does not tile `val_tokens` exactly is an error, never a silent
truncation. `ValStream.val_piece(i)` gives canonical val piece i (seq_len + 1 tokens), and `make_batch`
builds a batch from any piece arrays (the referee's probes).
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from speedrun import paths
from speedrun.errors import SpeedrunError
from speedrun.evidence.rundir import sha256_file  # noqa: F401  (re-exported: data.sha256_file)
# the shard format lives in `speedrun.data.shards`; re-exported here, where the streams read it
from speedrun.data.shards import (HEADER_BYTES, HEADER_INTS, MAGIC, VERSION, ShardInfo, _read_token_count,  # noqa: F401
                             preload, read_shard, shard_bytes, shard_info, shard_tokens, write_shard)

if TYPE_CHECKING:  # torch is imported where tensors are built: `import speedrun.data.streams` stays light
    import torch  # noqa: F401



def data_dir() -> Path:
    """Where datasets live: `$SPEEDRUN_DATA_DIR`, else the checkout's `data/` (gitignored), else the user's
    cache (`~/.cache/speedrun/data`); the rule is `speedrun.paths`."""
    return paths.data_dir()


_default_data_dir = data_dir  # `track_files` takes a parameter of the same name


# --- where a track's files are ------------------------------------------------------------------------------


def track_files(track, data_dir: str | os.PathLike | None = None, generate: bool = True,
                check_sha256: bool = False) -> tuple[list[Path], list[Path]]:
    """(train, val) shard paths of a track, validated (headers and sizes; sha256 pins if `check_sha256`).

    Tiny (generator) track: generates the corpus on first use (under a file lock) and reuses it after.
    Hub tracks: the val file(s) and the train shards present locally as an unbroken prefix of the track's
    list (fetch more with `speedrun data fetch TRACK --train-shards N`).
    """
    root = Path(data_dir) if data_dir is not None else _default_data_dir()
    if track.data.source == "generator":
        from speedrun.data import corpus

        return corpus.ensure(track, paths.track_data_dir(track, root), allow_generate=generate,
                             check_sha256=check_sha256)

    folder = paths.track_data_dir(track, root)
    hint = f"run `speedrun data fetch {track.name}" + (f" --data-dir {root}" if data_dir is not None else "") + "`"
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


# --- shapes and ownership -----------------------------------------------------------------------------------

def head_tokens(files: Sequence[str | os.PathLike], count: int) -> np.ndarray:
    """The first `count` tokens of the shards `files` read in order (fewer if they hold fewer), copying only
    those (a 100M-token shard is not read whole for its head)."""
    head, n = [], 0
    for path in files:
        if n >= count:
            break
        head.append(np.asarray(read_shard(path))[:count - n])
        n += len(head[-1])
    return np.concatenate(head) if head else np.zeros(0, dtype=np.uint16)


def val_unigram(val_files: Sequence[str | os.PathLike], val_tokens: int, vocab_size: int) -> np.ndarray:
    """The unigram distribution (probabilities, float64) of the first `val_tokens` val tokens: what a model
    that has seen no data cannot beat (the referee's start check and its canary tokens)."""
    tokens = head_tokens(val_files, val_tokens)
    counts = np.bincount(tokens.astype(np.int64), minlength=vocab_size).astype(np.float64)
    return counts / counts.sum()


LAYOUTS = ("rows", "flat")


def _positive(value, name: str, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise SpeedrunError(f"{what}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _layout(layout, what: str) -> str:
    if layout not in LAYOUTS:
        raise SpeedrunError(f"{what}: layout must be one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    return layout


def check_shape(batch_tokens: int, seq_len: int, world_size: int = 1, accum_steps: int = 1, *,
                max_seq_len: int = 0, what: str = "batch") -> int:
    """Validate a step's shape; return k, the pieces of `seq_len` tokens one rank gets per micro-batch.

    `batch_tokens` must divide into `world_size` ranks x `accum_steps` micro-batches x `seq_len`;
    `seq_len` may not exceed `max_seq_len` (0 = no limit). `what` names the caller in the error."""
    batch_tokens = _positive(batch_tokens, "batch_tokens", what)
    seq_len = _positive(seq_len, "seq_len", what)
    world_size = _positive(world_size, "world_size", what)
    accum_steps = _positive(accum_steps, "accum_steps", what)
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)) or max_seq_len < 0:
        raise SpeedrunError(f"{what}: max_seq_len must be a non-negative integer (0 = no limit), got {max_seq_len!r}")
    if max_seq_len and seq_len > max_seq_len:
        raise SpeedrunError(f"{what}: seq_len {seq_len} is above the track's max_seq_len {max_seq_len}")
    unit = world_size * accum_steps * seq_len
    if batch_tokens % unit:
        raise SpeedrunError(
            f"{what}: batch_tokens {batch_tokens} does not divide over {world_size} rank(s) x {accum_steps} "
            f"micro-batch(es) x seq_len {seq_len} (it must be a multiple of {unit})")
    return batch_tokens // unit


def owned_pieces(num_pieces: int, rank: int = 0, world_size: int = 1, accum_steps: int = 1,
                 micro: int = 0) -> range:
    """The piece indices micro-batch `micro` of rank `rank` gets: i with i // k == micro*world_size + rank."""
    num_pieces = _positive(num_pieces, "num_pieces", "pieces")
    world_size = _positive(world_size, "world_size", "pieces")
    accum_steps = _positive(accum_steps, "accum_steps", "pieces")
    if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
        raise SpeedrunError(f"pieces: rank {rank!r} is outside [0, {world_size})")
    if not isinstance(micro, (int, np.integer)) or not 0 <= micro < accum_steps:
        raise SpeedrunError(f"pieces: micro-batch {micro!r} is outside [0, {accum_steps})")
    if num_pieces % (world_size * accum_steps):
        raise SpeedrunError(f"pieces: {num_pieces} pieces do not divide over {world_size} rank(s) x "
                            f"{accum_steps} micro-batch(es)")
    k = num_pieces // (world_size * accum_steps)
    first = (int(micro) * world_size + int(rank)) * k
    return range(first, first + k)


# --- batches ------------------------------------------------------------------------------------------------


def _cu_seqlens(inputs: np.ndarray, seq_len: int, bos_token: int) -> np.ndarray:
    """Document starts in a concatenation of pieces: 0, BOS positions, piece starts, and n; int32."""
    n = len(inputs)
    starts = inputs == bos_token
    starts[::seq_len] = True
    return np.append(np.flatnonzero(starts), n).astype(np.int32)


def _build(fill, k: int, seq_len: int, layout: str, device, bos_token: int | None) -> tuple:
    """Allocate the host buffer [2, k, seq_len] int64 (inputs, targets), let `fill` write it, move to `device`.

    One host buffer and one copy per batch; on CUDA the buffer is pinned and the copies are non-blocking (the
    caching host allocator keeps a pinned block alive until its copy has finished)."""
    import torch

    device = torch.device(device)
    if k * seq_len >= 2**31:
        raise SpeedrunError(f"batch: {k} x {seq_len} tokens is too many for one batch (int32 cu_seqlens)")
    host = torch.empty((2, k, seq_len), dtype=torch.int64, pin_memory=device.type == "cuda")
    view = host.numpy()
    fill(view)
    cu = _cu_seqlens(view[0].reshape(-1), seq_len, bos_token) if layout == "flat" else None
    if device.type != "cpu":
        host = host.to(device, non_blocking=True)
    if layout == "rows":
        return host[0], host[1]
    cu_t = torch.from_numpy(cu)
    if device.type != "cpu":
        cu_t = (cu_t.pin_memory() if device.type == "cuda" else cu_t).to(device, non_blocking=True)
    return host[0].view(-1), host[1].view(-1), cu_t


def _from_window(window: np.ndarray, k: int, seq_len: int, layout: str, device, bos_token: int | None) -> tuple:
    """A batch of k back-to-back pieces from one window of k*seq_len + 1 tokens."""
    def fill(buf):
        buf[0] = window[:-1].reshape(k, seq_len)
        buf[1] = window[1:].reshape(k, seq_len)
    return _build(fill, k, seq_len, layout, device, bos_token)


def make_batch(pieces: Sequence[np.ndarray] | np.ndarray, layout: str = "rows", device="cpu", *,
               bos_token: int | None = None) -> tuple:
    """A batch from arbitrary pieces (1-D arrays of seq_len + 1 tokens each, or one [k, seq_len + 1] array).

    layout "rows": (inputs, targets) int64 [k, seq_len]; "flat": (inputs, targets) int64 [k*seq_len] and
    cu_seqlens int32 (0, BOS positions, piece starts, n), which needs `bos_token`."""
    _layout(layout, "batch")
    if layout == "flat" and bos_token is None:
        raise SpeedrunError("batch: the flat layout needs bos_token to find document starts")
    if isinstance(pieces, np.ndarray) and pieces.ndim == 2:
        pieces = list(pieces)
    pieces = [np.asarray(p) for p in pieces]
    if not pieces:
        raise SpeedrunError("batch: no pieces given")
    lengths = {p.shape for p in pieces}
    if len(lengths) != 1 or pieces[0].ndim != 1 or len(pieces[0]) < 2:
        raise SpeedrunError(f"batch: pieces must be 1-D arrays of one length seq_len + 1 >= 2, got shapes "
                            f"{sorted(lengths)}")
    if any(p.dtype.kind not in "iu" for p in pieces):
        raise SpeedrunError("batch: pieces must hold integer tokens")
    seq_len = len(pieces[0]) - 1

    def fill(buf):
        for j, p in enumerate(pieces):
            buf[0, j] = p[:-1]
            buf[1, j] = p[1:]
    return _build(fill, len(pieces), seq_len, layout, device, bos_token)


def _random_ints(generator, high: int, size: tuple[int, ...]) -> np.ndarray:
    if generator is None or isinstance(generator, np.random.Generator):
        return (generator or np.random.default_rng()).integers(0, high, size, dtype=np.int64)
    import torch

    if isinstance(generator, torch.Generator):
        return torch.randint(0, high, size, generator=generator, dtype=torch.int64).numpy()
    raise SpeedrunError(f"random batch: generator must be a numpy or torch (CPU) Generator, "
                        f"got {type(generator).__name__}")


def random_batch(shape_spec: tuple[int, int], vocab_size: int, bos_token: int, generator=None,
                 layout: str = "rows", device="cpu") -> tuple:
    """Random tokens in the shapes `serve` gives, for an untimed warm-up: shape_spec = (k, seq_len) pieces.

    rows: uniform tokens in [0, vocab_size). flat: random documents -- every piece starts with BOS and about
    four more BOS per piece sit at random places -- with cu_seqlens computed as for real data, so the number
    of documents varies from call to call. `generator`: a numpy Generator, a CPU torch.Generator, or None."""
    what = "random batch"
    if not isinstance(shape_spec, (tuple, list)) or len(shape_spec) != 2:
        raise SpeedrunError(f"{what}: shape_spec must be (pieces, seq_len), got {shape_spec!r}")
    k = _positive(shape_spec[0], "pieces", what)
    seq_len = _positive(shape_spec[1], "seq_len", what)
    vocab_size = _positive(vocab_size, "vocab_size", what)
    _layout(layout, what)
    if isinstance(bos_token, bool) or not isinstance(bos_token, (int, np.integer)) or not 0 <= bos_token < vocab_size:
        raise SpeedrunError(f"{what}: bos_token {bos_token!r} is not a token of a {vocab_size}-token vocabulary")
    tokens = _random_ints(generator, vocab_size, (k, seq_len + 1))
    if layout == "flat":
        # BOS with probability 4/seq_len: ~4 extra documents per piece (a uniform draw under vocab*4/seq_len)
        marks = _random_ints(generator, vocab_size * seq_len, (k, seq_len + 1)) < 4 * vocab_size
        tokens[marks] = bos_token
        tokens[:, 0] = bos_token
    return make_batch(tokens, layout, device, bos_token=bos_token)


# --- the train stream ---------------------------------------------------------------------------------------


class Step:
    """One optimizer step of the canonical train stream: `num_pieces` pieces of seq_len + 1 tokens.

    `piece(i)` / `pieces(indices)` materialise any subset cheaply (read-only views of the memory-mapped
    shard; copies when `max_doc_len` stitches documents). Attributes: `index` (0-based step number),
    `batch_tokens`, `seq_len`, `num_pieces`, `align_to_bos` (True also under max_doc_len), `max_doc_len`,
    `bos_token`, `shard` (index of the shard it comes from), `start` (position of its first token in that
    shard), `end` (the cursor after it: its last target's position)."""

    def __init__(self, index: int, batch_tokens: int, seq_len: int, align_to_bos: bool, max_doc_len: int | None,
                 bos_token: int, shard: int, tokens: np.ndarray, starts: np.ndarray,
                 segments: list[tuple[list[int], list[int]]] | None, end: int):
        self.index, self.batch_tokens, self.seq_len = index, batch_tokens, seq_len
        self.num_pieces = batch_tokens // seq_len
        self.align_to_bos, self.max_doc_len, self.bos_token = align_to_bos, max_doc_len, bos_token
        self.shard, self.end = shard, end
        self.start = int(starts[0])
        self._tokens, self._starts, self._segments = tokens, starts, segments

    def __repr__(self) -> str:
        return (f"Step(index={self.index}, batch_tokens={self.batch_tokens}, seq_len={self.seq_len}, "
                f"align_to_bos={self.align_to_bos}, max_doc_len={self.max_doc_len}, shard={self.shard}, "
                f"start={self.start})")

    def _check(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.num_pieces:
            raise SpeedrunError(f"step {self.index}: piece {i!r} is outside [0, {self.num_pieces})")
        return int(i)

    def piece(self, i: int) -> np.ndarray:
        """Piece i: seq_len + 1 uint16 tokens (read-only)."""
        i = self._check(i)
        if self._segments is None:
            s = int(self._starts[i])
            return self._tokens[s:s + self.seq_len + 1]
        starts, lengths = self._segments[i]
        return np.concatenate([self._tokens[s:s + n] for s, n in zip(starts, lengths)])

    def pieces(self, indices: Sequence[int] | range) -> list[np.ndarray]:
        return [self.piece(i) for i in indices]

    def _window(self, indices: range) -> np.ndarray | None:
        """The tokens of consecutive back-to-back pieces as one window, or None if they are not contiguous."""
        if self._segments is not None or self.align_to_bos or len(indices) == 0 or indices.step != 1:
            return None
        first = self._check(indices[0])
        self._check(indices[-1])
        s = int(self._starts[first])
        return self._tokens[s:s + len(indices) * self.seq_len + 1]


def serve(step: Step, rank: int = 0, world_size: int = 1, accum_steps: int = 1, micro: int = 0,
          layout: str = "rows", device="cpu") -> tuple:
    """Micro-batch `micro` of rank `rank` of a step, in `layout` on `device` (see the module docstring).

    rows: (inputs, targets) int64 [k, seq_len]; flat: (inputs, targets) int64 [k*seq_len], cu_seqlens int32."""
    _layout(layout, "serve")
    if layout == "flat" and not step.align_to_bos:
        raise SpeedrunError("serve: the flat layout needs pieces aligned to BOS; take the step with "
                            "next_step(..., align_to_bos=True)")
    check_shape(step.batch_tokens, step.seq_len, world_size, accum_steps, what="serve")
    indices = owned_pieces(step.num_pieces, rank, world_size, accum_steps, micro)
    window = step._window(indices)
    if window is not None:
        return _from_window(window, len(indices), step.seq_len, layout, device, step.bos_token)
    return make_batch(step.pieces(indices), layout, device, bos_token=step.bos_token)


def _plan_aligned(tokens: np.ndarray, bos: np.ndarray, pos: int, count: int, seq_len: int):
    """Starts of `count` BOS-aligned pieces from `pos`, and the cursor after them; None past the shard's end."""
    starts = np.empty(count, dtype=np.int64)
    n, nbos = len(tokens), len(bos)
    for i in range(count):
        j = int(bos.searchsorted(pos))
        if j == nbos:
            return None
        s = int(bos[j])
        if s + seq_len + 1 > n:
            return None
        starts[i] = s
        pos = s + seq_len  # the next piece may start at this piece's last target
    return starts, pos


def _plan_capped(n: int, bos: list[int], pos: int, count: int, seq_len: int, cap: int):
    """Segments (document starts, lengths) of `count` pieces of documents cut to `cap` tokens, and the cursor
    after them; None past the shard's end. `bos`: the BOS positions as a list, `n`: the shard's length.

    A plain loop over documents: a piece spans few of them, and list indexing beats numpy calls here."""
    need, nbos, segments = seq_len + 1, len(bos), []
    j = 0
    for _ in range(count):
        j = bisect.bisect_left(bos, pos, j)  # the cursor only moves forward
        starts, lengths, filled = [], [], 0
        while filled < need:
            if j >= nbos:
                return None
            start = bos[j]
            end = bos[j + 1] if j + 1 < nbos else n  # the shard's last document runs to its end
            take = min(end - start, cap, need - filled)
            starts.append(start)
            lengths.append(take)
            filled += take
            j += 1
        segments.append((starts, lengths))
        pos = start + take - 1  # the position of this piece's last target
        j -= 1  # the next piece may start at the document this one ended in (if its BOS is at pos)
    return segments, pos


class TrainStream:
    """The canonical train cursor over `paths` (independent of rank); `next_step()` takes one step.

    Checkpointable: `state_dict()` / `load_state_dict()` / `reset()` (the referee rewinds the stream after an
    untimed warm-up). `steps` and `tokens_served` (the sum of the steps' batch_tokens) count what was taken.
    `max_seq_len` (0 = free) bounds the seq_len a step may ask for."""

    def __init__(self, paths: Sequence[str | os.PathLike], bos_token: int, *, max_seq_len: int = 0):
        if not paths:
            raise SpeedrunError("train stream: no train shards given")
        if isinstance(bos_token, bool) or not isinstance(bos_token, (int, np.integer)) or not 0 <= bos_token <= 65535:
            raise SpeedrunError(f"train stream: bos_token must be a uint16 token, got {bos_token!r}")
        check_shape(1, 1, max_seq_len=max_seq_len, what="train stream")  # validates max_seq_len
        self.paths = [Path(p) for p in paths]
        self.bos_token = int(bos_token)
        self.max_seq_len = int(max_seq_len)
        self._lengths = [_read_token_count(p) for p in self.paths]  # fail at construction, not hours in
        self._cache: dict = {}  # the current shard: index, tokens, BOS positions (array and list)
        self.reset()

    # position ---------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self.steps = 0
        self.tokens_served = 0
        self._shard = 0
        self._pos = 0

    @property
    def position(self) -> tuple[int, int]:
        """(shard index, cursor inside that shard)."""
        return self._shard, self._pos

    def _config(self) -> dict:
        return {"bos_token": self.bos_token, "files": [p.name for p in self.paths]}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "tokens_served": self.tokens_served, "shard": self._shard, "pos": self._pos,
                "config": self._config()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("config") != self._config():
            raise SpeedrunError("train stream: state was saved by a stream over other files or another bos_token")
        try:
            steps, served, shard, pos = (int(state[key]) for key in ("steps", "tokens_served", "shard", "pos"))
        except (KeyError, TypeError, ValueError):
            raise SpeedrunError("train stream: state lacks integer steps/tokens_served/shard/pos") from None
        if not (0 <= shard <= len(self.paths) and 0 <= pos and steps >= 0 and served >= 0
                and (shard == len(self.paths) or pos <= self._lengths[shard])):
            raise SpeedrunError(f"train stream: state position (shard {shard}, pos {pos}) is outside the shards")
        self.steps, self.tokens_served, self._shard, self._pos = steps, served, shard, pos

    # taking steps -----------------------------------------------------------------------------------------
    def _shard_data(self, index: int, bos: str | None = None):
        """The shard's tokens, or its BOS positions as an int64 array (`bos="array"`) or a list (`bos="list"`),
        computed once per shard."""
        if self._cache.get("index") != index:
            # a plain ndarray over the memory map: slicing a np.memmap is much slower
            self._cache = {"index": index, "tokens": np.asarray(read_shard(self.paths[index]))}
        if bos is None:
            return self._cache["tokens"]
        if "array" not in self._cache:
            self._cache["array"] = np.flatnonzero(self._cache["tokens"] == self.bos_token)
        if bos == "list" and "list" not in self._cache:
            self._cache["list"] = self._cache["array"].tolist()
        return self._cache[bos]

    def next_step(self, batch_tokens: int, seq_len: int, *, align_to_bos: bool = False,
                  max_doc_len: int | None = None) -> Step:
        """Take one optimizer step of `batch_tokens` tokens in pieces of `seq_len` from the cursor and advance it.

        The arguments may change from one step to the next (schedules). `max_doc_len` implies alignment."""
        what = "train step"
        check_shape(batch_tokens, seq_len, max_seq_len=self.max_seq_len, what=what)
        if max_doc_len is not None:
            max_doc_len = _positive(max_doc_len, "max_doc_len", what)
        aligned = bool(align_to_bos) or max_doc_len is not None
        longest = max(self._lengths)
        if seq_len + 1 > longest:
            raise SpeedrunError(f"{what}: a piece of seq_len + 1 = {seq_len + 1} tokens is longer than every train "
                                f"shard (the longest holds {longest})")
        if batch_tokens + 1 > longest:
            raise SpeedrunError(f"{what}: a step of batch_tokens + 1 = {batch_tokens + 1} tokens is longer than "
                                f"every train shard (the longest holds {longest})")
        count = batch_tokens // seq_len
        shard, pos = self._shard, self._pos
        while True:
            if shard >= len(self.paths):
                raise SpeedrunError(
                    f"train data exhausted after {self.steps} steps ({self.tokens_served} tokens) in "
                    f"{len(self.paths)} shard(s); fetch more (`speedrun data fetch TRACK --train-shards N`)")
            tokens = self._shard_data(shard)
            segments = None
            if not aligned:
                plan = None
                if pos + batch_tokens + 1 <= len(tokens):
                    plan = pos + seq_len * np.arange(count, dtype=np.int64), pos + batch_tokens
            elif max_doc_len is None:
                plan = _plan_aligned(tokens, self._shard_data(shard, "array"), pos, count, seq_len)
            else:
                plan = _plan_capped(len(tokens), self._shard_data(shard, "list"), pos, count, seq_len, max_doc_len)
                if plan is not None:
                    segments, end = plan
                    plan = np.array([s[0] for s, _ in segments], dtype=np.int64), end
            if plan is not None:
                break
            shard, pos = shard + 1, 0
        starts, end = plan
        step = Step(self.steps, int(batch_tokens), int(seq_len), aligned, max_doc_len, self.bos_token, shard,
                    tokens, starts, segments, end)
        self._shard, self._pos = shard, end
        self.steps += 1
        self.tokens_served += int(batch_tokens)
        return step


# --- the val stream -----------------------------------------------------------------------------------------


class ValStream:
    """This rank's share of the first `val_tokens` tokens of the val shard(s); re-iterable, `len()` = val steps.

    Each val step of `batch_tokens` (all ranks together) is cut into contiguous pieces of `seq_len`; rank r gets
    pieces [r*k, (r+1)*k) of it, k = batch_tokens // (world_size * seq_len), in `layout` on `device`. The flat
    layout needs `bos_token` (cu_seqlens from BOS positions and piece starts). `val_piece(i)` is canonical val
    piece i (global index, seq_len + 1 tokens)."""

    def __init__(self, paths: Sequence[str | os.PathLike], val_tokens: int, batch_tokens: int, seq_len: int,
                 rank: int = 0, world_size: int = 1, layout: str = "rows", device="cpu", *,
                 bos_token: int | None = None, max_seq_len: int = 0, start: int = 0):
        what = "val stream"
        self.k = check_shape(batch_tokens, seq_len, world_size, 1, max_seq_len=max_seq_len, what=what)
        val_tokens = _positive(val_tokens, "val_tokens", what)
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise SpeedrunError(f"{what}: rank {rank!r} is outside [0, {world_size})")
        if val_tokens % batch_tokens:
            raise SpeedrunError(
                f"{what}: batch of {batch_tokens} tokens ({world_size} rank(s) x {batch_tokens // world_size}) "
                f"does not tile val_tokens {val_tokens} exactly ({val_tokens % batch_tokens} tokens left over)")
        self.layout = _layout(layout, what)
        if layout == "flat" and bos_token is None:
            raise SpeedrunError(f"{what}: the flat layout needs bos_token to find document starts")
        if not paths:
            raise SpeedrunError(f"{what}: no val shards given")
        self.paths = [Path(p) for p in paths]
        self.val_tokens, self.batch_tokens, self.seq_len = val_tokens, int(batch_tokens), int(seq_len)
        self.rank, self.world_size = int(rank), int(world_size)
        self.device, self.bos_token = device, bos_token
        self._shards = [np.asarray(read_shard(p)) for p in self.paths]  # plain ndarrays: faster slicing
        self._offsets = np.cumsum([0] + [len(s) for s in self._shards])
        self.start = int(start)  # the split's first token in the concatenated shards (a monitor split's > 0)
        if self._offsets[-1] < self.start + val_tokens + 1:
            raise SpeedrunError(
                f"{what}: {', '.join(str(p) for p in self.paths)} hold {int(self._offsets[-1])} tokens; "
                f"{val_tokens} val tokens from token {self.start} need {self.start + val_tokens + 1} "
                f"(inputs plus the last target)")

    def __len__(self) -> int:
        return self.val_tokens // self.batch_tokens

    @property
    def num_pieces(self) -> int:
        """Canonical val pieces in all (val_tokens // seq_len)."""
        return self.val_tokens // self.seq_len

    @property
    def tokens_per_rank(self) -> int:
        return len(self) * self.k * self.seq_len

    def window(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the concatenated val shards (a view when inside one shard)."""
        if start < 0 or length < 0 or start + length > self._offsets[-1]:
            raise SpeedrunError(f"val stream: tokens [{start}, {start + length}) are outside the val shards "
                                f"({int(self._offsets[-1])} tokens)")
        parts = []
        while length > 0:
            i = int(np.searchsorted(self._offsets, start, side="right")) - 1
            offset = start - int(self._offsets[i])
            part = self._shards[i][offset:offset + length]
            parts.append(part)
            start, length = start + len(part), length - len(part)
        if not parts:
            return np.zeros(0, dtype=np.uint16)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def val_piece(self, index: int) -> np.ndarray:
        """Canonical val piece `index` (0 <= index < num_pieces): seq_len + 1 tokens from index*seq_len."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_pieces:
            raise SpeedrunError(f"val stream: piece {index!r} is outside [0, {self.num_pieces})")
        return self.window(self.start + int(index) * self.seq_len, self.seq_len + 1)

    def pieces_of(self, val_step: int) -> range:
        """The global val piece indices this rank gets at val step `val_step`."""
        per_step = self.batch_tokens // self.seq_len
        first = val_step * per_step + self.rank * self.k
        return range(first, first + self.k)

    def __iter__(self) -> Iterator[tuple]:
        for val_step in range(len(self)):
            first = self.pieces_of(val_step)[0]
            window = self.window(self.start + first * self.seq_len, self.k * self.seq_len + 1)
            yield _from_window(window, self.k, self.seq_len, self.layout, self.device, self.bos_token)
