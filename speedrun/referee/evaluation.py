"""How the referee measures a model: cross-entropy from its logits, and probes hidden among the val batches.

The submission hands the referee a function from inputs to logits; everything else happens here:

- Loss. For every canonical val batch the referee calls `logits_fn`, then computes each token's cross-entropy
  itself, `logsumexp(logits) - logits[target]`, over *all* columns the model returns (padding the vocabulary
  can only add probability mass it wastes), in float32 chunks of rows, so a [65,536 x 50,304] bf16 batch never
  needs a float32 copy of itself and the 10,485,760 val tokens of gpt2-small are never all in memory. Sums are
  accumulated in float64.
- Probes. One extra batch of the same shape, at a random place among the canonical batches, holds copies of
  this rank's own val rows cut at a random position j: half of them take the rest from another real val row
  at the same offsets (`splice`), the others from tokens drawn independently from the val set's unigram
  distribution ("canaries"). A causal model that does not change during validation gives exactly the
  same outputs before position j for the copy as for the original, which was (or will be) measured in its own
  canonical batch. The referee reports how far they moved: per-token losses before j - 1 (`nll_diff`; the
  loss at j - 1 scores a different target) and whole predicted distributions at j - 1 and a few positions
  before it (`dist_diff`, total variation). And on the canaries' drawn tokens no model can do better in
  expectation than the unigram entropy (each token is independent of everything before it), while a model
  that sees the next token scores far below: the canary loss is reported too. The launcher judges them.
  The extra batch is real val text up to each cut, has the canonical shape and arrives through the same
  call; its place and contents are drawn from the operating system's randomness, not from the run's seed.

Nothing here reads files: the caller supplies `val_piece(index)` (the canonical val pieces) and
`make_batch(pieces)` (a batch in the submission's layout). `measuring()` is a generator that yields each batch
and takes its logits, so the referee agent (`speedrun.referee.agent`) runs it in the launcher's process and
only each batch's inputs go to the rank: the targets, the plan and the batch order never do.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from speedrun.errors import SpeedrunError

CHUNK_BYTES = 1 << 28            # float32 bytes per chunk of rows when computing the loss
DIST_ROWS = 8                    # spliced rows whose whole distributions are compared
DIST_POSITIONS = 4               # positions per such row
_RNG = random.SystemRandom()


@dataclass
class Batch:
    """One batch in the submission's layout. rows: inputs/targets [k, T]; flat: [k*T] with `cu_seqlens`."""

    inputs: torch.Tensor
    targets: torch.Tensor
    cu_seqlens: torch.Tensor | None = None

    def call(self, logits_fn: Callable) -> torch.Tensor:
        return logits_fn(self.inputs) if self.cu_seqlens is None else logits_fn(self.inputs, self.cu_seqlens)


def _script_modes() -> list[str]:
    """The torch function / dispatch modes in force now (none of the referee's own), described."""
    found = []
    if torch._C._len_torch_function_stack() > 0:
        found.append("a torch function mode (TorchFunctionMode)")
    if torch._C._len_torch_dispatch_stack() > 0:
        found.append("a torch dispatch mode (TorchDispatchMode)")
    return found


def plain_logits(logits) -> torch.Tensor:
    """The logits as a plain `torch.Tensor` the referee's arithmetic can trust, or a SpeedrunError naming why
    not: a tensor subclass (its `__torch_function__` would run the script's code inside `logsumexp`), or a
    function / dispatch mode of the script's still in force (it would see, and could rewrite, every operation
    the referee makes). Called on whatever `logits_fn` returned, before any arithmetic; the rank reports the
    error and the launcher makes it a problem."""
    if not isinstance(logits, torch.Tensor):
        raise SpeedrunError(f"logits_fn must return a tensor, got {type(logits).__name__}")
    if type(logits) is not torch.Tensor:
        raise SpeedrunError(f"logits_fn returned a {type(logits).__module__}.{type(logits).__qualname__}, a "
                            f"torch.Tensor subclass: the referee computes the loss only from plain tensors")
    modes = _script_modes()
    if modes:
        raise SpeedrunError(f"logits_fn ran under {' and '.join(modes)} of the script's: the referee's arithmetic "
                            f"must not run through the script's code")
    return logits


@contextlib.contextmanager
def referee_arithmetic():
    """No torch function or dispatch mode, whoever pushed it, sees the referee's own operations."""
    from torch.utils._python_dispatch import _disable_current_modes

    with torch._C.DisableTorchFunction(), _disable_current_modes():
        yield


def token_nll(logits: torch.Tensor, targets: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Per-token cross-entropy (nats, float32, shaped like `targets`) from logits [..., V >= vocab_size]."""
    if not isinstance(logits, torch.Tensor):
        raise SpeedrunError(f"logits_fn must return a tensor, got {type(logits).__name__}")
    if tuple(logits.shape[:-1]) != tuple(targets.shape) or logits.shape[-1] < vocab_size:
        raise SpeedrunError(f"logits_fn must return logits of shape {tuple(targets.shape) + ('V',)} with "
                            f"V >= {vocab_size}, got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise SpeedrunError(f"logits_fn must return floating-point logits, got {logits.dtype}")
    V = logits.shape[-1]
    flat, tgt = logits.reshape(-1, V), targets.reshape(-1).to(logits.device)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    step = max(1, CHUNK_BYTES // (4 * V))
    for a in range(0, flat.shape[0], step):
        # log-softmax over every column, then the target's: logsumexp(row) - row[target] (torch.logsumexp itself
        # takes ~2.5x as long on the CPU)
        out[a:a + step] = F.cross_entropy(flat[a:a + step].float(), tgt[a:a + step], reduction="none")
    return out.view(targets.shape)


def _distribution(logits_rows: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim in float64 on the CPU, for a few positions only."""
    return torch.softmax(logits_rows.detach().double().cpu(), dim=-1)


def splice(original: np.ndarray, donor: np.ndarray, j: int) -> np.ndarray:
    """The first j tokens of `original`, then `donor`'s tokens from offset j on (both seq_len + 1 long)."""
    return np.concatenate([original[:j], donor[j:]])


@dataclass
class ProbePlan:
    """Where the extra batch goes and what it holds (drawn from OS randomness per validation)."""

    at: int                                   # inserted before canonical batch `at` (== n_batches: at the end)
    sources: list[tuple[int, int]]            # (canonical batch, row) each extra row copies up to its cut
    cuts: list[int]                           # the cut j of each extra row
    donors: list[int]                         # global val piece supplying the rest of a spliced row
    canary: list[bool]                        # True: the rest is drawn from the val unigram instead
    positions: list[list[int]] = field(default_factory=list)  # distribution positions (< j) per row
    seed: int = 0                             # for the canary draws


def plan_probe(n_batches: int, rows: int, seq_len: int, n_pieces: int, own_piece: Callable[[int, int], int],
               rng: random.Random = _RNG) -> ProbePlan:
    """An extra batch of `rows` rows copied from this rank's canonical rows up to a cut; after the cut, half
    of them (one in two validations when there is a single row) continue with the tokens of another real val
    row, the others with tokens drawn independently from the val set's unigram distribution."""
    if seq_len < 4:
        raise SpeedrunError(f"seq_len {seq_len} is too short for the referee's probes (needs at least 4)")
    everything = [(b, i) for b in range(n_batches) for i in range(rows)]
    sources = rng.sample(everything, rows) if len(everything) >= rows else \
        [everything[rng.randrange(len(everything))] for _ in range(rows)]
    lo, hi = max(2, seq_len // 8), max(3, seq_len - seq_len // 8)
    cuts = [rng.randrange(lo, hi) for _ in sources]
    donors = []
    for b, i in sources:
        mine = own_piece(b, i)
        d = rng.randrange(n_pieces)
        if d == mine and n_pieces > 1:
            d = (d + 1) % n_pieces
        donors.append(d)
    flips = rng.sample(range(rows), rows // 2) if rows > 1 else ([0] if rng.random() < 0.5 else [])
    canary = [i in flips for i in range(rows)]
    # the last position before the cut always (a model peeking one token ahead moves only that one), and a
    # few earlier ones at random
    positions = [sorted({j - 1, *rng.sample(range(j - 1), min(DIST_POSITIONS - 1, j - 1))}) for j in cuts[:DIST_ROWS]]
    return ProbePlan(at=rng.randrange(n_batches + 1), sources=sources, cuts=cuts, donors=donors, canary=canary,
                     positions=positions, seed=rng.getrandbits(63))


def _row(t: torch.Tensor, i: int, seq_len: int, flat: bool) -> torch.Tensor:
    return t[i * seq_len:(i + 1) * seq_len] if flat else t[i]


@dataclass
class Measurement:
    loss_sum: float
    tokens: int
    probe: dict


def _extra_rows(plan: ProbePlan, own_piece, val_piece, unigram: np.ndarray | None) -> list[np.ndarray]:
    draws = np.random.default_rng(plan.seed)
    out = []
    for (b, i), d, j, canary in zip(plan.sources, plan.donors, plan.cuts, plan.canary):
        original = val_piece(own_piece(b, i))
        if canary and unigram is not None:
            tail = draws.choice(len(unigram), size=len(original) - j, p=unigram).astype(original.dtype)
            out.append(np.concatenate([original[:j], tail]))
        else:
            out.append(splice(original, val_piece(d), j))
    return out


def measure(logits_fn: Callable, n_batches: int, rows: int, seq_len: int, flat: bool,
            own_piece: Callable[[int, int], int], val_piece: Callable[[int], np.ndarray],
            make_batch: Callable[[Sequence[np.ndarray]], Batch], vocab_size: int, n_pieces: int,
            plan: ProbePlan | None = None, unigram: np.ndarray | None = None) -> Measurement:
    """`measuring()` driven by a logits_fn in this process (the unrefereed path and the tests)."""
    steps = measuring(n_batches, rows, seq_len, flat, own_piece, val_piece, make_batch, vocab_size, n_pieces,
                      plan, unigram)
    logits = None
    with torch.no_grad():
        while True:
            try:
                batch = steps.send(logits)
            except StopIteration as done:
                return done.value
            logits = batch.call(logits_fn)


def measuring(n_batches: int, rows: int, seq_len: int, flat: bool,
              own_piece: Callable[[int, int], int], val_piece: Callable[[int], np.ndarray],
              make_batch: Callable[[Sequence[np.ndarray]], Batch], vocab_size: int, n_pieces: int,
              plan: ProbePlan | None = None, unigram: np.ndarray | None = None):
    """Run one validation: this rank's canonical batches, with one extra batch among them.

    A generator, so the agent can hand each batch's inputs to a rank and wait for the logits: it yields each
    `Batch` in order and takes its logits through `send()`; its return value (`StopIteration.value`) is the
    `Measurement`. Everything it keeps (targets, the plan, which batch is the extra one) stays in its frame.

    Canonical batch b holds pieces own_piece(b, 0..rows-1); the extra batch is `plan.at`-th and looks like
    any other (real val text up to each cut, the same shape, the same call). `unigram`: the val tokens'
    unigram probabilities, for the rows whose continuation is drawn from it. Returns the float64 sum of
    per-token losses over the canonical batches, their token count, and the measurements the launcher
    judges: how far outputs before the cuts moved, and the loss on unigram-drawn continuations."""
    plan = plan or plan_probe(n_batches, rows, seq_len, n_pieces, own_piece)
    wanted: dict[tuple[int, int], list[int]] = {}
    for p, src in enumerate(plan.sources):
        wanted.setdefault(src, []).append(p)
    order = list(range(n_batches))
    order.insert(plan.at, -1)  # -1: the extra batch, at its place
    kept_nll: dict[int, torch.Tensor] = {}
    kept_dist: dict[int, torch.Tensor] = {}
    extra_nll, extra_dist = None, {}
    total = torch.zeros((), dtype=torch.float64)
    tokens = 0
    shape, dtype = None, None
    for b in order:
        pieces = (_extra_rows(plan, own_piece, val_piece, unigram) if b < 0
                  else [val_piece(own_piece(b, i)) for i in range(rows)])
        batch = make_batch(pieces)
        logits = plain_logits((yield batch))  # the agent's own tensor: refused if not plain
        with torch.no_grad(), referee_arithmetic():
            nll = token_nll(logits, batch.targets, vocab_size)
            if b < 0:
                extra_nll = nll.detach().float().cpu()
                for p, positions in enumerate(plan.positions):
                    extra_dist[p] = _distribution(_row(logits, p, seq_len, flat)[positions])
            else:
                shape, dtype = list(logits.shape), str(logits.dtype)
                total += nll.double().sum().cpu()
                tokens += nll.numel()
                for i in range(rows):
                    for p in wanted.get((b, i), ()):
                        kept_nll[p] = _row(nll, i, seq_len, flat).detach().float().cpu()
                        if p < len(plan.positions):
                            kept_dist[p] = _distribution(_row(logits, i, seq_len, flat)[plan.positions[p]])
            del logits, nll
    if not torch.isfinite(total):
        raise SpeedrunError("the model's val loss is not finite (non-finite logits?)")
    nll_diff, dist_diff = 0.0, 0.0
    canary = torch.zeros(3, dtype=torch.float64)  # count, sum, sum of squares
    for p, j in enumerate(plan.cuts):
        mine = _row(extra_nll, p, seq_len, flat)
        if j > 1:
            nll_diff = max(nll_diff, float((mine[:j - 1] - kept_nll[p][:j - 1]).abs().max()))
        if p in extra_dist:
            dist_diff = max(dist_diff, float(0.5 * (extra_dist[p] - kept_dist[p]).abs().sum(-1).max()))
        if plan.canary[p] and unigram is not None:
            tail = mine[j - 1:].double()  # targets j .. seq_len: the drawn tokens
            canary += torch.stack([torch.tensor(float(tail.numel()), dtype=torch.float64), tail.sum(),
                                   (tail * tail).sum()])
    if not (np.isfinite(nll_diff) and np.isfinite(dist_diff)):
        nll_diff = dist_diff = float("inf")
    probe = {"rows": len(plan.cuts), "nll_diff": nll_diff, "dist_diff": dist_diff,
             "logits_shape": shape or [], "logits_dtype": dtype or "",
             "canary_tokens": int(canary[0]), "canary_nll_sum": float(canary[1]), "canary_nll_sq": float(canary[2])}
    return Measurement(float(total), tokens, probe)


def start_loss(logits_fn: Callable, batch: Batch, vocab_size: int) -> tuple[float, int]:
    """Sum and count of per-token losses on one batch (the start check's fixed val subset)."""
    with torch.no_grad():
        logits = plain_logits(batch.call(logits_fn))
        with referee_arithmetic():
            nll = token_nll(logits, batch.targets, vocab_size)
            return float(nll.double().sum()), nll.numel()
