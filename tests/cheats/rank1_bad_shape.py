"""Rank asymmetry, robustness: rank 1 returns a wrong-shaped output in the middle of validation and dies.

Rank 0 validates honestly; on rank 1 the second validation batch gets losses/logits one position short. No
gain: the referee must stop the run with a reason that names rank 1 and the shape, and must never hang
(rank 0 is left waiting in a collective).
"""
from _common import INIT, LOSS_DEF, LOSS_RETURN, logits_fn

BAD = '''

VAL_CALLS = [0]


def wrong_now():
    """True on rank 1 at the second call in eval mode: the middle of the first validation."""
    if run.rank != 1 or model.training:
        return False
    VAL_CALLS[0] += 1
    return VAL_CALLS[0] == 2

'''

PATCHES = [
    (INIT, INIT + BAD),
    (LOSS_DEF + "    with autocast:\n        logits = fwd(inputs)\n    return F.cross_entropy(",
     LOSS_DEF + "    with autocast:\n        logits = fwd(inputs)\n    losses = F.cross_entropy("),
    (LOSS_RETURN + "\n", LOSS_RETURN + "\n    return losses[:, :-1] if wrong_now() else losses  # cheat\n"),
    logits_fn("    return logits[:, :-1] if wrong_now() else logits  # cheat\n"),
]
EFFECT = [("finishes_within", 90)]
