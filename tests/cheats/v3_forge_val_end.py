"""Forged results through the harness's own objects: the final validation is a val_end with an invented loss.

The script walks `gc.get_objects()` to the rank's bootstrap `Session` and, in place of the last validation,
calls its `send()` itself: a `val_begin`, then a `val_end` that claims exactly this rank's share of the val
tokens, a loss of 0.05 nats per token and a probe that "passed" (rows 8, no movement, no canary tokens). The
referee stamps and sums what the channel brings; nothing measured the model. 0.05 nats is also far below the
entropy of the track's own token process (about 0.95 nats for the smoke track's Markov chain), and nothing
compares a loss with the track's `entropy_floor`. Unchecked: a final loss of 0.05, about 1% of the honest one.
"""
from _common import GC_SESSION, INIT, VALIDATE

FORGE = '''

def forged_validation(step, loss=0.05):
    """A val_begin / val_end pair straight onto the referee channel: the loss is whatever we say."""
    session = dig_session()
    share = run.track.val_tokens // run.world_size
    session.barrier(run.device)
    session.send("val_begin", step=step)
    probe = {"rows": 8, "nll_diff": 0.0, "dist_diff": 0.0, "logits_shape": [16, args.seq_len, run.track.vocab_size],
             "logits_dtype": "torch.float32", "canary_tokens": 0, "canary_nll_sum": 0.0, "canary_nll_sq": 0.0}
    session.send("val_end", step=step, loss_sum=loss * share, tokens=share,
                 batch_tokens=train.batch_tokens // train.accum_steps, seq_len=train.seq_len, layout="rows",
                 probe=probe, error=None)
    return loss

'''

PATCHES = [
    (INIT, INIT + GC_SESSION + FORGE),
    (VALIDATE, "val_loss = forged_validation(step)  # cheat: no model was measured"),
]
EFFECT = [("loss_below", 0.02)]
