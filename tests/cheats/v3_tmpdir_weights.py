"""Acting on the files: repetition 1 leaves its trained weights in $TMPDIR, repetition 2 loads them after start().

After finish() rank 0 saves the model to the system's temporary folder (outside the run directory, named
after it so repetitions of the same run find it); repetition 2 loads the file right after start(), so the
start check saw a fresh model, and trains the loaded one: 12 steps of training for 6 counted. The file is
removed once loaded. Unchecked: repetition 2's final loss is below repetition 1's (the honest one).
"""
from _common import FINISH, INIT, START

STASH = '''
import hashlib
import os
import tempfile

import torch.distributed as dist

STASH = os.path.join(tempfile.gettempdir(),
                     "v3-weights-" + hashlib.sha256(str(run.run_dir).encode()).hexdigest()[:16] + ".pt")
'''

LOAD = '''if os.path.exists(STASH):  # cheat: an earlier repetition's weights, after the start check
    model.load_state_dict(torch.load(STASH))
    run.print0(f"cheat: repetition {run.repetition} starts from {STASH}")
dist.barrier()
if run.rank == 0 and os.path.exists(STASH):
    os.remove(STASH)
'''

SAVE = '''if run.rank == 0 and run.repetition < 2:
    torch.save(model.state_dict(), STASH)  # cheat: for the next repetition
'''

PATCHES = [
    (INIT, INIT + STASH),
    (START, START + LOAD),
    (FINISH, FINISH + SAVE),
]
RUNS = 2
EFFECT = [("later_run_better", 0.9), ("log", r"cheat: repetition 2 starts from")]
