"""The submission contract: everything a training script may rely on, in one file, top to bottom.

A submission is one self-contained script launched by torchrun. It owns its model, optimizer and loop; the
referee (this module) owns the data, the clock and the measurement of validation loss:

    import speedrun
    run = speedrun.init()                                # distributed set-up, device, seed, track, evidence
    train = run.train_loader(batch_tokens=..., seq_len=...)  # this rank's slice of the canonical train stream
    with run.warmup(model, optimizers):                  # untimed; on exit the referee restores the model and
        ...                                              #   optimizer state and rewinds the stream itself
    run.start()                                          # the clock starts (device sync + barrier)
    for step in range(steps):
        inputs, targets = next(train)
        ...forward, backward, optimizer step...
        if last_step or step % 100 == 0:
            run.validate(loss_fn, step=step)             # clock paused; the referee reads the val tokens itself
    run.finish()                                         # the clock stops; the last validation is the result

Rules the referee enforces (and `speedrun verify` re-checks from the evidence):
- `loss_fn(inputs, targets)` returns the per-token loss in nats, shape [B, T]. The referee sums it, all-reduces
  and divides by exactly the track's val token count. A batch shape that does not tile the val tokens is an error.
- The clock counts everything between `start()` and `finish()` except validations. Each boundary is a device sync
  and a barrier, so asynchronous GPU work is never hidden from the clock.
- Warm-up can never be free training: its digests of model+optimizer state before and after are recorded,
  and training batches taken before `start()` outside `warmup()` fail the run.
- `finish()` must follow a validation with no training in between (the result is measured on the final model).
  It then runs the probes: causality (perturbing inputs from a position on must not move earlier losses) and,
  when `logits_fn` is given to `validate` or the track requires it, normalisation (probabilities over the
  vocabulary sum to 1, and `loss_fn` equals -log p(target)). A failed probe fails the run.
- Reading the val files outside validation is noted as a warning in the evidence.
- Training steps are counted by the referee (batches served), not taken from the script.

The track comes from `init(track=...)`, else `--track NAME` on the command line, else `$SPEEDRUN_TRACK`. Under
`speedrun run` the launcher sets the run directory and repetition; under plain `torchrun script.py --track T`
rank 0 creates `runs/<track>/<stamp>_<script>/` with a copy of the script and a manifest.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import hashlib
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from speedrun import API_VERSION, __version__, data, evidence
from speedrun.errors import SpeedrunError
from speedrun.tracks import Track, load_track

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, targets) -> per-token loss [B, T]
LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # inputs -> logits [B, T, V]

TRAIN_EVENT_EVERY = 10  # sample one train event every this many batches (no device sync)


class Clock:
    """Timed seconds between start and finish, minus the pauses (validations)."""

    def __init__(self) -> None:
        self.started = self.finished = None
        self.paused = 0.0
        self._pause_began = None

    def timed(self, now: float | None = None) -> float:
        if self.started is None:
            return 0.0
        now = time.perf_counter() if now is None else now
        end = self._pause_began or self.finished or now
        return end - self.started - self.paused

    def pause(self) -> None:
        self._pause_began = time.perf_counter()

    def resume(self) -> float:
        spent = time.perf_counter() - self._pause_began
        self.paused += spent
        self._pause_began = None
        return spent


class TrainLoader:
    """This rank's slice of the canonical train stream; the referee counts the batches and tokens it serves.

    With `accum_steps > 1` each `next()` gives one micro-batch (1/accum_steps of the step's global batch, in
    stream order), so N ranks accumulating 8/N micro-batches see the same tokens per step as 8 ranks."""

    def __init__(self, run: "Run", stream: data.TrainStream, batch_tokens: int, seq_len: int, accum_steps: int):
        self._run, self._stream = run, stream
        self.batch_tokens, self.seq_len, self.accum_steps = batch_tokens, seq_len, accum_steps
        self.micro_batches = 0

    @property
    def batches(self) -> int:
        """Full (global) batches served: the referee's step count."""
        return self.micro_batches // self.accum_steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(self._stream)
        self.micro_batches += 1
        if self.micro_batches % (TRAIN_EVENT_EVERY * self.accum_steps) == 0 and self._run._timing:
            self._run._event("train", batches=self.batches, timed_s=round(self._run.clock.timed(), 4),
                             tokens=self._stream.tokens_served)
        return batch

    @property
    def tokens_served(self) -> int:
        return self._stream.tokens_served

    def _snapshot(self) -> tuple[dict, int]:
        return self._stream.state_dict(), self.micro_batches

    def _restore(self, snap: tuple[dict, int]) -> None:
        self._stream.load_state_dict(snap[0])
        self.micro_batches = snap[1]


class Run:
    """What `speedrun.init()` returns: the referee for this process. Attributes a submission may read:
    `track`, `rank`, `local_rank`, `world_size`, `device`, `seed`, `is_master`, `run_dir`, `repetition`."""

    def __init__(self, track: Track, seed: int, run_dir: Path, repetition: int, data_dir: Path | None):
        self.track = track
        self.seed = seed
        self.run_dir = run_dir
        self.repetition = repetition
        self.rank, self.local_rank, self.world_size, self.device = _setup_distributed()
        self.is_master = self.rank == 0
        self.clock = Clock()
        self._timing = False
        self._loader: TrainLoader | None = None
        self._last_val: dict | None = None
        self._last_loss_fn: LossFn | None = None
        self._last_logits_fn: LogitsFn | None = None
        self._val_shape: tuple[int, int] | None = None
        self._in_validation = False
        self._finished = False
        self._warnings: set[str] = set()
        self._writer = evidence.EventWriter(evidence.events_path(run_dir, repetition)) if self.is_master else None
        if self._writer:
            atexit.register(self._writer.seal)

        _seed_everything(seed)
        if self.is_master:
            self._train_files, self._val_files = data.track_files(track, data_dir)
        self._barrier()
        if not self.is_master:
            self._train_files, self._val_files = data.track_files(track, data_dir)
        self._val_paths = {os.path.realpath(p) for p in self._val_files}
        _watch_val_reads(self)
        self._event("init", api_version=API_VERSION, harness_version=__version__, track=track.name,
                    world_size=self.world_size, device=str(self.device), seed=seed,
                    device_name=_device_name(self.device))

    # --- data ---------------------------------------------------------------------------------------------

    def train_loader(self, batch_tokens: int, seq_len: int, *, accum_steps: int = 1, align_to_bos: bool = False,
                     max_doc_len: int | None = None) -> TrainLoader:
        """This rank's slice of the canonical train stream: each `next()` gives `(inputs, targets)` of shape
        [batch_tokens // accum_steps // world_size // seq_len, seq_len], int64, on `run.device`.
        `batch_tokens` is the global batch of one optimizer step; `accum_steps` micro-batches make one step."""
        if self._loader is not None:
            raise SpeedrunError("train_loader() may be called once per run")
        checks = self.track.checks
        if checks.fixed_batch_tokens and batch_tokens != checks.fixed_batch_tokens:
            raise SpeedrunError(f"track {self.track.name} fixes batch_tokens={checks.fixed_batch_tokens}, "
                                f"got {batch_tokens}")
        if checks.fixed_seq_len and seq_len != checks.fixed_seq_len:
            raise SpeedrunError(f"track {self.track.name} fixes seq_len={checks.fixed_seq_len}, got {seq_len}")
        if accum_steps < 1 or batch_tokens % (accum_steps * self.world_size * seq_len):
            raise SpeedrunError(f"batch_tokens={batch_tokens} is not a multiple of accum_steps*world_size*seq_len="
                                f"{accum_steps * self.world_size * seq_len}")
        stream = data.TrainStream(self._train_files, batch_tokens // accum_steps, seq_len, rank=self.rank,
                                  world_size=self.world_size, device=self.device, align_to_bos=align_to_bos,
                                  bos_token=self.track.bos_token, max_doc_len=max_doc_len)
        self._loader = TrainLoader(self, stream, batch_tokens, seq_len, accum_steps)
        self._event("loader", batch_tokens=batch_tokens, seq_len=seq_len, accum_steps=accum_steps,
                    align_to_bos=align_to_bos, max_doc_len=max_doc_len)
        return self._loader

    # --- warm-up --------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def warmup(self, model: torch.nn.Module, optimizers=()):
        """Untimed block for compilation and kernel warm-up. On exit the referee restores the model and
        optimizer state, the train stream position and the RNG state, and records digests before and after."""
        if self._timing or self.clock.started is not None:
            raise SpeedrunError("warmup() must come before start()")
        optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        began = time.perf_counter()
        model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt_states = [copy.deepcopy(o.state_dict()) for o in optimizers]
        loader_state = self._loader._snapshot() if self._loader else None
        rng = _rng_state()
        before = _digest(model, optimizers)
        try:
            yield
        finally:
            _sync(self.device)
            model.load_state_dict(model_state)
            for opt, state in zip(optimizers, opt_states):
                opt.load_state_dict(state)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            if self._loader and loader_state:
                self._loader._restore(loader_state)
            _set_rng_state(rng)
            after = _digest(model, optimizers)
            self._barrier()
            self._event("warmup", seconds=round(time.perf_counter() - began, 3), digest_before=before,
                        digest_after=after, restored=before == after)

    # --- the clock ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the clock, after a device sync and a barrier."""
        if self.clock.started is not None:
            raise SpeedrunError("start() called twice")
        self._barrier()
        self.clock.started = time.perf_counter()
        self._timing = True
        # after warm-up the stream is rewound: anything served now was trained on outside the clock
        self._event("start", micro_batches=self._loader.micro_batches if self._loader else 0)

    def validate(self, loss_fn: LossFn, step: int | None = None, *, batch_tokens: int | None = None,
                 seq_len: int | None = None, logits_fn: LogitsFn | None = None) -> float:
        """Measure the mean val loss over exactly the track's val tokens, with the clock paused.

        `batch_tokens` (global per step) and `seq_len` default to the train loader's (one micro-batch); they
        must tile the val tokens. Returns the loss (the same number on every rank)."""
        if self.clock.started is None:
            raise SpeedrunError("validate() before start()")
        if self._finished:
            raise SpeedrunError("validate() after finish()")
        self._barrier()
        self.clock.pause()
        timed_s = self.clock.timed()
        seq_len = seq_len or (self._loader.seq_len if self._loader else None)
        batch_tokens = batch_tokens or (self._loader.batch_tokens // self._loader.accum_steps if self._loader else None)
        if not seq_len or not batch_tokens:
            raise SpeedrunError("validate() needs seq_len and batch_tokens when there is no train loader")
        self._in_validation = True
        try:
            loss, tokens = self._measure(loss_fn, batch_tokens, seq_len)
        finally:
            self._in_validation = False
        self._barrier()
        seconds = self.clock.resume()
        self._last_loss_fn, self._last_logits_fn = loss_fn, logits_fn
        self._val_shape = (batch_tokens, seq_len)
        batches = self._loader.batches if self._loader else 0
        micro = self._loader.micro_batches if self._loader else 0
        self._last_val = self._event("val", step=step, batches=batches, micro_batches=micro, timed_s=round(timed_s, 4),
                                     loss=loss, tokens=tokens, seconds=round(seconds, 4),
                                     batch_tokens=batch_tokens, seq_len=seq_len)
        return loss

    def finish(self) -> dict:
        """Stop the clock; run the probes on the final model; seal the evidence. Returns the result."""
        if self.clock.started is None:
            raise SpeedrunError("finish() before start()")
        if self._finished:
            raise SpeedrunError("finish() called twice")
        self._barrier()
        self.clock.finished = time.perf_counter()
        self._timing = False
        self._finished = True
        timed_s = self.clock.timed()
        batches = self._loader.batches if self._loader else 0
        micro = self._loader.micro_batches if self._loader else 0
        tokens = self._loader.tokens_served if self._loader else 0
        self._event("finish", batches=batches, micro_batches=micro, timed_s=round(timed_s, 4), tokens=tokens)
        last = self._last_val
        if last is None or last["micro_batches"] != micro:
            self._event("probe", name="final-validation", passed=False,
                        detail="finish() must directly follow a validation of the final model")
        else:
            self._run_probes()
        if self._writer:
            self._writer.seal()
        return {"val_loss": last["loss"] if last else math.nan, "timed_s": timed_s, "batches": batches}

    # --- measurement and probes -------------------------------------------------------------------------------

    def _val_stream(self, batch_tokens: int, seq_len: int) -> data.ValStream:
        if batch_tokens <= 0 or self.track.val_tokens % batch_tokens:
            raise SpeedrunError(f"validation batch of {batch_tokens} tokens does not tile the track's "
                                f"{self.track.val_tokens} val tokens")
        return data.ValStream(self._val_files, self.track.val_tokens, batch_tokens, seq_len, rank=self.rank,
                              world_size=self.world_size, device=self.device)

    @torch.no_grad()
    def _measure(self, loss_fn: LossFn, batch_tokens: int, seq_len: int) -> tuple[float, int]:
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        for inputs, targets in self._val_stream(batch_tokens, seq_len):
            losses = loss_fn(inputs, targets)
            if tuple(losses.shape) != tuple(targets.shape):
                raise SpeedrunError(f"loss_fn must return per-token losses of shape {tuple(targets.shape)}, "
                                    f"got {tuple(losses.shape)}")
            total[0] += losses.double().sum()
            total[1] += losses.numel()
        if dist.is_initialized():
            dist.all_reduce(total)
        tokens = int(total[1].item())
        if tokens != self.track.val_tokens:
            raise SpeedrunError(f"validation covered {tokens} tokens, the track needs {self.track.val_tokens}")
        return float(total[0].item()) / self.track.val_tokens, tokens

    @torch.no_grad()
    def _run_probes(self) -> None:
        batch_tokens, seq_len = self._val_shape
        self._in_validation = True
        try:
            inputs, targets = next(iter(self._val_stream(batch_tokens, seq_len)))
            for name, outcome in _probes(self._last_loss_fn, self._last_logits_fn, inputs, targets,
                                         self.track.vocab_size, self.seed):
                self._event("probe", name=name, **outcome)
            if self._last_logits_fn is None and self.track.checks.require_logits:
                self._event("probe", name="normalisation", passed=False,
                            detail=f"track {self.track.name} requires validate(..., logits_fn=...)")
        finally:
            self._in_validation = False

    # --- plumbing -------------------------------------------------------------------------------------------

    def _barrier(self) -> None:
        _sync(self.device)
        if dist.is_initialized():
            dist.barrier()

    def _event(self, kind: str, **fields) -> dict:
        if self._writer:
            return self._writer.write(kind, **fields)
        return {"event": kind, **fields}

    def warn(self, message: str) -> None:
        """Record a warning in the evidence (once per distinct message)."""
        if message not in self._warnings:
            self._warnings.add(message)
            self._event("warning", message=message)

    def print0(self, *args, **kwargs) -> None:
        """print() on rank 0 only."""
        if self.is_master:
            print(*args, **kwargs, flush=True)


# --- probes ----------------------------------------------------------------------------------------------------


def _tolerance(losses: torch.Tensor) -> float:
    return 2e-2 if losses.dtype in (torch.bfloat16, torch.float16) else 1e-4


def _at_val_shape(fn, rows: torch.Tensor, filler: torch.Tensor) -> torch.Tensor:
    """Apply `fn` to `rows` in chunks of exactly the validation batch's row count (padding the last chunk
    with rows of `filler`), so a compiled model sees no new shape; returns the outputs of `rows` only."""
    B = filler.shape[0]
    outs = []
    for start in range(0, rows.shape[0], B):
        chunk = rows[start:start + B]
        n = chunk.shape[0]
        if n < B:
            chunk = torch.cat([chunk, filler[: B - n]])
        outs.append(fn(chunk)[:n])
    return torch.cat(outs)


def _probes(loss_fn: LossFn, logits_fn: LogitsFn | None, inputs, targets, vocab_size: int,
            seed: int) -> list[tuple[str, dict]]:
    """The final probes on one validation batch ([B, T], the shape validation used).

    causality: for a few positions j, every input from j on is replaced by random tokens; the losses before j
    must not move beyond dtype noise. All perturbed copies go through the model together with the originals.
    normalisation (when `logits_fn` is given): at sampled positions the distribution covers the vocabulary,
    its probabilities sum to 1, and `loss_fn`'s loss is -log p(target) under it."""
    B, T = inputs.shape
    n = min(2, B)
    gen = torch.Generator().manual_seed(seed + 1)
    positions = sorted({T // 2, max(1, T // 8), int(torch.randint(1, T, (1,), generator=gen))})
    rows, row_targets = [inputs[:n]], [targets[:n]]
    for j in positions:
        changed = inputs[:n].clone()
        changed[:, j:] = torch.randint(0, vocab_size, changed[:, j:].shape, generator=gen).to(changed.device)
        rows.append(changed)
        row_targets.append(targets[:n])
    rows_t, targets_t = torch.cat(rows), torch.cat(row_targets)
    pairs = torch.stack([rows_t, targets_t], dim=1)  # chunk inputs and targets together
    filler = torch.stack([inputs, targets], dim=1)
    losses = _at_val_shape(lambda c: loss_fn(c[:, 0], c[:, 1]), pairs, filler).float()
    base = losses[:n]
    tol = _tolerance(losses)
    worst, causal = 0.0, None
    for i, j in enumerate(positions, start=1):
        moved = (losses[i * n:(i + 1) * n, :j] - base[:, :j]).abs().max().item()
        worst = max(worst, moved)
        if causal is None and not moved <= tol * (1 + base[:, :j].abs().max().item()):
            causal = {"passed": False, "detail": f"losses before position {j} moved by {moved:.3g} when inputs "
                                                 f"from {j} on were changed (tolerance {tol:g}): the model sees "
                                                 f"the future"}
    results = [("causality", causal or {"passed": True, "detail": f"positions {positions}; largest change "
                                                                  f"before them {worst:.3g}"})]
    if logits_fn is not None:
        results.append(("normalisation", _normalisation(logits_fn, inputs, targets, base, vocab_size, seed)))
    return results


def _normalisation(logits_fn: LogitsFn, inputs, targets, base_losses, vocab_size: int, seed: int) -> dict:
    logits = logits_fn(inputs)
    if logits.dim() != 3 or logits.shape[:2] != inputs.shape or logits.shape[2] < vocab_size:
        return {"passed": False, "detail": f"logits_fn must return [B, T, V>={vocab_size}], got "
                                           f"{tuple(logits.shape)}"}
    n, T = base_losses.shape
    gen = torch.Generator().manual_seed(seed + 2)
    rows = torch.randint(0, n, (16,), generator=gen)
    cols = torch.randint(0, T, (16,), generator=gen)
    r, c = rows.to(logits.device), cols.to(logits.device)
    picked = logits[r, c].double().cpu()
    logp = torch.log_softmax(picked, dim=-1)
    total = logp.exp().sum(-1)
    if not torch.isfinite(picked).all() or (total - 1).abs().max().item() > 1e-6:
        return {"passed": False, "detail": "probabilities do not sum to 1 (non-finite logits?)"}
    expected = -logp[torch.arange(16), targets[r, c].cpu()]
    got = base_losses[r, c].double().cpu()
    gap = (expected - got).abs().max().item()
    tol = 5e-2 if logits.dtype in (torch.bfloat16, torch.float16) else 2e-3
    if gap > tol:
        return {"passed": False, "detail": f"loss_fn differs from -log softmax(logits)[target] by {gap:.3g}"}
    return {"passed": True, "detail": f"16 positions; sum of probabilities 1 within 1e-6; loss gap {gap:.2g}"}


# --- process set-up ----------------------------------------------------------------------------------------------


def _setup_distributed() -> tuple[int, int, int, torch.device]:
    """nccl on CUDA, gloo on CPU; `SPEEDRUN_DEVICE=cpu` forces the CPU on a GPU machine. Under torchrun the
    process group is set up even for one process, so the same collectives run at every world size."""
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and os.environ.get("SPEEDRUN_DEVICE", "") != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ or world_size > 1
    if under_torchrun and not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        kwargs = {"device_id": device} if use_cuda else {}
        dist.init_process_group(backend=backend, **kwargs)
    return rank, local_rank, world_size, device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _digest(model: torch.nn.Module, optimizers) -> str:
    """sha256 over the model's state and every tensor in the optimizers' state, in a fixed order."""
    h = hashlib.sha256()

    def add(name: str, value) -> None:
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(str(t.dtype).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(value, dict):
            for k in sorted(value, key=str):
                add(f"{name}.{k}", value[k])
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                add(f"{name}[{i}]", v)
        else:
            h.update(repr(value).encode())

    for k, v in model.state_dict().items():
        add(k, v)
    for i, opt in enumerate(optimizers):
        add(f"opt{i}", opt.state_dict())
    return h.hexdigest()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


_WATCHED: list[Run] = []


def _watch_val_reads(run: Run) -> None:
    """Note (as a warning) any open() of a val file outside validation, via a Python audit hook."""
    _WATCHED[:] = [run]
    if getattr(_watch_val_reads, "installed", False):
        return

    def hook(event: str, args: tuple) -> None:
        if event != "open" or not _WATCHED:
            return
        r = _WATCHED[0]
        path = args[0]
        if r._in_validation or not isinstance(path, (str, bytes, os.PathLike)):
            return
        try:
            real = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        if real in r._val_paths:
            r.warn(f"val file {os.path.basename(real)} opened outside validation")

    sys.addaudithook(hook)
    _watch_val_reads.installed = True


# --- init -------------------------------------------------------------------------------------------------------


def _track_from_argv() -> str | None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--track")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.track


def init(track: str | Track | None = None, seed: int | None = None, *, data_dir: str | None = None) -> Run:
    """Set up the referee for this process and return its `Run`.

    The track is `track`, else `--track` on the command line, else `$SPEEDRUN_TRACK`. The seed is `seed`, else
    `$SPEEDRUN_SEED`, else 0. Under `speedrun run` the run directory and repetition come from the launcher;
    otherwise rank 0 creates a run directory under `runs/` (or `$SPEEDRUN_RUNS_DIR`)."""
    name = track or _track_from_argv() or os.environ.get("SPEEDRUN_TRACK")
    if not name:
        raise SpeedrunError("no track: pass speedrun.init(track=...), --track NAME, or set SPEEDRUN_TRACK")
    track_obj = name if isinstance(name, Track) else load_track(name)
    if seed is None:
        seed = int(os.environ.get("SPEEDRUN_SEED", 0))
    run_dir_env = os.environ.get("SPEEDRUN_RUN_DIR")
    repetition = int(os.environ.get("SPEEDRUN_REPETITION", 1))
    if run_dir_env:
        run_dir = Path(run_dir_env)
    else:
        from speedrun import launcher  # a plain torchrun launch: rank 0 lays out the run directory itself

        run_dir = launcher.standalone_run_dir(track_obj, Path(sys.argv[0]), seed,
                                              is_master=int(os.environ.get("RANK", 0)) == 0)
    return Run(track_obj, seed, run_dir, repetition, Path(data_dir) if data_dir else None)
