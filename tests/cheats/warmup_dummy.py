"""Warm-up abuse: warmup() is handed a dummy module while the real model trains 40 steps inside the block.

The referee snapshots and restores the dummy (and rewinds the stream), but the real model keeps 40 untimed
steps of training. Warm-up batches are random tokens, so those steps teach the real model nothing (the effect
is gone); the referee still refuses a warm-up model the timed run never changes.
"""
from _common import RECORD, WARMUP_LOOP

BASE = RECORD  # API 2: start(logits_fn) never calls the warm-up model, so only finish() can see the stand-in

PATCHES = [
    ("with run.warmup(model, optimizers):\n" + WARMUP_LOOP,
     "with run.warmup(nn.Linear(1, 1), []):  # cheat: the referee guards a dummy\n"
     "    for step in range(40):  # while the real model trains\n        train_step(0)\n"),
]
EFFECT = [("loss_below", 0.8)]  # the gain it had before warm-up served random tokens
