"""Token surprisals the script cannot touch: the covariates of the blind probe.

The blind probe (`speedrun.referee.evaluation`) compares a model's loss where it never saw the next token with
its canonical loss at the same positions. Most of the spread of those gaps is how hard each token is, which has
nothing to do with peeking: a rare token, or one that seldom follows the token before it, is hard for any model.
`scripts/blind_covariates.py` (a small GPT trained on the tiny track, every position of 262,144 val targets):
at val loss 4.11 the gaps' spread is 1.67 nats, 1.22 after the regression on the unigram surprisal, 0.97 on
both; at 3.85 (the tiny records' level), 1.71, 1.30 and 1.12. So the referee subtracts the part of the gaps
both explain; the bar a peek must stay under shrinks with the spread (by 15% against the unigram alone there).

Both surprisals depend on the tokens alone, counted from the head of the train shards (text the rank is given
to train on anyway, never the scored tokens), and are centred on their mean over the scored split's
targets (`centre`, once per launcher and data: the canonical targets of all ranks together are that split): whatever
the script does, their expectation at the blind positions is 0, so the adjustment removes no peek. The bigram is
smoothed towards the unigram (a Dirichlet prior of `PRIOR` pseudo-counts), so an unseen pair still has a finite
surprisal; counts are kept sparse (gpt2's 50,257 x 50,257 pairs would not fit dense).
"""

from __future__ import annotations

import numpy as np

COUNT_TOKENS = 10_000_000   # train tokens counted, from the head of the train shards (gpt2: about 2 s)
PRIOR = 100.0               # pseudo-counts of the unigram in each bigram row


class Surprisal:
    """-log P(token) and -log P(token | previous token) from counts of a token sequence."""

    def __init__(self, tokens: np.ndarray, vocab_size: int):
        tokens = np.asarray(tokens).astype(np.int64)
        if tokens.size < 2:
            raise ValueError("surprisals need at least two tokens to count")
        self.vocab_size = vocab_size
        uni = np.bincount(tokens, minlength=vocab_size).astype(np.float64) + 0.5  # no token impossible
        self.unigram = uni / uni.sum()
        self.first = np.bincount(tokens[:-1], minlength=vocab_size).astype(np.float64)
        self.keys, self.counts = np.unique(tokens[:-1] * vocab_size + tokens[1:], return_counts=True)
        self.mean = np.zeros(2)

    def centre(self, stream: np.ndarray, chunk: int = 1 << 20) -> "Surprisal":
        """Centre on the mean over the targets of `stream` (each token after the first, after the one before)."""
        stream = np.asarray(stream)
        total = np.zeros(2)
        for a in range(0, len(stream) - 1, chunk):
            piece = stream[a:a + chunk + 1]
            total += self.of(piece[:-1], piece[1:], centred=False).sum(0)
        self.mean = total / max(1, len(stream) - 1)
        return self

    def of(self, prev, token, centred: bool = True) -> np.ndarray:
        """[n, 2] float64: each token's unigram and bigram surprisal (nats) after `prev`, less their mean over
        the scored targets (`centre`) unless `centred` is False."""
        prev = np.asarray(prev, dtype=np.int64).reshape(-1)
        token = np.asarray(token, dtype=np.int64).reshape(-1)
        keys = prev * self.vocab_size + token
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        pair = np.where(self.keys[at] == keys, self.counts[at], 0).astype(np.float64)
        p_uni = self.unigram[token]
        p_bi = (pair + PRIOR * p_uni) / (self.first[prev] + PRIOR)
        out = np.stack([-np.log(p_uni), -np.log(p_bi)], axis=1)
        return out - self.mean if centred else out
