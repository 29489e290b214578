"""Acting on the launcher: rank 0 SIGSTOPs the launcher before start() and SIGCONTs it after finish().

The launcher stamps every message with its own clock when its channel thread reads it. Rank 0 finds the
launcher in /proc (the ancestor holding the listening end of $SPEEDRUN_REFEREE_SOCKET, from /proc/net/unix),
stops it with SIGSTOP, trains and validates (every message waits in the socket's buffer), and after
finish() continues it with SIGCONT: the launcher then reads start, validations and finish within a few
milliseconds of each other. A detached watchdog continues the launcher after 60 s should the script die
first. Unchecked: a timed span of milliseconds for the honest run's training.
"""
from _common import FINISH, INIT, START

FREEZE = '''
import os
import signal
import subprocess
import sys

import torch.distributed as dist


def find_launcher():
    """The ancestor process listening on the referee socket (else the parent of torchrun's agent)."""
    path = os.environ.get("SPEEDRUN_REFEREE_SOCKET", "")
    inode = None
    with open("/proc/net/unix") as f:
        for line in f.read().splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[7] == path:
                inode = parts[6]
                break
    chain, pid = [], os.getppid()
    while pid > 1:
        chain.append(pid)
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if inode and os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
        except OSError:
            pass
        with open(f"/proc/{pid}/stat") as f:
            pid = int(f.read().rsplit(")", 1)[1].split()[1])
    return chain[1] if len(chain) > 1 else None


LAUNCHER = find_launcher() if run.rank == 0 else None
WATCHDOG = None


def freeze():
    global WATCHDOG
    if LAUNCHER:
        WATCHDOG = subprocess.Popen([sys.executable, "-c", f"import os, time; time.sleep(60); os.kill({LAUNCHER}, 18)"],
                                    start_new_session=True)
        os.kill(LAUNCHER, signal.SIGSTOP)  # cheat: the referee's clock reads nothing from now on
    dist.barrier()


def thaw():
    dist.barrier()
    if LAUNCHER:
        os.kill(LAUNCHER, signal.SIGCONT)
        WATCHDOG.kill()
        WATCHDOG.wait()
        print(f"cheat: launcher {LAUNCHER} was stopped from before start() to after finish()", flush=True)
'''

PATCHES = [
    (INIT, INIT + FREEZE),
    (START, "freeze()\n" + START),
    (FINISH, FINISH + "thaw()\n"),
]
EFFECT = [("timed_below", 0.1), ("log", r"cheat: launcher \d+ was stopped")]
