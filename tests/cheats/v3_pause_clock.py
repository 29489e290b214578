"""Forged results through the harness's own objects: each step's compute runs inside a forged validation.

The script digs the rank's bootstrap `Session` out of `gc.get_objects()`. Every timed step takes its
micro-batches from the loader (the referee counts them, in the timed phase), then sends `val_begin` on the
Session itself, does the forward, backward and optimizer step, and closes with a forged `val_end` (this
rank's share of the val tokens, the train loss as "loss", a passing probe). The launcher's clock pauses from
the last rank's val_begin to the first rank's val_end: the whole compute of the run is off the clock, only
the loader calls are timed. The last validation is a real one, so the final loss is honest. Unchecked: the
honest loss in a fraction of the honest timed seconds.
"""
from _common import GC_SESSION, INIT

PAUSED_STEP = '''

session = dig_session()  # once: walking the heap takes a tenth of a second


def train_step(step: int) -> None:
    timed = run.clock.started is not None  # warm-up steps are left alone
    batches = [next(train) for _ in range(accum)]  # the loader serves (and the referee counts) in the timed phase
    if timed:
        session.send("val_begin", step=step)  # cheat: the launcher's clock pauses now
    total = 0.0
    for micro, (inputs, targets) in enumerate(batches):
        sync = ddp.no_sync() if run.world_size > 1 and micro < accum - 1 else nullcontext()
        with sync, autocast:
            loss = F.cross_entropy(ddp(inputs).flatten(0, 1), targets.flatten())
        (loss / accum).backward()
        total += float(loss) / accum
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_scale(step)
        opt.step()
    model.zero_grad(set_to_none=True)
    if timed:
        share = run.track.val_tokens // run.world_size
        probe = {"rows": 8, "nll_diff": 0.0, "dist_diff": 0.0, "logits_shape": [16, args.seq_len, run.track.vocab_size],
                 "logits_dtype": "torch.float32", "canary_tokens": 0, "canary_nll_sum": 0.0, "canary_nll_sq": 0.0}
        session.send("val_end", step=step, loss_sum=total * share, tokens=share,
                     batch_tokens=train.batch_tokens // train.accum_steps, seq_len=train.seq_len, layout="rows",
                     probe=probe, error=None)  # and resumes: the step's compute was never timed

'''

PATCHES = [
    ("def train_step(step: int) -> None:\n", PAUSED_STEP + "\ndef honest_train_step(step: int) -> None:\n"),
    ("run = speedrun.init()\n", "run = speedrun.init()\n" + GC_SESSION),
]
EFFECT = [("timed_below", 0.5), ("loss_below", 1.01)]
