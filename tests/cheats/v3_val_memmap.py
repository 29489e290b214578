"""Bending the referee's data access: `speedrun.data.shards.read_shard` hands the script the bootstrap's val map.

`read_shard` serves a preloaded path from the memory map the bootstrap made before the script ran, without
opening the file: no audit event, nothing for the launcher's inotify watch. The script reads every val shard
that way and builds the causal stream-lookup oracle of tests/cheats/_common.py (ORACLE) on the val tokens:
at position t, the token that followed the row's prefix up to t in the val stream. Unchecked: a final loss
a small fraction of the honest one.
"""
from _common import INIT, ORACLE, ROUTE, SHARDS, logits_fn

READ = '''
import numpy as np

from speedrun.data import shards as _shards

oracle = ValOracle(np.concatenate([np.asarray(_shards.read_shard(p), dtype=np.int64)  # cheat: the bootstrap's maps
                                   for p in find_shards("val")])[:run.track.val_tokens + 1])
'''

PATCHES = [
    (INIT, INIT + SHARDS + ORACLE + READ),
    ROUTE,
    logits_fn("    return logits if model.training else oracle(inputs, logits)  # cheat\n"),
]
EFFECT = [("loss_below", 0.3)]
