"""Val rows handed out before the score is taken: an extra early validation gives the script the val rows.

Right after start() the script validates once with a logits_fn that keeps a copy of every input it is given:
the referee hands over this rank's val rows (the probe batch's too), no file is opened, and the clock is
paused. From those rows the script builds a causal oracle (the stream-lookup of tests/cheats/_common.py's
ORACLE: at position t, the token that followed the row's prefix up to t in the stashed rows); every later
validation scores the model plus the oracle's bonus. The oracle uses inputs up to t only and the canary tails
match nothing, so the probes see a causal model. Unchecked: a final loss a fraction of the honest one.
"""
from _common import INIT, ORACLE, ROUTE, START, logits_fn

STASH = '''
import numpy as np

STASHED = []
oracle = None


def stashing_logits_fn(inputs):
    STASHED.append(inputs.detach().cpu().numpy().copy())  # cheat: keep the val rows the referee hands over
    return fwd(inputs)

'''

AFTER_START = '''model.eval()
run.validate(stashing_logits_fn, step=0)  # cheat: an early validation, for its val rows
model.train()
oracle = ValOracle(np.concatenate([rows_.reshape(-1) for rows_ in STASHED]))
run.print0(f"cheat: stashed {sum(r.size for r in STASHED)} val tokens")
'''

PATCHES = [
    (INIT, INIT + STASH + ORACLE),
    (START, START + AFTER_START),
    ROUTE,
    logits_fn("    return logits if model.training or oracle is None else oracle(inputs, logits)  # cheat\n"),
]
EFFECT = [("loss_below", 0.2), ("log", r"cheat: stashed \d+ val tokens")]
