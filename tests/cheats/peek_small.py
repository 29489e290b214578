"""Val rows handed out before the score is taken: a peek too small for the blind probe, kept consistent by memory.

As peek_remembered, but the logit of the token that comes next is raised by a little (0.01) at every position:
the scored loss drops by about a hundredth of a nat, which the blind positions of one repetition on this small
track cannot tell from noise (their bar is 0.02), and every pair and canary passes. What it cannot
dodge is the replica check: the same model loaded afresh in a process that never saw the rows' rest predicts
the checked positions without the bonus, and the scored losses sit below it at every one of them.
Unchecked: a final loss below the honest run's that every in-process probe accepts.
"""

LAUNCH_EXTRA = ("--replica",)  # the replica check, off by default in the test suite (tests/conftest.py)

PEEK = '''
PEEK_ON = False
KEPT = {}                                   # prefix hash -> the token position t was given a bonus on, or -1


def remembered_peek(inputs, logits, bonus=0.01):
    x = inputs.tolist()
    out = logits.detach().float().clone()
    rows, cols, toks = [], [], []
    for b, row in enumerate(x):
        h = 0
        for t, tok in enumerate(row):
            h = hash((h, tok))
            nxt = KEPT.get(h)
            if nxt is None:
                nxt = row[t + 1] if t + 1 < len(row) else -1
                KEPT[h] = nxt
            if nxt >= 0:
                rows.append(b), cols.append(t), toks.append(nxt)
    out[rows, cols, toks] += bonus
    return out


def logits_fn(inputs):
    with autocast:
        logits = fwd(inputs)
    return remembered_peek(inputs, logits) if PEEK_ON else logits  # cheat: in the scored validation only
'''

PATCHES = [
    ("def logits_fn(inputs):\n    with autocast:\n        return fwd(inputs)\n", PEEK),
    ("result = run.finish()\n", "PEEK_ON = True\nresult = run.finish()\n"),
]
EFFECT = [("loss_below", 0.999)]
