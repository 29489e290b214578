"""Warm-up abuse: warmup() is handed a dummy module while the real model trains 40 steps inside the block.

The referee snapshots and restores the dummy (and rewinds the stream), but the real model keeps 40 untimed
steps of training. Unchecked: a final loss far below the honest run's at the same timed steps.
"""
from _common import WARMUP_LOOP

PATCHES = [
    ("with run.warmup(model, optimizers):\n" + WARMUP_LOOP,
     "with run.warmup(nn.Linear(1, 1), []):  # cheat: the referee guards a dummy\n"
     "    for step in range(40):  # while the real model trains\n        train_step(0)\n"),
]
EFFECT = [("loss_below", 0.8)]
