"""Val rows handed out before the score is taken: a peek too small for the blind probe, kept consistent by memory.

peek_remembered with a bonus of 0.01 instead of 6: the logit of the token that comes next is raised a little
wherever the cheat peeks, the scored loss drops by under a hundredth of a nat, which the blind positions of one
repetition on this small track cannot tell from noise (their bar is 0.02), and every pair and canary passes.
What it cannot dodge is the replica check: the same model loaded afresh in a process that never saw the rows'
rest predicts the checked positions without the bonus, and the scored losses sit below it wherever it peeked.
Unchecked: a final loss below the honest run's that every in-process probe accepts.
"""
from peek_remembered import BASE, PATCHES as REMEMBERED  # noqa: F401  (BASE: the same script)

LAUNCH_EXTRA = ("--replica",)  # the replica check, off by default in the test suite (tests/conftest.py)
assert sum(new.count("bonus=6.0") for _, new in REMEMBERED) == 1
PATCHES = [(old, new.replace("bonus=6.0", "bonus=0.01")) for old, new in REMEMBERED]
EFFECT = [("loss_below", 0.9995)]
