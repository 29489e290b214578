"""Reading the evaluator's frames: logits_fn walks up the call stack into the referee's `measure` and peeks.

`sys._getframe()` leads from logits_fn to the frame of `speedrun.evaluation.measure`, whose locals hold the
batch being scored (its `targets`), the index of that batch (-1 for the probe batch) and the probe's plan
(which canonical row each probe row copies and where it is cut), with the functions that give any val piece.
On a canonical batch logits_fn raises the logit of each position's target. On the probe batch it raises, at
every position before each row's cut, the token its ORIGINAL row has there: copies and originals then get
the same outputs wherever the probe compares them, and the canary tails are left honest. Unchecked: a final
loss near zero.
"""
from _common import INIT, ROUTE, logits_fn

PEEK = '''

def evaluator_locals():
    """The locals of the referee's measure() up the call stack, or None outside a validation."""
    import sys
    f = sys._getframe(1)
    while f is not None:
        if f.f_code.co_name == "measure" and "plan" in f.f_locals and "batch" in f.f_locals:
            return f.f_locals
        f = f.f_back
    return None


def frame_peek(inputs, logits, bonus=30.0):
    seen = evaluator_locals()
    if seen is None:
        return logits
    extra = torch.zeros_like(logits)
    if seen["b"] >= 0:  # a canonical batch: its targets are right there
        extra.scatter_(-1, seen["batch"].targets.to(logits.device)[..., None], bonus)
    else:  # the probe batch: answer as the copied row's original would, up to each cut
        plan, own, piece = seen["plan"], seen["own_piece"], seen["val_piece"]
        for p, ((b, i), j) in enumerate(zip(plan.sources, plan.cuts)):
            original = torch.as_tensor(piece(own(b, i)).astype("int64"))
            extra[p, torch.arange(j), original[1:j + 1]] = bonus
    return logits + extra

'''

PATCHES = [
    (INIT, INIT + PEEK),
    ROUTE,
    logits_fn("    return logits if model.training else frame_peek(inputs, logits)  # cheat\n"),
]
EFFECT = [("loss_below", 0.05)]
