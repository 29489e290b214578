"""Clock-pause abuse: a background thread trains 40 steps while the main thread keeps the referee validating.

After the last timed step a thread trains on the loader's batches (a local Adam, no collectives) while the
main thread calls validate() again and again, so the clock is paused nearly all the time the thread works;
a last validation then measures the final model. Unchecked: a final loss far below the honest run's at
about the same timed seconds.
"""
from _common import FINISH

THREAD = '''import threading

import torch.distributed as dist


def _smuggle():
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        inputs, targets = next(train)
        F.cross_entropy(model(inputs).flatten(0, 1), targets.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


_thread = threading.Thread(target=_smuggle, daemon=True)  # cheat: trains while the clock is paused
_thread.start()
model.eval()
while True:
    run.validate(loss_fn, step=args.steps, logits_fn=logits_fn)
    _alive = torch.tensor([float(_thread.is_alive())])
    if dist.is_initialized():
        dist.all_reduce(_alive, op=dist.ReduceOp.MAX)  # every rank validates the same number of times
    if not _alive.item():
        break
_thread.join()
run.validate(loss_fn, step=args.steps, logits_fn=logits_fn)  # the final model, measured last
'''

PATCHES = [(FINISH, THREAD + FINISH)]
EFFECT = [("loss_below", 0.8)]
