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
cross-entropy itself, in chunks, over all V columns.

Loader options: `accum_steps` (micro-batches per step: 1 GPU with 8 gives the same steps as 8 GPUs),
`layout="flat"` (a flat batch of documents aligned to BOS with `cu_seqlens`, for variable-length attention),
`align_to_bos`, `max_doc_len`, and `train.set(batch_tokens=..., seq_len=..., accum_steps=...)` between steps for
batch-size and sequence-length schedules. Which tokens a step sees never depends on the world size or the
accumulation (`speedrun.data.streams`). Validation takes the same `batch_tokens`, `seq_len` and `layout` keywords
(default: one micro-batch of the loader); they must tile the track's val tokens exactly.

API 1 scripts keep running unchanged: `run.validate(loss_fn, step=..., logits_fn=...)` (the loss_fn is no
longer called), `run.start()` without arguments (the start check then calls the model given to `warmup()`).

## Threat model

The harness and the machine are trusted; the submission script is not. Every figure the verdict rests on
comes from code the script cannot reach, or from checks it cannot tell apart from normal work, on every rank.

Tier 1 (this harness, no special privileges): `speedrun run` is the referee. It runs in its own process,
starts each rank through `speedrun.rank.bootstrap` (which connects to the referee and installs an audit hook
*before* the script's first line runs), and keeps one referee agent per rank on its side of a Unix socket
(`speedrun.referee.agent`). The rank process holds no data and no verdict: it asks its agent for each train
micro-batch and each validation batch's *inputs* (handed over in shared memory), and hands back logits; the
agent owns:
- the clock: start, validation and finish are requests the agent grants and stamps on the launcher's
  monotonic clock; a validation pauses it from the agent handing out the first batch to its receiving the
  last logits, within a budget (`[budget]` of the track: the first validations free, then at most a
  fraction of the timed seconds; time before start() outside warm-up and warm-up itself likewise; beyond
  a budget the time counts as timed); the evidence file is written by the launcher and rewritten from its
  memory when the repetition ends;
- the data and the counters: the batches it served (steps, micro-batches, tokens, per rank) in the shape
  the loader asked for (`set()` is a request; the loader's attributes in the rank are the script's view);
  the seeds (chosen by the launcher and checked on every rank; identical repetitions are refused), and the
  pins (sha256 of the harness, the track file and the data files as used; any change is a problem);
- the measurement: validation sums, token counts and probe measurements computed by the agents, with the
  targets and the probe plan in the launcher's process only; disagreement between ranks is refused.
- the scored val tokens: intermediate validations measure a *monitor split* (val tokens after the scored
  ones, `[val] monitor_tokens`); the scored tokens are first handed out by the validation finish() asks
  for, after the clock stopped; the start check uses the monitor split too. (A track whose val shard holds
  nothing after its scored tokens, like tiny, validates on the scored tokens throughout, as v2 did.)
The loss is cross-entropy computed by the referee's code from the model's logits; one extra batch per
validation holds spliced copies of real val rows at a random place (from OS randomness), so a model that
peeks ahead or changes during validation moves outputs it cannot know are compared. Warm-up sees random
tokens; the loader refuses to serve before `start()` (outside warm-up), during a validation and after
`finish()`; at `start()` the model's loss on a fixed val subset must not be below the no-data level (the
unigram entropy of the val tokens); any open of a train or val file by the script is a problem; torch's
inductor config is checked at `start()` and `finish()`.

Residual risks of tier 1 (closed by tier 2's OS sandbox, and in the end by replay under a trusted harness):
- a script that digs out the bootstrap's socket (e.g. through `gc`) can still make requests of its own; each
  is checked against the agent's state like the harness's own (a forged result has no message to travel in);
  the data files themselves stay readable until the sandbox stops binding them (the audit hook and the data
  watch report reads);
- a model trained before the clock and *loaded after* `start()` (the start check only sees the model at
  start), or weights carried between repetitions in files outside the run directory;
- work hidden in a background thread on data it already holds while validation pauses the clock, when it
  does not change the model being evaluated (bounded by the validation budget);
- a forged `.pyc` of a harness module (the pins cover sources).

Under plain `torchrun script.py` (no launcher) the same referee runs inside rank 0's process: the run
directory is complete, but it is marked unrefereed and can never qualify for a record.
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
