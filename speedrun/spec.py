"""The submission contract: everything a training script may rely on, in one file, top to bottom.

A submission is one self-contained script. It owns its model, optimizer and loop; the referee owns the data,
the clock, the seeds and the measurement of validation loss:

    import speedrun
    run = speedrun.init()                      # distributed set-up, device, seed, track; connects to the referee
    train = run.train_loader(batch_tokens=524288, seq_len=1024)   # this rank's share of the canonical stream
    with run.warmup(model, optimizers):        # untimed: compile and warm up on RANDOM tokens; the referee
        ...                                    #   restores the model and optimizer state afterwards
    run.start(logits_fn)                       # the clock starts (after a start check of the fresh model)
    for step in range(steps):
        inputs, targets = next(train)          # [b, seq_len] int64 on run.device; gradient sync is yours (DDP)
        ...forward, backward, optimizer step...
        run.log(train_loss=loss)               # optional scalars for the evidence and wandb (no device sync)
        if last_step or step % 250 == 0:
            run.validate(logits_fn, step=step) # clock paused; the referee computes the loss from your logits
    run.finish()                               # must directly follow a validation; the clock stops, and the
                                               #   referee measures the scored val tokens: the result

`logits_fn(inputs)` returns logits `[B, T, V]` (V >= the track's vocabulary; any float dtype) for the rows
layout, `logits_fn(inputs, cu_seqlens)` returns `[n, V]` for the flat layout. The referee computes the
cross-entropy itself, in chunks, over all V columns. `start(logits_fn)` refuses, before the clock starts, a
function that the layout's call cannot reach (its signature does not take those arguments). A validation's rows
(the flat layout's `cu_seqlens` pieces) come in an order drawn afresh each time, each a piece of val text on its
own: a model must not attend from one to another. Some batches are the referee's probes (copies of rows still
to come, cut and continued otherwise), answered like any other.

Loader options: `accum_steps` (micro-batches per step: 1 GPU with 8 gives the same steps as 8 GPUs),
`layout="flat"` (a flat batch of documents aligned to BOS with `cu_seqlens`, for variable-length attention),
`align_to_bos`, `max_doc_len`, and `train.set(batch_tokens=..., seq_len=..., accum_steps=...)` between steps for
batch-size and sequence-length schedules. Which tokens a step sees never depends on the world size or the
accumulation (`speedrun.data.streams`). Validation takes the same `batch_tokens`, `seq_len` and `layout` keywords
(default: one micro-batch of the loader); they must tile the track's val tokens exactly, in at least 512 rows
(tiny: rows of at most 512 tokens; gpt2-small: 20,480).

The replica check. `finish()`, after the clock stops and before the scored rows, hands the referee the state
(`state_dict()`) of the model given to `warmup()`, and its train/eval mode. After the repetitions the launcher
starts the script once more, in a fresh sandbox: it runs from its first line to `start()`, which loads each
repetition's state into the model given to `warmup()`, calls the `logits_fn` given to `start()` (else that
model) on scored rows cut after positions the script was never told, and ends the process there. The scored
losses at those positions must be what that model gives from the prefix alone (exactly, up to rounding): so
`logits_fn` may depend on that model's state and its inputs only, and the script must reach `start()` again
as it did (no state from outside its process). A run without the check (`--no-replica`) is never a record. An
API 1 script's `start()` has no `logits_fn`, so its replica calls the model itself: where that differs from the
scored `logits_fn` (autocast, say) the run is left unchecked, not accused; give `start()` the `logits_fn`.

API 1 scripts keep running unchanged: `run.validate(loss_fn, step=..., logits_fn=...)` (the loss_fn is no
longer called), `run.start()` without arguments (the start check then calls the model given to `warmup()`).

## Trust

The script holds nothing the verdict rests on: its `Run` only asks. The referee agents in the launcher's
process serve every batch, grant and stamp every phase, and compute the loss from the logits the script hands
back; the ranks run in an OS sandbox. What that stops and what remains is stated once, in the README's
"Threat model".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from speedrun import env
from speedrun.errors import SpeedrunError
from speedrun.rank import bootstrap
from speedrun.rank.run import LAYOUTS, LogitsFn, Run, TrainLoader  # noqa: F401  (the public surface)


# --- init -------------------------------------------------------------------------------------------------------


def _track_from_argv() -> str | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--track")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.track


def init(track: str | None = None, seed: int | None = None, *, data_dir: str | None = None) -> Run:
    """Set up the referee for this process and return its `Run`.

    Under `speedrun run` everything (track, seed, data, run directory) comes from the launcher and the
    arguments are ignored, except that a `track` naming another track is an error. Under plain `torchrun`
    or `python`, the track is `track`, else `--track` on the command line, else `$SPEEDRUN_TRACK`, and the
    seed is `seed`, else `$SPEEDRUN_SEED`, else 0; the run is then unrefereed."""
    session = bootstrap.current_session()
    if session is not None:
        wanted = track if isinstance(track, str) else getattr(track, "name", None)
        if wanted and Path(wanted).stem != session.track.name:
            raise SpeedrunError(f"speedrun.init(track={wanted!r}) but the launcher runs track {session.track.name}")
        return Run(session)
    if track is not None and not isinstance(track, str):
        track = str(getattr(track, "path", None) or getattr(track, "name", ""))  # a Track object
    name = track or _track_from_argv() or env.track()
    if not name:
        raise SpeedrunError("no track: pass speedrun.init(track=...), --track NAME, or set SPEEDRUN_TRACK")
    if seed is None:
        seed = env.seed()
    return Run(bootstrap.unrefereed_session(name, seed, Path(sys.argv[0]), data_dir))
