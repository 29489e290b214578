"""False accusation (an HONEST run): another process hashes the track's data files while the run is going on.

The honest record runs unchanged; once its ranks have called speedrun.init(), a process of its own, outside
the launcher and the ranks (a user's `sha256sum data/*.bin`, a `speedrun data verify`, a backup), reads every
data file of the same data folder. The launcher's inotify watch counts opens by anyone, so today the honest
run is refused for "a script read the data itself". It must qualify with no problem.
"""

PATCHES = []

# Python source run as a separate process once repetition 1's ranks are in speedrun.init()
DURING_RUN = '''
import hashlib
import os
from pathlib import Path

for path in sorted(Path(os.environ["SPEEDRUN_DATA_DIR"]).rglob("*.bin")):
    print(hashlib.sha256(path.read_bytes()).hexdigest(), path.name)
'''
