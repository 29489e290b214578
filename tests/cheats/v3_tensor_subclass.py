"""Bending the referee's arithmetic: logits_fn returns a torch.Tensor subclass that bends the subtraction.

The referee computes each token's loss as `logsumexp(logits) - logits[target]` on whatever logits_fn
returns, and only checks that it is a floating-point `torch.Tensor` of the right shape. The script returns
its honest logits as a subclass whose `__torch_function__` halves the result of any subtraction where the
difference is below ln V - 0.3 (the tokens the model already predicts better than chance): slices, casts,
logsumexp and gather keep the subclass, so the referee's own subtraction is the one bent. The canaries'
random tokens sit near ln V and are left as they are, and the probes compare two bent values. Unchecked: a
final loss well below the honest one.
"""
from _common import INIT, ROUTE, logits_fn

BENT = '''
import math


class Bent(torch.Tensor):
    """Logits that halve a small difference taken from them."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        out = super().__torch_function__(func, types, args, kwargs or {})
        if getattr(func, "__name__", "") in ("sub", "__sub__") and isinstance(out, torch.Tensor) and out.dim() == 1:
            cut = math.log(run.track.vocab_size) - 0.3
            with torch._C.DisableTorchFunctionSubclass():
                out = torch.where(out < cut, out * 0.5, out).as_subclass(cls)
        return out

'''

PATCHES = [
    (INIT, INIT + BENT),
    ROUTE,
    logits_fn("    return logits if model.training else logits.as_subclass(Bent)  # cheat\n"),
]
EFFECT = [("loss_below", 0.8)]
