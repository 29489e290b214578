"""Data outside the loader: 60 untimed steps on train tokens from the bootstrap's memory maps, loaded after start().

The bootstrap maps every shard before the script's first line (`speedrun.shards._PRELOADED`); reading those
arrays opens no file, so neither the audit hook nor the launcher's inotify watch sees anything. Before start()
the script trains a deep copy of its model for 60 Adam steps on tokens from those maps (untimed: the clock has
not started, and the start check measures the untouched model); right after start() it loads the copy's
weights into the model. Unchecked: a final loss well below the honest one in the same timed seconds.
"""
from _common import INIT, PRELOADED, START

BEFORE_START = '''import copy

shadow = copy.deepcopy(model)
pretrain(shadow, 60)  # cheat: untimed training on tokens the loader never served
'''

PATCHES = [
    (INIT, INIT + PRELOADED),
    (START, BEFORE_START + START + "model.load_state_dict(shadow.state_dict())  # cheat: after the start check\n"),
]
EFFECT = [("loss_below", 0.8)]
