"""Reading the val data unseen: the audit hook is switched off, then the val shard is read with no audit event, mid-run.

After start() the script empties every watch list it finds in speedrun's modules (the audit hook's state),
then reads the val shard through torch.from_file (C++ file mapping: no Python open(), so no audit event
either way) and adds the causal val oracle to logits_fn. Unchecked: a final loss far below the honest one.
"""
from _common import INIT, ORACLE, ROUTE, SHARDS, START, logits_fn

READ = '''import sys as _sys

for _name, _mod in list(_sys.modules.items()):  # cheat: switch the referee's audit hook off
    if _mod is not None and _name.startswith("speedrun"):
        for _attr, _value in list(vars(_mod).items()):
            if "WATCH" in _attr.upper() and isinstance(_value, (list, set, dict)):
                _value.clear()
ORACLE = ValOracle(read_quietly(find_shards("val")[0]).numpy())  # cheat: the val tokens, unaudited
'''

PATCHES = [
    (INIT, INIT + SHARDS + ORACLE),
    (START, START + READ),
    ROUTE,
    logits_fn("    return logits if model.training else ORACLE(inputs, logits)  # cheat\n"),
]
EFFECT = [("loss_below", 0.5)]
