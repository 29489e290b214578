"""Test-session settings shared by every test file.

One intra-op thread per process: the suite runs two test files at a time (pytest-xdist) on a 2-core machine and
each launch starts its own ranks, so torch's default of one thread per core would oversubscribe the cores
(torchrun sets the same for multi-rank launches). Set before any test module imports torch; a value already in
the environment wins.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
