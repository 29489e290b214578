"""Rank asymmetry: rank 1 returns zero losses and next-token-peeking logits; only rank 0's probes are recorded.

Rank 0 is an honest model. On rank 1, loss_fn returns zeros and logits_fn raises the logit of the next input
token (the target, in a contiguous validation row). Unchecked, rank 1's half of the val tokens costs ~0 nats:
the final val loss is about half the honest one.
"""
from _common import INIT, LOSS_DEF, PEEK, logits_fn

PATCHES = [
    (INIT, INIT + PEEK),
    (LOSS_DEF, LOSS_DEF + "    if run.rank == 1:  # cheat: rank 1's share of the val tokens costs nothing\n"
                          "        return torch.zeros(targets.shape, device=targets.device)\n"),
    logits_fn("    return peek(inputs, logits) if run.rank == 1 else logits  # cheat: rank 1 sees the future\n"),
]
EFFECT = [("loss_below", 0.7)]
