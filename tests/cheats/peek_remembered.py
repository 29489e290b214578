"""Val rows handed out before the score is taken, within the final validation: a peek kept consistent by memory.

The scored validation after finish() hands the rank rows it has never seen. A val row holds its own next tokens
(targets[t] == inputs[t + 1]), so logits_fn raises the logit of the token that comes next. Two things would give
it away, and it dodges both:
- the probes' pairs (a copy of a row up to a cut, and the row itself): it keeps, by prefix, the first answer it
  gave at each position (whether it peeked, and at which token), and repeats it for any later row with that
  prefix, so copy and original always agree before the cut, whichever comes first;
- the canaries (a copy continued by tokens drawn from the unigram): it peeks only at transitions it has seen at
  least twice in the rows shown so far, which the chain's transitions soon are and random draws almost never.
Unchecked: a final loss far below the honest run's, every pair and canary passing.
"""
from _common import RECORD

BASE = RECORD

PEEK = '''
PEEK_ON = False
KEPT = {}                                   # prefix hash -> the token position t was given a bonus on, or -1
SEEN = __import__("collections").Counter()  # transitions (a, b) in the rows shown so far


def remembered_peek(inputs, logits, bonus=6.0):
    x = inputs.tolist()
    out = logits.detach().float().clone()
    rows, cols, toks = [], [], []
    for b, row in enumerate(x):
        h = 0
        for t, tok in enumerate(row):
            h = hash((h, tok))
            nxt = KEPT.get(h)
            if nxt is None:
                follow = row[t + 1] if t + 1 < len(row) else None
                nxt = follow if follow is not None and SEEN[(tok, follow)] >= 2 else -1
                KEPT[h] = nxt
            if nxt >= 0:
                rows.append(b), cols.append(t), toks.append(nxt)
    out[rows, cols, toks] += bonus
    for row in x:
        SEEN.update(zip(row[:-1], row[1:]))
    return out


def logits_fn(inputs):  # the referee computes the cross-entropy from these logits
    with autocast:
        logits = fwd(inputs)
    return remembered_peek(inputs, logits) if PEEK_ON else logits  # cheat: in the scored validation only
'''

PATCHES = [
    ("def logits_fn(inputs):  # the referee computes the cross-entropy from these logits\n"
     "    with autocast:\n        return fwd(inputs)\n", PEEK),
    ("result = run.finish()\n", "PEEK_ON = True\nresult = run.finish()\n"),
]
EFFECT = [("loss_below", 0.9)]
