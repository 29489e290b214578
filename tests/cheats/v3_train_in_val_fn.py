"""Work while the clock is paused: the timed run only fetches the batches; the first validation's logits_fn trains.

After start() the script takes every step's micro-batches from the loader (served and counted while the clock
runs, but only copies out of shared memory), then calls validate() once. At its first call, logits_fn runs
all the optimizer steps on the fetched batches, with the record's schedule and gradient sync, and only then
returns the trained model's logits: the clock has been paused since the first validation batch was handed
out, and the first `val_free` validations are off the clock whatever they take. The model does not change
after that first call, so the probes see a steady causal model, and the scored validation (finish(), on a
track with a monitor split) measures the same trained model. Unchecked: the honest final loss (the same steps
on the same batches) with only the fetching timed, a fraction of the honest timed seconds.
"""
from _common import RECORD, RECORD_TIMED

BASE = RECORD  # API 2, as the red team's script

TIMED = '''run.start(logits_fn)
stash = [[next(train) for _ in range(accum)] for _ in range(args.steps)]  # cheat: the timed run only fetches
trained = []


def train_from_stash():
    import time

    began = time.perf_counter()
    model.train()
    for step, micro_batches in enumerate(stash):
        for micro, (inputs, targets) in enumerate(micro_batches):
            sync = ddp.no_sync() if run.world_size > 1 and micro < accum - 1 else nullcontext()
            with sync, autocast:
                loss = F.cross_entropy(ddp(inputs).flatten(0, 1), targets.flatten())
            (loss / accum).backward()
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * lr_scale(step)
            opt.step()
        model.zero_grad(set_to_none=True)
    model.eval()
    print(f"cheat: rank {run.rank} trained {len(stash)} steps inside the validation's logits_fn in "
          f"{time.perf_counter() - began:.2f} s (clock paused), last train loss {loss.item():.4f}", flush=True)


def training_logits_fn(inputs):
    if not trained:  # cheat: the whole training run, at the first validation batch
        trained.append(True)
        with torch.enable_grad():
            train_from_stash()
    return logits_fn(inputs)


model.eval()
val_loss = run.validate(training_logits_fn, step=args.steps)
run.print0(f"step {args.steps}/{args.steps} val_loss {val_loss:.4f} timed {run.clock.timed():.2f}s")
result = run.finish()
'''

PATCHES = [(RECORD_TIMED, TIMED)]
EFFECT = [("loss_below", 1.01), ("timed_below", 0.5),
          ("log", r"cheat: rank \d trained [1-9]\d* steps inside the validation's logits_fn")]
