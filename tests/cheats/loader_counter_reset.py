"""Training before start(): 40 untimed steps from the loader, then its public counters are set back to zero.

After warm-up the script trains 40 steps with next(train) and resets every public counter of the loader
(micro_batches and the like), so the start event says no batch was taken. Unchecked: a final loss far below
the honest run's at the same timed steps.
"""
from _common import START

RESET = '''for _ in range(40):  # cheat: untimed training ...
    train_step(0)
for _name, _value in list(vars(train).items()):  # ... and the loader's counters say it never happened
    if isinstance(_value, int) and any(w in _name for w in ("batches", "served", "count", "consumed")):
        setattr(train, _name, 0)
'''

PATCHES = [(START, RESET + START)]
EFFECT = [("loss_below", 0.8)]
