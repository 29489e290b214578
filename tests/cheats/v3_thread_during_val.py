"""Work while the clock is paused: validate every step, and compute the step's gradients in a thread meanwhile.

Each timed step takes its micro-batches from the loader (counted, timed), then starts a thread that runs
the forward and backward passes on them and calls validate() on the main thread: the launcher's clock is
paused while the thread works. The thread only fills `.grad` (the model's parameters do not change during
the validation, so the probes see a steady causal model); after the validation the main thread averages the
gradients across ranks and takes the optimizer step, which is all that is timed. Unchecked: the honest final
loss with the steps' forward and backward passes off the clock (at dim 32 on a shared 2-core CPU the
saving is lost in the noise of the remaining per-step overhead; on a GPU with a real model it is most of
the step).
"""
from _common import INIT

HIDDEN = '''
import threading

import time

import torch.distributed as dist

HIDDEN_S, HIDDEN_STEPS = 0.0, 0


def hidden_step(step: int) -> None:
    batches = [next(train) for _ in range(accum)]  # timed: the loader serves and the referee counts

    def work():
        global HIDDEN_S
        began = time.perf_counter()
        for inputs, targets in batches:
            with autocast:
                loss = F.cross_entropy(fwd(inputs).flatten(0, 1), targets.flatten())
            (loss / accum).backward()
        HIDDEN_S += time.perf_counter() - began

    worker = threading.Thread(target=work)
    worker.start()  # cheat: the step's compute ...
    model.eval()
    run.validate(loss_fn, step=step, logits_fn=logits_fn)  # ... runs while this pauses the clock
    model.train()
    global HIDDEN_STEPS
    HIDDEN_STEPS += not worker.is_alive()  # done before the validation ended: entirely off the clock
    worker.join()
    for p in model.parameters():
        if p.grad is not None and run.world_size > 1:
            dist.all_reduce(p.grad)
            p.grad /= run.world_size
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_scale(step)
        opt.step()
    model.zero_grad(set_to_none=True)

'''

REPORT = (
    'run.print0(f"cheat: the forward and backward passes of {HIDDEN_STEPS} of {args.steps} steps ({HIDDEN_S:.2f} s on '
    'rank 0) ended inside validations, off the clock")\n')

PATCHES = [
    (INIT, INIT + HIDDEN),
    ("result = run.finish()\n", "result = run.finish()\n" + REPORT),
    ("    train_step(step)\nresult = run.finish()", "    hidden_step(step)\nresult = run.finish()"),
]
EFFECT = [("loss_below", 1.01), ("timed_below", 0.99), ("log", r"cheat: the forward and backward passes of [1-9]\d* of")]
