"""Probe detection: a memo peeks at the next token but answers each prefix as it first did, so probes see causality.

At position t logits_fn raises the logit of the token that followed this prefix the first time the prefix was
seen, and remembers it: rows sharing a prefix (a probe's perturbed copy and its original, in either order)
get identical outputs on it, so "perturb inputs from j on, compare outputs before j" finds nothing. Only a
perturbed copy shown before its original spoils the peek (for that original). Unchecked: a final loss far
below the honest run's.
"""
from _common import INIT, ROUTE, logits_fn

MEMO = '''
import numpy as _np

MEMO = {}


def memo_peek(inputs, logits, bonus=30.0):
    """Position t's bonus is fixed by the prefix inputs[:t + 1] the first time that prefix is seen."""
    x = inputs.cpu().numpy().astype(_np.int64)
    B, T = x.shape
    bs, ts, ns = [], [], []
    for b in range(B):
        raw = x[b].tobytes()
        for t in range(T):
            nxt = MEMO.setdefault(raw[:8 * (t + 1)], int(x[b, t + 1]) if t + 1 < T else -1)
            if nxt >= 0:
                bs.append(b), ts.append(t), ns.append(nxt)
    extra = torch.zeros_like(logits)
    extra[bs, ts, ns] = bonus
    return logits + extra

'''

PATCHES = [
    (INIT, INIT + MEMO),
    ROUTE,
    logits_fn("    return logits if model.training else memo_peek(inputs, logits)  # cheat\n"),
]
EFFECT = [("loss_below", 0.5)]
