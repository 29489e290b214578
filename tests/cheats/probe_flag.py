"""Probe detection: the model peeks at the next token unless the referee probes (_finished flag, a probe on the stack).

logits_fn raises the logit of the next input token (the target) unless the referee's `_finished` attribute
is set or a function whose name contains "probe" is on the call stack; probes then see an honest causal
model. Unchecked: a final loss far below the honest run's (most positions cost ~0 nats).
"""
from _common import INIT, PEEK, ROUTE, logits_fn

PROBING = '''
import sys as _sys


def probing():
    """True while the referee probes rather than measures."""
    if getattr(run, "_finished", False):
        return True
    frame = _sys._getframe(1)
    while frame is not None:
        if "probe" in frame.f_code.co_name.lower():
            return True
        frame = frame.f_back
    return False

'''

PATCHES = [
    (INIT, INIT + PEEK + PROBING),
    ROUTE,
    logits_fn("    return logits if model.training or probing() else peek(inputs, logits)  # cheat\n"),
]
EFFECT = [("loss_below", 0.5)]
