"""Every environment variable speedrun reads, read here and only here: a leaf every layer may import.

Settings that arrive through the environment (torchrun's rank variables, the launcher's socket path, the
`SPEEDRUN_*` overrides) are easy to misparse in one place and not in another, and hard to find when they are
scattered. Each is read by one small function below, so a default or a parse rule has one home. Only reading
lives here: the launcher still builds its children's environment itself (`speedrun.referee.launcher`).

The one exception is the `SPEEDRUN_*_DIR` family, read by `speedrun.paths` beside the rule they feed: that
module must stay importable on its own for `speedrun --help`.
"""

from __future__ import annotations

import os

REFEREE_SOCKET = "SPEEDRUN_REFEREE_SOCKET"  # set by the launcher for its ranks: the referee channel's path
DEVICE = "SPEEDRUN_DEVICE"                  # "cpu" forces the CPU on a GPU machine (kept for the ranks)
TRACK, SEED = "SPEEDRUN_TRACK", "SPEEDRUN_SEED"
REPLICA = "SPEEDRUN_REPLICA"                # "0": launches skip the replica check by default (as --no-replica)


# --- torchrun and the device --------------------------------------------------------------------------------

def dist() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) as torchrun sets them; (0, 0, 1) for a plain `python` process."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)))


def local_world_size(default: int) -> int:
    """Processes on this node (torchrun's LOCAL_WORLD_SIZE), else `default`."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", default))


def under_torchrun() -> bool:
    """Was this process started by torchrun (even with one process)?"""
    return "TORCHELASTIC_RUN_ID" in os.environ


def cpu_forced() -> bool:
    """`SPEEDRUN_DEVICE=cpu`: use the CPU even where CUDA is available."""
    return os.environ.get(DEVICE, "") == "cpu"


def cuda_visible_devices() -> list[str] | None:
    """The entries of CUDA_VISIBLE_DEVICES, or None when it is not set (every GPU is visible)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return [v.strip() for v in visible.split(",") if v.strip()]


# --- the launcher's hand-over to its ranks ------------------------------------------------------------------

def referee_socket() -> str | None:
    """The referee channel's socket path the launcher gave this rank, or None when no launcher started it."""
    return os.environ.get(REFEREE_SOCKET) or None


# --- unrefereed runs (`python train.py` / plain torchrun) ---------------------------------------------------

def track() -> str | None:
    return os.environ.get(TRACK) or None


def seed() -> int:
    return int(os.environ.get(SEED, 0))



# --- the launcher ---------------------------------------------------------------------------------------------

def replica_default() -> bool:
    """Whether a launch runs the replica check unless told (`--no-replica`); a run without it is never a record."""
    return os.environ.get(REPLICA, "1") != "0"
