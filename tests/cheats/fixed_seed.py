"""Fixed seed: SPEEDRUN_SEED is overwritten before init() and torch.manual_seed(0) replaces the referee's seed.

Every repetition then starts from the same initial weights and (on a CPU) trains bit-for-bit the same way,
so the repetitions' final losses are identical: sd 0, and a t-test of the mean against the target gives
p = 0 for any mean below it. Unchecked: identical final losses across repetitions.
"""
from _common import INIT

PATCHES = [
    (INIT, 'import os\nos.environ["SPEEDRUN_SEED"] = "0"  # cheat: every repetition is repetition 1\n' + INIT),
    ("torch.manual_seed(run.seed)\n", "torch.manual_seed(0)  # cheat: and whatever the referee seeded, seed 0\n"),
]
RUNS = 2
EFFECT = [("identical_runs", None)]
