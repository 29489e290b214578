"""How the referee measures a model: cross-entropy from its logits, and probes hidden among the val batches.

The submission hands the referee a function from inputs to logits; everything else happens here:

- Loss. For every canonical val batch the referee calls `logits_fn`, then computes each token's cross-entropy
  itself, `logsumexp(logits) - logits[target]`, over *all* columns the model returns (padding the vocabulary
  can only add probability mass it wastes), in float32 chunks of rows, so a [65,536 x 50,304] bf16 batch never
  needs a float32 copy of itself and the 10,485,760 val tokens of gpt2-small are never all in memory. Sums are
  accumulated in float64. The rank's pieces come in an order drawn afresh for each validation (a piece's
  neighbours in a batch are not the text that follows it); the sum is the same in any order.
- Probes. Extra batches of the same shape, at random places among the canonical batches, hold copies of
  this rank's own val rows cut at a random position j, each copied from a row that comes *later*: half of
  them take the rest from another of the rank's val rows at the same offsets (`splice`), the others from
  tokens drawn independently from the val set's unigram distribution ("canaries"). Three measurements:
  * Pairs. A causal model that does not change during validation gives exactly the same outputs before
    position j for the copy as for the original. The referee reports how far they moved: per-token losses
    before j - 1 (`nll_diff`; the loss at j - 1 scores a different target) and whole predicted distributions
    at j - 1 and a few positions before it (`dist_diff`, total variation).
  * Canaries. On the drawn tokens no model can do better in expectation than the unigram entropy (each token
    is independent of everything before it), while a model that sees the next token scores far below.
  * Blind positions. When a copy is answered, the token that really follows its position j - 1 (the
    original's token j) has not been shown to the rank: the copy's prediction there, scored against that
    token, is what the model can do without seeing it. Over many copies their mean is, for any causal model,
    the mean canonical loss at the same positions (the copied rows are a uniform draw), whatever the model
    remembers. A model that reads targets from its inputs scores the canonical rows lower than it can score
    blind: the referee reports the gaps (blind minus canonical mean at that position) with each blind token's
    unigram and bigram surprisals (less their means over the canonical targets: covariates that depend on the
    tokens alone, which take much of the spread out of the gaps; `speedrun.referee.surprisal`), and the
    launcher judges their adjusted mean against its standard error (`verify` again with all repetitions
    pooled). Pairs can be kept consistent by a script that remembers every row it was shown and answers a
    row's copy and original alike; the blind gap cannot be argued away that way. Its reach is statistical:
    `BLIND_ROWS` copies (a row copied twice at most, at a later cut the second time) bound what a peek can
    hide to a few standard errors of a per-token loss over their number. What a single process cannot do,
    the replica check does after the run (`speedrun.referee.replica`, fed by `keep`): the same model loaded
    afresh in a second process that never sees the rows' rest must repeat the scored losses at secret
    positions, exactly, so a peek there shows at every position it touches, not as a mean against noise.
  The launcher judges them. The extra batches are real val text up to each cut, have the canonical shape and
  arrive through the same call; their places and contents are drawn from the operating system's randomness,
  not from the run's seed.

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
from speedrun.judge import stats
from speedrun.referee import replica
from speedrun.referee.surprisal import Surprisal

CHUNK_BYTES = 1 << 28            # float32 bytes per chunk of rows when computing the loss
DIST_ROWS = 8                    # spliced rows whose whole distributions are compared
DIST_POSITIONS = 4               # positions per such row
BLIND_ROWS = 8192                # copies (blind positions) a scored validation gathers over all ranks (at most
                                 # COPIES per canonical row)
COPIES = 2                       # copies of one row at most (at distinct ascending cuts: each blind at its own)
MIN_ROWS = 512                   # rows the scored tokens must be cut into, at least (`min_rows`)
_RNG = random.SystemRandom()


def min_rows(val_tokens: int) -> int:
    """The fewest rows a validation shape may cut `val_tokens` scored tokens into: each row gives the blind
    probe `COPIES` positions at most, and a script choosing very long rows would otherwise leave it too few to
    judge. `MIN_ROWS` (tiny: rows of at most 512 tokens; gpt2-small: 20,480), fewer for a scored split too small
    to hold that many rows of 512 tokens (the test suite's tracks)."""
    return max(1, min(MIN_ROWS, val_tokens // 512))


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
    """Where the extra batches go, what they hold, and the order of the canonical rows (OS randomness, drawn
    afresh for each validation). Extra row r belongs to extra batch r // rows; canonical batch b, row i holds
    the rank's piece at stream slot `order[b * rows + i]` (`piece()`)."""

    at: list[int]                             # extra batch e goes before canonical batch at[e] (sorted)
    sources: list[tuple[int, int]]            # (canonical batch, row) each extra row copies up to its cut
    cuts: list[int]                           # the cut j of each extra row
    donors: list[int]                         # the rank's val piece supplying the rest of a spliced row
    canary: list[bool]                        # True: the rest is drawn from the val unigram instead
    order: list[int]                          # canonical slot b * rows + i -> the stream's slot shown there
    positions: list[list[int]] = field(default_factory=list)  # distribution positions (< j) per row
    seed: int = 0                             # for the canary draws

    def piece(self, own_piece: Callable[[int, int], int], rows: int, b: int, i: int) -> int:
        """The global val piece at canonical batch b, row i."""
        return own_piece(*divmod(self.order[b * rows + i], rows))


def plan_probe(n_batches: int, rows: int, seq_len: int, own_piece: Callable[[int, int], int],
               rng: random.Random = _RNG, extra: int = 1) -> ProbePlan:
    """`extra` batches of `rows` rows (at most `COPIES` x `n_batches`), each row copied up to a cut from one of
    this rank's canonical rows that comes after its batch, distinct within a batch; a row is copied at most
    ceil(extra / n_batches) times, at cuts that ascend in the order the copies are shown (so each copy's next
    token is still unseen). After the cut, half of them (one in two validations when there is a single row)
    continue with the tokens of another of the rank's val rows, the others with tokens drawn independently
    from the val set's unigram distribution. The donors are the rank's own pieces: no other rank's copy shows
    a source's text."""
    if seq_len < 4:
        raise SpeedrunError(f"seq_len {seq_len} is too short for the referee's probes (needs at least 4)")
    if n_batches < 1 or rows < 1:
        raise SpeedrunError(f"a validation of {n_batches} batch(es) of {rows} row(s) cannot hold a probe")
    total = n_batches * rows
    order = list(range(total))
    rng.shuffle(order)
    # random places, the k-th latest no later than k // c batches from the end: then each extra batch, latest
    # first, finds `rows` rows after it copied fewer than c times (it takes the least copied)
    m = max(1, min(extra, COPIES * n_batches))
    c = -(-m // n_batches)
    drawn = sorted((rng.randrange(n_batches) for _ in range(m)), reverse=True)
    at = sorted(min(a, n_batches - 1 - k // c) for k, a in enumerate(drawn))
    used = [0] * total
    picked: dict[int, list[int]] = {}
    for e in reversed(range(m)):
        fresh = [s for s in range(at[e] * rows, total) if used[s] < c]
        rng.shuffle(fresh)
        fresh.sort(key=lambda s: used[s])  # stable: at random among the rows copied as often
        if len(fresh) < rows:
            raise SpeedrunError(f"probe plan: {len(fresh)} rows to copy after batch {at[e]}, {rows} needed")
        picked[e] = fresh[:rows]
        for s in picked[e]:
            used[s] += 1
    slots = [s for e in range(m) for s in picked[e]]
    sources = [divmod(s, rows) for s in slots]
    # cuts anywhere in the row (a copy cut at seq_len is the whole row): the blind positions j - 1 then cover
    # every position, and no stretch of a row is left where a peek would go unmeasured. The copies of one row
    # get distinct cuts, ascending in the order they are shown (extra batch e before e + 1)
    cuts = [0] * len(slots)
    copies_of: dict[int, list[int]] = {}
    for r, s in enumerate(slots):
        copies_of.setdefault(s, []).append(r)
    for rs in copies_of.values():
        for r, j in zip(rs, sorted(rng.sample(range(1, seq_len + 1), len(rs)))):
            cuts[r] = j
    # a donor is a row already shown when its copy comes, else (an extra batch before the first canonical one)
    # a row no copy at or after it is made of: its tail shows the rank nothing a copy still needs, so every
    # source's token after its cut stays unseen until its next copy or the source itself. Where no such row
    # is left (every row copied from then on), the copy's rest is drawn from the unigram instead
    last: dict[int, int] = {}
    for e in range(m):
        for s in picked[e]:
            last[s] = e
    donors, forced = [], set()
    for e, a in enumerate(at):
        safe = [] if a else [s for s in range(total) if last.get(s, -1) < e]
        for i in range(rows):
            d = rng.randrange(a * rows) if a else safe[rng.randrange(len(safe))] if safe else rng.randrange(total)
            if not a and not safe:
                forced.add(e * rows + i)
            donors.append(own_piece(*divmod(order[d], rows)))
    n = len(sources)
    flips = set(rng.sample(range(n), n // 2)) if n > 1 else ({0} if rng.random() < 0.5 else set())
    canary = [r in flips or r in forced for r in range(n)]
    # the last position before the cut always (a model peeking one token ahead moves only that one), and a
    # few earlier ones at random
    positions = [sorted({j - 1, *rng.sample(range(j - 1), min(DIST_POSITIONS - 1, j - 1))}) for j in cuts[:DIST_ROWS]]
    return ProbePlan(at=at, sources=sources, cuts=cuts, donors=donors, canary=canary, order=order,
                     positions=positions, seed=rng.getrandbits(63))


def _row(t: torch.Tensor, i: int, seq_len: int, flat: bool) -> torch.Tensor:
    return t[i * seq_len:(i + 1) * seq_len] if flat else t[i]


@dataclass
class Measurement:
    loss_sum: float
    tokens: int
    probe: dict
    kept: dict = field(default_factory=dict)  # piece -> (j, its loss at j): the replica check's scored side


def _extra_rows(plan: ProbePlan, e: int, rows: int, piece, val_piece, unigram: np.ndarray | None
                ) -> list[np.ndarray]:
    """The rows of extra batch `e`: each source's piece up to its cut, then a donor's tail or unigram draws."""
    draws = np.random.default_rng([plan.seed, e])
    out = []
    for r in range(e * rows, (e + 1) * rows):
        original, j = val_piece(piece(*plan.sources[r])), plan.cuts[r]
        if plan.canary[r] and unigram is not None:
            tail = draws.choice(len(unigram), size=len(original) - j, p=unigram).astype(original.dtype)
            out.append(np.concatenate([original[:j], tail]))
        else:
            out.append(splice(original, val_piece(plan.donors[r]), j))
    return out


class _Shown:
    """Which tokens of which pieces the rank has been shown so far in this validation: a piece's prefix (from
    a copy, or the whole of it from its canonical row) and its tail from some offset on (as a splice's donor).
    A copy's position j - 1 is blind while the original's token j is in neither."""

    def __init__(self):
        self.prefix: dict[int, int] = {}
        self.tail: dict[int, int] = {}

    def add_prefix(self, piece: int, length: int) -> None:
        self.prefix[piece] = max(self.prefix.get(piece, 0), length)

    def add_tail(self, piece: int, offset: int) -> None:
        self.tail[piece] = min(self.tail.get(piece, offset), offset)

    def seen(self, piece: int, j: int) -> bool:
        return j < self.prefix.get(piece, 0) or j >= self.tail.get(piece, j + 1)


def measure(logits_fn: Callable, n_batches: int, rows: int, seq_len: int, flat: bool,
            own_piece: Callable[[int, int], int], val_piece: Callable[[int], np.ndarray],
            make_batch: Callable[[Sequence[np.ndarray]], Batch], vocab_size: int,
            plan: ProbePlan | None = None, unigram: np.ndarray | None = None, extra: int = 1,
            surprisal: Surprisal | None = None, keep: dict[int, int] | None = None) -> Measurement:
    """`measuring()` driven by a logits_fn in this process (the unrefereed path and the tests)."""
    steps = measuring(n_batches, rows, seq_len, flat, own_piece, val_piece, make_batch, vocab_size, plan, unigram,
                      extra, surprisal, keep)
    logits = None
    with torch.no_grad():
        while True:
            try:
                batch = steps.send(logits)
            except StopIteration as done:
                return done.value
            logits = batch.call(logits_fn)


def extra_batches(n_batches: int, rows: int, world_size: int, blind_rows: int = BLIND_ROWS) -> int:
    """Extra batches for `blind_rows` copies over all ranks (at least one; at most `COPIES` x the canonical
    ones, so a validation at most triples)."""
    per_rank = -(-blind_rows // max(1, world_size))
    return max(1, min(COPIES * n_batches, -(-per_rank // max(1, rows))))


def measuring(n_batches: int, rows: int, seq_len: int, flat: bool,
              own_piece: Callable[[int, int], int], val_piece: Callable[[int], np.ndarray],
              make_batch: Callable[[Sequence[np.ndarray]], Batch], vocab_size: int,
              plan: ProbePlan | None = None, unigram: np.ndarray | None = None, extra: int = 1,
              surprisal: Surprisal | None = None, keep: dict[int, int] | None = None):
    """Run one validation: this rank's canonical batches, with `extra` probe batches among them.

    A generator, so the agent can hand each batch's inputs to a rank and wait for the logits: it yields each
    `Batch` in order and takes its logits through `send()`; its return value (`StopIteration.value`) is the
    `Measurement`. Everything it keeps (targets, the plan, which batches are extra) stays in its frame.

    Canonical batch b holds the pieces `plan.piece(own_piece, rows, b, 0..rows-1)` (the rank's pieces,
    own_piece(b, i) in the stream's order, shuffled); extra batch e goes before canonical batch `plan.at[e]`
    and looks like any other (real val text up to each cut, the same shape, the same call). `unigram`: the
    val tokens' unigram probabilities, for the rows whose continuation is drawn from it. `surprisal`: the blind
    gaps' covariates (the scored validation's, the one judged on them; without it they are 0). Returns the float64
    sum of per-token losses over the canonical batches, their token count, and the measurements the launcher
    judges: how far outputs before the cuts moved, the loss on unigram-drawn continuations, and the gaps
    between blind and canonical losses. `keep`: piece -> position j whose loss (on the piece's token j + 1) the
    replica check compares later (`speedrun.referee.replica`), returned as `Measurement.kept`."""
    keep = keep or {}
    kept: dict[int, tuple[int, float]] = {}
    plan = plan or plan_probe(n_batches, rows, seq_len, own_piece, extra=extra)

    def piece(b: int, i: int) -> int:
        return plan.piece(own_piece, rows, b, i)

    wanted: dict[tuple[int, int], list[int]] = {}
    for p, src in enumerate(plan.sources):
        wanted.setdefault(src, []).append(p)
    order: list[tuple[str, int]] = []
    for b in range(n_batches):
        order += [("extra", e) for e, a in enumerate(plan.at) if a == b] + [("canonical", b)]
    kept_nll: dict[int, torch.Tensor] = {}
    kept_dist: dict[int, torch.Tensor] = {}
    extra_nll: dict[int, torch.Tensor] = {}
    extra_dist: dict[int, torch.Tensor] = {}
    # extra row -> (its loss at j - 1, the original's tokens j - 1 and j)
    blind: dict[int, tuple[float, int, int]] = {}
    shown = _Shown()
    own = {piece(b, i) for b in range(n_batches) for i in range(rows)}
    pos_sum = torch.zeros(seq_len, dtype=torch.float64)  # canonical losses by position, summed over rows
    total = torch.zeros((), dtype=torch.float64)
    tokens = 0
    shape, dtype = None, None
    for kind, b in order:
        if kind == "extra":
            pieces = _extra_rows(plan, b, rows, piece, val_piece, unigram)
            mine = range(b * rows, (b + 1) * rows)
            for r in mine:
                shown.add_prefix(piece(*plan.sources[r]), plan.cuts[r])
                if not plan.canary[r] or unigram is None:
                    shown.add_tail(plan.donors[r], plan.cuts[r])
        else:
            ids = [piece(b, i) for i in range(rows)]
            pieces = [val_piece(q) for q in ids]
            for q in ids:
                shown.add_prefix(q, seq_len + 1)
        batch = make_batch(pieces)
        logits = plain_logits((yield batch))  # the agent's own tensor: refused if not plain
        with torch.no_grad(), referee_arithmetic():
            nll = token_nll(logits, batch.targets, vocab_size)
            if kind == "extra":
                # (extra row, its original's tokens j - 1 and j, the cut's flat position) of blind copies
                cuts_seen = []
                for r in mine:
                    local, q, j = r - b * rows, piece(*plan.sources[r]), plan.cuts[r]
                    extra_nll[r] = _row(nll, local, seq_len, flat).detach().float().cpu()
                    if r < len(plan.positions):
                        extra_dist[r] = _distribution(_row(logits, local, seq_len, flat)[plan.positions[r]])
                    # token seq_len of a piece is the next piece's first: unseen only if that piece is this
                    # rank's own and not shown yet (another rank's pieces go to a script that may share them)
                    unseen = not shown.seen(q, j) if j < seq_len else (q + 1 in own and not shown.seen(q + 1, 0))
                    if unseen:
                        text = val_piece(q)
                        cuts_seen.append((r, int(text[j - 1]), int(text[j]), local * seq_len + j - 1))
                if cuts_seen:  # the blind copies' predictions at their cuts, in one gather and one copy
                    at_cut = logits.reshape(-1, logits.shape[-1])[[c[-1] for c in cuts_seen]].double().cpu()
                    losses = torch.logsumexp(at_cut, -1) - at_cut[torch.arange(len(cuts_seen)),
                                                                   [c[2] for c in cuts_seen]]
                    blind.update({r: (float(loss), a, t) for (r, a, t, _), loss in zip(cuts_seen, losses)})
            else:
                shape, dtype = list(logits.shape), str(logits.dtype)
                total += nll.double().sum().cpu()
                tokens += nll.numel()
                pos_sum += nll.detach().double().cpu().reshape(rows, seq_len).sum(0)
                marks = [(i, q, keep[q], int(p[keep[q] + 1])) for i, (q, p) in enumerate(zip(ids, pieces))
                         if q in keep]
                if marks:
                    kept.update({q: (j, loss) for (_, q, j, _), loss in
                                 zip(marks, replica.losses_at(logits, seq_len, marks))})
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
        mine = extra_nll[p]
        if j > 1:
            nll_diff = max(nll_diff, float((mine[:j - 1] - kept_nll[p][:j - 1]).abs().max()))
        if p in extra_dist:
            dist_diff = max(dist_diff, float(0.5 * (extra_dist[p] - kept_dist[p]).abs().sum(-1).max()))
        if plan.canary[p] and unigram is not None:
            tail = mine[j - 1:].double()  # targets j .. seq_len: the drawn tokens
            canary += torch.stack([torch.tensor(float(tail.numel()), dtype=torch.float64), tail.sum(),
                                   (tail * tail).sum()])
    gaps = np.array([loss - float(pos_sum[plan.cuts[r] - 1]) / (n_batches * rows)
                     for r, (loss, _, _) in blind.items()], dtype=np.float64)
    # covariates of the loss the model cannot touch (the tokens' surprisals, centred on the scored targets):
    # they take much of the token-to-token spread out of the gaps
    x = np.zeros((len(gaps), 2))
    if surprisal is not None and len(gaps):
        x = surprisal.of([a for _, a, _ in blind.values()], [t for _, _, t in blind.values()])
    if not (np.isfinite(nll_diff) and np.isfinite(dist_diff)):
        nll_diff = dist_diff = float("inf")
    probe = {"rows": len(plan.cuts), "nll_diff": nll_diff, "dist_diff": dist_diff,
             "logits_shape": shape or [], "logits_dtype": dtype or "",
             "canary_tokens": int(canary[0]), "canary_nll_sum": float(canary[1]), "canary_nll_sq": float(canary[2]),
             **stats.blind_sums(gaps, x)}
    return Measurement(float(total), tokens, probe, kept)


def start_loss(logits_fn: Callable, batch: Batch, vocab_size: int) -> tuple[float, int]:
    """Sum and count of per-token losses on one batch (the start check's fixed val subset)."""
    with torch.no_grad():
        logits = plain_logits(batch.call(logits_fn))
        with referee_arithmetic():
            nll = token_nll(logits, batch.targets, vocab_size)
            return float(nll.double().sum()), nll.numel()
