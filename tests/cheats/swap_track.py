"""Track swap: the script replaces run.track by a copy without require_logits, then validates a halved loss_fn alone.

With no logits the referee can only trust loss_fn, which returns half the cross-entropy; the swapped track
tells the referee logits are not required. Unchecked: a final loss half the honest one.
"""
from _common import HALF_LOSS, INIT, NO_LOGITS

SWAP = '''import dataclasses

try:  # cheat: the referee reads its rules from a track object the script can replace
    run.track = dataclasses.replace(run.track, checks=dataclasses.replace(run.track.checks, require_logits=False))
except Exception as exc:
    run.print0(f"cheat: could not swap run.track: {exc}")
'''

PATCHES = [(INIT, INIT + SWAP), HALF_LOSS, NO_LOGITS]
EFFECT = [("loss_below", 0.6)]
