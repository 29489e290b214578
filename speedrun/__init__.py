"""speedrun: a referee, a ledger and reference optimizers for the NanoGPT speedrun.

A submission is a training script. It calls `speedrun.init()` and gets a `Run` that owns the data, the clock
and the measurement of validation loss (see `speedrun/spec.py`, the whole contract in one file).

`API_VERSION` is the version of the surface record scripts use (`init`, `Run`, `speedrun.optim`). It only
ever grows: a record script written against version N keeps running under every later harness.
  1  init, train_loader, warmup, start, validate(loss_fn, logits_fn=...), finish (harness 0.1)
  2  the referee in its own process: validate(logits_fn=...) with the loss computed by the referee,
     start(logits_fn), log(), describe_model(), loader layouts ("flat") and schedules (train.set) (harness 0.2)
"""

from speedrun.version import API_VERSION, __version__  # noqa: F401  (the public names)


def init(*args, **kwargs):
    """Set up the referee for this process and return its `Run` (see `speedrun.spec.init`)."""
    from speedrun.spec import init as _init

    return _init(*args, **kwargs)
