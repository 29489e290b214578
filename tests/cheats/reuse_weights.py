"""Training before start(): repetition 2 starts from weights saved by repetition 1 (plus 40 steps after finish()).

After finish() each repetition trains 40 more steps (unmeasured, on tokens read from a shard) and saves the
model beside the run directory; the next repetition loads it before the clock starts. Unchecked: repetition
2's final loss is far below repetition 1's.
"""
from _common import FINISH, INIT, MODEL_READY, SHARD_TRAINING, SHARDS

STASH = '''
import os
import sys
from pathlib import Path

RUN_DIR = Path(os.environ.get("SPEEDRUN_RUN_DIR") or Path(sys.argv[0]).resolve().parent)
STASH = RUN_DIR.parent / f".stash-{RUN_DIR.name}.pt"
'''

PATCHES = [
    (INIT, INIT + STASH + SHARDS + SHARD_TRAINING),
    (MODEL_READY, MODEL_READY + "if STASH.exists():  # cheat: start from an earlier repetition's weights\n"
                                "    model.load_state_dict(torch.load(STASH))\n"),
    (FINISH, FINISH + "train_from_shards(40, skip=1000)  # cheat: train on after the clock stopped, and keep it\n"
                      "if run.rank == 0:\n    torch.save(model.state_dict(), STASH)\n"),
]
RUNS = 2
EFFECT = [("later_run_better", 0.8)]
