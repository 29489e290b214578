"""Reading the val data: the val shard is opened before init() and memorised as a causal next-token oracle.

Before the referee exists (so before any audit hook of its own), the script reads the val shard with a
plain open(), indexes it, and logits_fn adds a causal oracle (see _common.ORACLE): the prediction at t uses
inputs up to t only, so the causality probe passes. Unchecked: a final loss far below the honest one.
"""
from _common import INIT, ORACLE, ROUTE, SHARDS, logits_fn

READ = '''
import numpy as _np

with open(find_shards("val")[0], "rb") as _f:  # cheat: the val tokens, before the referee is watching
    ORACLE = ValOracle(_np.frombuffer(_f.read()[1024:], dtype=_np.uint16))
'''

PATCHES = [
    (INIT, SHARDS + ORACLE + READ + INIT),
    ROUTE,
    logits_fn("    return logits if model.training else ORACLE(inputs, logits)  # cheat\n"),
]
EFFECT = [("loss_below", 0.5)]
