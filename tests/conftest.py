"""Test-session settings shared by every test file.

One intra-op thread per process: the suite runs two test files at a time (pytest-xdist) on a 2-core machine and
each launch starts its own ranks, so torch's default of one thread per core would oversubscribe the cores
(torchrun sets the same for multi-rank launches). Set before any test module imports torch; a value already in
the environment wins.

The replica check (one more launch of the script after a run's repetitions, `speedrun.referee.replica`) is off
unless a test asks for it (`--replica`, `replica=True`): the suite launches some forty runs, and the check's
own tests launch it where it is the point.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SPEEDRUN_REPLICA", "0")
