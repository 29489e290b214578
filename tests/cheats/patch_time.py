"""Clock tampering: after start(), time.perf_counter, time.time and time.monotonic all run at 1/20 speed.

Every clock in the `time` module is replaced by one that advances 20 times slower from start() on, so timed
seconds and event wall times shrink together and stay consistent with each other. Unchecked: the timed
seconds are about 5% of the honest run's.
"""
from _common import START

SLOW = '''import time as _time


def _slow(clock, k=0.05):
    base = clock()
    return lambda: type(base)(base + (clock() - base) * k)


for _name in ("perf_counter", "time", "monotonic", "perf_counter_ns", "time_ns", "monotonic_ns"):
    setattr(_time, _name, _slow(getattr(_time, _name)))  # cheat: the clock crawls from here on
'''

PATCHES = [(START, START + SLOW)]
EFFECT = [("timed_below", 0.3)]
