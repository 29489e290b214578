"""The rank side of the contract: `Run` and `TrainLoader`, what `speedrun.init()` hands a submission.

This is the implementation behind `speedrun/spec.py` (which holds the contract alone). It runs inside the
submission's processes, so nothing here is trusted with a verdict: every method asks the rank's referee agent
(`speedrun.referee.agent`, outside this process) through the rank's `bootstrap.Session`, which serves the
batches, grants and stamps the phases, and measures the logits this process computes on inputs it is given.
The attributes kept here (`batch_tokens`, `micro_batches`, the phase) are the script's view only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

from speedrun.rank import bootstrap
from speedrun.version import API_VERSION
from speedrun.errors import SpeedrunError

LogitsFn = Callable[..., "object"]   # (inputs) or (inputs, cu_seqlens) -> logits
LAYOUTS = ("rows", "flat")
CALLS = {"rows": "logits_fn(inputs)", "flat": "logits_fn(inputs, cu_seqlens)"}  # how each layout calls it


class Clock:
    """The script's own view of timed seconds (for printing only: the launcher's clock is the record)."""

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
    """This rank's share of the canonical train stream. `next(loader)` gives one micro-batch:
    rows: (inputs, targets) int64 [b, seq_len]; flat: (inputs, targets, cu_seqlens) with [n] inputs.
    `set()` changes the shape from the next step on. The referee's agent serves and counts the batches; the
    shape it serves is the one `set()` asked it for, whatever these attributes say."""

    def __init__(self, run: "Run", batch_tokens: int, seq_len: int, accum_steps: int, layout: str,
                 align_to_bos: bool, max_doc_len: int | None):
        self._run = run
        self.tokens_served = 0       # this rank's tokens (inputs) received in the timed run
        self.layout, self.align_to_bos, self.max_doc_len = layout, bool(align_to_bos) or layout == "flat", max_doc_len
        self.batch_tokens = self.seq_len = self.accum_steps = 0
        self.micro_batches = 0       # served in the timed run (this rank)
        self.batches = 0             # full steps served in the timed run (this rank)
        self._micro = 0              # position inside the current step
        self._step = None
        self._apply(batch_tokens, seq_len, accum_steps)

    def _apply(self, batch_tokens: int, seq_len: int, accum_steps: int) -> None:
        from speedrun.data import streams

        run = self._run
        streams.check_shape(batch_tokens, seq_len, run.world_size, accum_steps,
                         max_seq_len=run.track.checks.max_seq_len, what="train_loader")
        run._session.request("loader", batch_tokens=int(batch_tokens), seq_len=int(seq_len),
                             accum_steps=int(accum_steps), layout=self.layout, align_to_bos=self.align_to_bos,
                             max_doc_len=self.max_doc_len)
        self.batch_tokens, self.seq_len, self.accum_steps = int(batch_tokens), int(seq_len), int(accum_steps)

    def set(self, batch_tokens: int | None = None, seq_len: int | None = None,
            accum_steps: int | None = None) -> None:
        """Change the step shape (schedules); takes effect at the next step, never inside one."""
        if self._micro:
            raise SpeedrunError(f"train_loader.set() in the middle of a step ({self._micro} of {self.accum_steps} "
                                f"micro-batches served)")
        self._apply(batch_tokens or self.batch_tokens, seq_len or self.seq_len, accum_steps or self.accum_steps)

    @property
    def shape(self) -> tuple[int, int]:
        """(pieces per micro-batch on this rank, seq_len)."""
        return self.batch_tokens // (self._run.world_size * self.accum_steps * self.seq_len), self.seq_len

    def __iter__(self) -> "TrainLoader":
        return self

    def __next__(self):
        from speedrun.data import streams

        run = self._run
        if run._phase == "warmup":
            run._send("batch")
            self._micro = (self._micro + 1) % self.accum_steps
            return streams.random_batch(self.shape, run.track.vocab_size, run.track.bos_token, run._warm_rng,
                                     self.layout, run.device)
        batch = run._session.next_batch(self.layout)  # the agent refuses (and records) out of phase
        self.tokens_served += batch[0].numel()
        self.micro_batches += 1
        self._micro = (self._micro + 1) % self.accum_steps
        if self._micro == 0:
            self.batches += 1
        return batch


class Run:
    """What `speedrun.init()` returns. Attributes a submission may read: `track`, `rank`, `local_rank`,
    `world_size`, `device`, `seed`, `is_master`, `repetition`, `run_dir`, `refereed`, `clock`."""

    def __init__(self, session: "bootstrap.Session"):
        self._session = session
        self.track = session.track
        self.seed = session.seed
        self.repetition = session.repetition
        self.run_dir = Path(session.run_dir) if session.run_dir else None
        self.refereed = session.refereed
        self.rank, self.local_rank, self.world_size, self.device = session.setup_distributed()
        self.is_master = self.rank == 0
        self.clock = Clock()
        self._phase = "init"
        self._loader: TrainLoader | None = None
        self._model = None
        self._start_params: str | None = None
        self._val_count = 0
        self._last_val = (None, None)
        self._last_loss = math.nan
        self._logs: list = []
        self._model_described = False
        import numpy as np

        self._warm_rng = np.random.default_rng([self.seed, self.rank, 7919])
        if session.integrity is not None:
            session.integrity.run = self
        self._send("init", api_version=API_VERSION, device=str(self.device), device_name=session.device_name(),
                   seed=self.seed, world_size=self.world_size)

    def _send(self, kind: str, **fields) -> None:
        self._session.send(kind, **fields)

    # --- data ---------------------------------------------------------------------------------------------

    def train_loader(self, batch_tokens: int, seq_len: int, *, accum_steps: int = 1, layout: str = "rows",
                     align_to_bos: bool = False, max_doc_len: int | None = None) -> TrainLoader:
        """This rank's share of the canonical train stream (see `TrainLoader`). `batch_tokens` is the global
        batch of one optimizer step; each `next()` is one of its `accum_steps` micro-batches on this rank."""
        if self._loader is not None:
            raise SpeedrunError("train_loader() may be called once per run (use train.set() for schedules)")
        if layout not in LAYOUTS:
            raise SpeedrunError(f"train_loader: layout must be 'rows' or 'flat', got {layout!r}")
        broken = self.track.checks.shape_problems(self.track.name, batch_tokens, seq_len)
        if broken:
            raise SpeedrunError(f"train_loader: {broken[0]}")
        self._loader = TrainLoader(self, batch_tokens, seq_len, accum_steps, layout, align_to_bos, max_doc_len)
        return self._loader

    # --- the model ------------------------------------------------------------------------------------------

    def describe_model(self, model, flops_per_token: float | None = None) -> None:
        """Tell the referee the model's size for throughput reporting (tokens/s, FLOPs per token, MFU).

        `flops_per_token`: training FLOPs per token (forward + backward) if the script knows them (6N plus
        attention); else the referee uses 6N, N = parameters outside embedding tables. Informational only:
        no verdict depends on it. `warmup()` calls this with its model when the script has not."""
        import torch

        params = list({id(p): p for p in model.parameters()}.values())
        linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
        embedding = {id(m.weight): m.weight for m in model.modules() if isinstance(m, torch.nn.Embedding)
                     and id(m.weight) not in linear}
        n = sum(p.numel() for p in params)
        n_embed = sum(p.numel() for p in embedding.values())
        source = "declared by the script" if flops_per_token else "6N (N: parameters outside embeddings)"
        flops = float(flops_per_token) if flops_per_token else 6.0 * (n - n_embed)
        self._model_described = True
        if self.is_master:
            self._send("model", params=n, embedding_params=n_embed, flops_per_token=flops, flops_source=source)

    # --- warm-up ------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def warmup(self, model, optimizers=()):
        """Untimed block for compilation and kernel warm-up, on random tokens. On exit the referee restores
        the model and optimizer state, the loader's shape and the RNG state, and reports digests before and
        after."""
        if self._phase != "init":
            raise SpeedrunError("warmup() must come before start(), once")
        import torch

        optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]
        self._model = model
        if not self._model_described:
            self.describe_model(model)
        began = time.perf_counter()
        model_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        opt_states = [copy.deepcopy(o.state_dict()) for o in optimizers]
        loader = self._loader
        shape = (loader.batch_tokens, loader.seq_len, loader.accum_steps) if loader else None
        rng = _rng_state()
        before = _digest(model, optimizers)
        self._session.request("warmup_begin")
        self._phase = "warmup"
        try:
            yield
        finally:
            self._session.sync(self.device)
            self._phase = "init"
            model.load_state_dict(model_state)
            for opt, state in zip(optimizers, opt_states):
                opt.load_state_dict(state)
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            model.zero_grad(set_to_none=True)
            live = self._loader  # the loader now, which may have been made inside the block
            if live is not None:
                live._micro = 0
                if live is loader and (live.batch_tokens, live.seq_len, live.accum_steps) != shape:
                    live._apply(*shape)
            _set_rng_state(rng)
            after = _digest(model, optimizers)
            del model_state, opt_states
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._session.barrier(self.device)
            self._send("warmup_end", seconds=round(time.perf_counter() - began, 3), digest_before=before,
                       digest_after=after, restored=before == after)

    # --- the clock ------------------------------------------------------------------------------------------

    def _val_shape(self, batch_tokens, seq_len, layout) -> tuple[int, int, str]:
        loader = self._loader
        layout = layout or (loader.layout if loader else "rows")
        seq_len = seq_len or (loader.seq_len if loader else None)
        if batch_tokens is None and loader is not None:
            batch_tokens = loader.batch_tokens // loader.accum_steps
        if not seq_len or not batch_tokens:
            raise SpeedrunError("validation needs seq_len and batch_tokens when there is no train loader")
        if layout not in LAYOUTS:
            raise SpeedrunError(f"validation layout must be 'rows' or 'flat', got {layout!r}")
        return int(batch_tokens), int(seq_len), layout

    def _model_logits(self):
        model = self._model

        def logits_fn(inputs, cu_seqlens=None):
            return model(inputs) if cu_seqlens is None else model(inputs, cu_seqlens)
        return logits_fn

    def start(self, logits_fn: LogitsFn | None = None, *, batch_tokens: int | None = None,
              seq_len: int | None = None, layout: str | None = None) -> None:
        """Start the clock, after the start check: the model's loss on a fixed val subset (one batch of this
        rank's share, at the validation shape) must not be below the track's no-data level."""
        if self._phase != "init":
            raise SpeedrunError("start() called twice" if self._phase != "warmup" else "start() inside warmup()")
        if logits_fn is not None:  # here, before the timed work, not at the first validate() after it
            check_logits_fn(logits_fn, layout or (self._loader.layout if self._loader else "rows"), "start()")
        fn = logits_fn or (self._model_logits() if self._model is not None else None)
        if self._session.replica is not None:  # the replica run: it ends here (speedrun.referee.replica)
            self._replica(fn, bare=logits_fn is None)
        which = "logits_fn given to start()" if logits_fn else "model given to warmup()"
        logits, detail = None, "ok"
        if fn is None:
            detail = "no logits_fn given to start() and no model given to warmup()"
        else:
            try:
                bt, sl, layout = self._val_shape(batch_tokens, seq_len, layout)
                logits = self._session.start_check(fn, bt, sl, layout)
            except Exception as exc:  # the check's failure is the referee's to judge, not a crash
                detail = f"the {which} could not be called on val inputs: {type(exc).__name__}: {exc}"[:500]
                logits = None
        # untimed: finish() compares it, so a stand-in handed to warmup() that the run never trains is seen
        self._start_params = _param_digest(self._model) if self._model is not None else None
        self._session.barrier(self.device)
        self._session.request("start", inductor=bootstrap.inductor_changes(), logits=logits, detail=detail)
        self._phase = "timed"
        self.clock.started = time.perf_counter()

    def _replica(self, fn, bare: bool) -> None:
        """The replica run (the script started once more after the repetitions): check each repetition's sealed
        state with `fn` on rows this process has never seen, then end the process; the script goes no further."""
        if self._model is None or fn is None:
            raise SpeedrunError("the replica check loads the sealed state into the model given to warmup(): "
                                "this script gave none")
        self._session.run_replica(self._model, fn, bare)
        self._session.barrier(self.device)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def validate(self, fn=None, step: int | None = None, *, logits_fn: LogitsFn | None = None,
                 batch_tokens: int | None = None, seq_len: int | None = None, layout: str | None = None) -> float:
        """Measure the mean val loss over exactly the track's val tokens, with the clock paused; returns it
        (the same number on every rank). API 2: `validate(logits_fn, step=...)`. API 1:
        `validate(loss_fn, step=..., logits_fn=...)`, where the positional `loss_fn` is accepted and not called.
        The call tells them apart (API 1 names `logits_fn=`), never the function's arity: the flat layout's
        logits_fn(inputs, cu_seqlens) takes two arguments as a loss_fn(inputs, targets) does."""
        if self._phase != "timed":
            raise SpeedrunError({"init": "validate() before start()", "warmup": "validate() inside warmup()",
                                 "finished": "validate() after finish()"}.get(self._phase, "validate() now"))
        if logits_fn is None:
            if fn is None:
                raise SpeedrunError("validate() needs a logits_fn: the referee computes the loss from logits, "
                                    "validate(logits_fn, step=...)")
            logits_fn = fn
        step = _as_step(step)
        bt, sl, layout = self._val_shape(batch_tokens, seq_len, layout)
        check_logits_fn(logits_fn, layout, "validate()")
        self._session.barrier(self.device)
        self.clock.pause()
        self._phase = "val"
        try:
            loss = self._session.validate(logits_fn, step, bt, sl, layout)
        finally:
            self._phase = "timed"
            self.clock.resume()
        self._val_count += 1
        self._last_val = (logits_fn, step)
        self._last_loss = loss
        self._flush_logs()
        return self._last_loss

    def finish(self) -> dict:
        """Stop the clock. `finish()` must directly follow a validation of the final model."""
        if self._phase != "timed":
            raise SpeedrunError("finish() before start()" if self._phase in ("init", "warmup")
                                else "finish() called twice")
        self._session.sync(self.device)
        answer = self._session.request("finish", inductor=bootstrap.inductor_changes())
        self._phase = "finished"
        self.clock.finished = time.perf_counter()
        self._flush_logs()
        if answer.get("score"):  # the scored val tokens, first handed out now (the agent chose the shape)
            if self._session.seals and self._model is not None:  # before them: the replica check loads it
                self._session.seal(self._model)
            logits_fn, step = self._last_val
            self._last_loss = self._session.validate(logits_fn, step, answer["batch_tokens"], answer["seq_len"],
                                                     answer["layout"])
        if self._model is not None:  # untimed: lets the referee warn when ranks trained apart (no grad sync)
            self._send("params", digest=_param_digest(self._model), at_start=self._start_params)
        return {"val_loss": self._last_loss, "timed_s": self.clock.timed(),
                "batches": self._loader.batches if self._loader else 0}

    # --- logging --------------------------------------------------------------------------------------------

    def log(self, step: int | None = None, **scalars) -> None:
        """Record scalars (e.g. `train_loss=loss`) in the evidence and wandb, during the timed run (ignored in
        warm-up). Tensors are kept and read at the next validation, at finish(), or every 64 calls (one device
        sync per flush), never one sync per call. `step` defaults to the steps served so far."""
        if self._phase != "timed":
            return  # warm-up trains on random tokens: nothing worth keeping
        step = _as_step(step)
        if step is None and self._loader is not None:
            step = self._loader.batches
        self._logs.append((step, scalars))
        if len(self._logs) >= 64:
            self._flush_logs()

    def _flush_logs(self) -> None:
        if not self._logs:
            return
        import torch

        pending, self._logs = self._logs, []
        tensors = [v.detach().float().reshape(()) for _, s in pending for v in s.values()
                   if isinstance(v, torch.Tensor)]
        values = iter(torch.stack(tensors).cpu().tolist()) if tensors else iter(())
        for step, scalars in pending:
            out = {}
            for name, v in scalars.items():
                v = next(values) if isinstance(v, torch.Tensor) else v
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    out[str(name)] = float(v)
            if out and self.is_master:
                self._send("log", step=step, scalars=out)

    def warn(self, message: str) -> None:
        """Record a warning in the evidence."""
        self._send("warn", message=str(message))

    def print0(self, *args, **kwargs) -> None:
        """print() on rank 0 only."""
        if self.is_master:
            print(*args, **kwargs, flush=True)


# --- state digests and RNG ------------------------------------------------------------------------------------


def _rng_state() -> dict:
    import random

    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "random": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_step(step) -> int | None:
    """A step number as a plain int (a numpy or tensor integer would not survive the JSON on the channel)."""
    if step is None or type(step) is int:
        return step
    try:
        if float(step) == int(step):
            return int(step)
    except (TypeError, ValueError):
        pass
    raise SpeedrunError(f"step must be an integer, got {step!r}")


def check_logits_fn(fn, layout: str, where: str) -> None:
    """Refuse, in one line naming the fix, a function the referee cannot call the way `layout` calls a logits_fn
    (`CALLS`): whether it accepts those arguments, read from its signature (one that has none, a builtin, is
    left to the call itself)."""
    import inspect

    if not callable(fn):
        raise SpeedrunError(f"{where}: expected a logits_fn, got {type(fn).__name__}")
    if layout not in CALLS:
        return  # the validation shape refuses it, with its own message
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*[None] * (1 if layout == "rows" else 2))
        return
    except TypeError:
        pass
    shown = f"{getattr(fn, '__name__', type(fn).__name__)}{signature}"
    if layout == "rows":
        fix = ("hand it logits_fn(inputs) returning [B, T, V] logits; an API 1 loss_fn(inputs, targets) goes only to "
               "validate(loss_fn, step=..., logits_fn=logits_fn), and a logits_fn(inputs, cu_seqlens) needs "
               "layout=\"flat\"")
    else:
        fix = "accept the documents' boundaries too: def logits_fn(inputs, cu_seqlens)"
    raise SpeedrunError(f"{where}: {shown} cannot be called as {CALLS[layout]} (the {layout} layout's call): {fix}")


def _param_digest(model) -> str:
    """A cheap digest of the parameters, computed on their device: equal on every rank of a data-parallel run."""
    import torch

    with torch.no_grad():
        sums = [torch.stack([p.detach().double().sum(), p.detach().double().abs().sum()]) for p in model.parameters()]
        values = torch.stack(sums).cpu().numpy().tobytes() if sums else b""
    return hashlib.sha256(values).hexdigest()


def _digest(model, optimizers) -> str:
    """sha256 over the model's state and every tensor in the optimizers' state, in a fixed order."""
    import torch

    h = hashlib.sha256()

    def add(name: str, value) -> None:
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)  # 1-d: a 0-dim state (AdamW's `step`) cannot be viewed as bytes
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
