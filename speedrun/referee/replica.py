"""The replica check: the scored logits against the same model loaded afresh, without the tokens that follow.

Why. A `logits_fn` that reads a row's next tokens from its inputs ("peeks") scores lower than any causal
model. In one process a script can remember every row it is shown, so probes shown to it (`evaluation`) can be
answered consistently and bound a peek only statistically (the blind gap: tens of millinats on tiny). A second
process can: it never sees the scored rows.

How. At `finish()`, with the clock stopped and before any scored row is handed out, the rank hands the referee
the state of the model it gave to `warmup()` (the "seal"; `Run.finish`). During the scored validation the
agent keeps the loss the script's logits give at `REPLICA_ROWS` positions (piece q, position j: the prediction
of the piece's token j + 1 from its tokens 0..j) drawn from the operating system's randomness, which the script
never learns. After the repetitions the launcher starts the script once more, in a fresh sandbox, as a
replica: it runs from its first line to `start()`, where the referee loads each repetition's sealed state into
the model given to `warmup()` and hands it copies of those rows cut after token j (the rest drawn from the val
unigram), in batches of the scored validation's shape. Its prediction at j is scored against token j + 1,
which that process has never been given, and compared with the scored one:

    d = replica loss - scored loss        (per position; 0 up to rounding for a causal model)

A causal model gives the same logits for the same prefix, so d is 0 up to floating-point rounding. A peek in
the scored validation makes d positive at every position it touched, and the scored process cannot know which
positions are checked (it never sees the copies), nor can the replica know the tokens it would need to match
the peek (it never sees the rows' rest). Remembering does not help either process: what each would have to
remember, it was never shown. `speedrun.judge.stats.replica_gap` turns the sums into a verdict.

Nothing here reads files or talks to a rank: the agent (`speedrun.referee.agent`) drives it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

REPLICA_ROWS = 1024            # checked positions a repetition, over all ranks
_RNG = random.SystemRandom()


def choose(pieces: Sequence[int], seq_len: int, world_size: int, rows: int,
           rng: random.Random = _RNG) -> dict[int, int]:
    """Positions to check on one rank: piece -> j (0 <= j < seq_len), distinct pieces drawn from `pieces` (the
    rank's scored pieces), as many as fill whole batches of `rows` up to this rank's share of `REPLICA_ROWS`."""
    want = -(-REPLICA_ROWS // max(1, world_size))
    want = min(len(pieces), -(-want // rows) * rows)
    return {int(q): rng.randrange(seq_len) for q in rng.sample(list(pieces), want)}


@dataclass
class Pairs:
    """One rank's checked positions in one repetition: the scored losses (`live`), then the replica's."""

    shape: tuple[int, int, str]                       # the scored validation's (batch_tokens, seq_len, layout)
    rows: int                                         # rows a batch of that shape holds on this rank
    live: dict[int, tuple[int, float]] = field(default_factory=dict)  # piece -> (j, scored loss at j)
    replica: dict[int, float] = field(default_factory=dict)           # piece -> the replica's loss at j

    def sums(self) -> dict:
        """Count, sum and sum of squares of d, its largest size, and the two losses' sums."""
        d = np.array([self.replica[q] - self.live[q][1] for q in self.replica], dtype=np.float64)
        live = np.array([self.live[q][1] for q in self.replica], dtype=np.float64)
        return {"positions": int(d.size), "d_sum": float(d.sum()), "d_sq": float((d * d).sum()),
                "d_max": float(np.abs(d).max()) if d.size else 0.0, "live_sum": float(live.sum()),
                "replica_sum": float(live.sum() + d.sum())}


def batches(pairs: Pairs, val_piece: Callable[[int], np.ndarray], unigram: np.ndarray,
            make_batch: Callable[[list[np.ndarray]], "object"], rng: np.random.Generator):
    """The replica's batches: each row a checked piece's tokens 0..j, then tokens drawn from the unigram (so
    nothing of the piece after j is shown). A generator of (batch, [(row, piece, j, token j + 1)])."""
    items = list(pairs.live.items())
    for a in range(0, len(items), pairs.rows):
        chunk = items[a:a + pairs.rows]
        rows, marks = [], []
        for i, (q, (j, _)) in enumerate(chunk):
            text = val_piece(q)
            tail = rng.choice(len(unigram), size=len(text) - j - 1, p=unigram).astype(text.dtype)
            rows.append(np.concatenate([text[:j + 1], tail]))
            marks.append((i, q, j, int(text[j + 1])))
        while len(rows) < pairs.rows:  # a short last batch: filled with unigram rows, not scored
            rows.append(rng.choice(len(unigram), size=len(rows[0]), p=unigram).astype(rows[0].dtype))
        yield make_batch(rows), marks


def losses_at(logits: torch.Tensor, seq_len: int, marks: list[tuple[int, int, int, int]]) -> list[float]:
    """The loss of each mark's token at its (row, j), from a batch's logits ([rows, T, V] or [rows * T, V]),
    computed in float64 over every column."""
    flat = logits.reshape(-1, logits.shape[-1])
    at = flat[[i * seq_len + j for i, _, j, _ in marks]].double().cpu()
    out = torch.logsumexp(at, -1) - at[torch.arange(len(marks)), [t for *_, t in marks]]
    return [float(x) for x in out]
