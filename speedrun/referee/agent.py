"""The referee agent: the referee's side of one rank, running outside the script's process.

Everything a rank-side client holds, the script can reach (it shares the interpreter): a `Session` found with
`gc`, the locals of an evaluator up the stack, memory maps of the data, the loader's attributes. So nothing
that decides a result lives there any more. One `Agent` per rank lives with the launcher's `Referee` (the
launcher's process; under plain torchrun, the unrefereed referee's thread) and owns:

- the data: the agent alone maps the shards. A rank asks for its next micro-batch (`next`); the agent takes
  it from the canonical stream (`speedrun.data.streams`, the same tokens `serve()` gives) and writes it into a
  ring of slots in shared memory (`speedrun.referee.shared`), answering with the slot. The loader's shape is
  the agent's state, changed only by a `loader` request it validates and records, and the agent counts what
  it actually served: assigning `train.batch_tokens` in the rank changes nothing served or counted.
  Serving follows today's rules: nothing before `start()` outside `warmup()`, during a validation, or after
  `finish()` (warm-up batches are random tokens the rank makes itself).
- the phases: start, validation and finish are requests the agent grants and stamps on the launcher's
  monotonic clock. A validation's pause begins when the agent hands out its first batch and ends when the
  agent has the last logits; no message declares a result, a phase end, a count or a time.
- the measurement: a rank gets validation *inputs* only; it runs `logits_fn` and writes the logits back
  (shared memory on the CPU, a CUDA IPC handle on a GPU); the agent computes the cross-entropy and the probes
  (`speedrun.referee.evaluation.measuring`), so the targets, the probe plan and which batch is the probe never
  enter the rank's process.
- the seal and the replica check (`speedrun.referee.replica`): after `finish()` and before the scored rows,
  the rank hands over its model's state, which the agent keeps outside the sandbox; it keeps the scored
  losses at positions drawn in secret, and in the replica run (the script started once more) it loads each
  sealed state into the fresh process and serves it those rows cut after each position.
- the monitor split: intermediate validations measure val tokens after the scored ones (`monitor_tokens`; on a
  generated corpus whose val file holds only the scored set, the tail of its last train shard);
  the scored tokens are first handed out by the validation `finish()` asks for, after which nothing is served.
  The start check uses the monitor split too, so no scored row reaches the script before the end.

The agent calls the `Referee`'s own handlers with what it stamped and measured, so the aggregation, the rules
and `run-K.jsonl` stay in `speedrun.referee.repetition`.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speedrun.errors import SpeedrunError

MONITOR_MIN = 16               # a default monitor split holds at least val_tokens // MONITOR_MIN tokens
START_CHECK_PIECES = 8         # val pieces (rows) of the start check, at most: a few thousand tokens per rank
RING = 4                        # train micro-batch slots per rank: the rank waits for a slot's copy RING-1 later
SEAL_MAX_BYTES = 1 << 34       # a sealed model state larger than this (16 GiB a rank) is refused: the launcher
                               # holds each rank's copy in memory until the repetition ends
LOGIT_DTYPES = {"torch.float32", "torch.bfloat16", "torch.float16", "torch.float64"}
REFUSALS = {"val": "during a validation", "scoring": "after finish()", "finished": "after finish()",
            "exited": "after the script ended"}


def monitor_tokens(track, val_files) -> int:
    """The monitor split's size: the track's `[val] monitor_tokens`, else every val token after the scored
    ones (the last needs one more token as its target), at most as many as the scored set, and none when
    fewer than a sixteenth of the scored set are there (a monitor that small measures noise: the tiny track's
    val shard holds 2,048 tokens after its 262,144 scored ones: `monitor_split` finds its split elsewhere)."""
    from speedrun.data import shards

    declared = track.val_split.monitor_tokens
    held = sum(shards.shard_tokens(p) for p in val_files)
    after = max(0, held - track.val_tokens - 1)
    if declared is None:
        return min(after, track.val_tokens) if after >= track.val_tokens // MONITOR_MIN else 0
    if declared > after:
        raise SpeedrunError(f"track {track.name}: [val] monitor_tokens = {declared}, but the val shards hold only "
                            f"{after} tokens after the {track.val_tokens} scored ones")
    return declared


def monitor_split(track, val_files, train_files=()) -> tuple[int, list[Path], int]:
    """Where the monitor split lies: (its tokens, the files, its first token in them). After the scored val
    tokens (`monitor_tokens`); else, on a generated corpus whose val file holds the scored set alone (tiny), the
    tail of its last train shard: millions of tokens past where any run's loader gets (tiny: 16.7M train tokens,
    a 300-step record takes 1.2M), from the same generator, so no scored row is handed out before the final
    validation on such a track either."""
    from speedrun.data import shards

    tokens = monitor_tokens(track, val_files)
    if tokens or track.data.source != "generator" or track.val_split.monitor_tokens is not None or not train_files:
        return tokens, [Path(p) for p in val_files], track.val_tokens
    last = Path(train_files[-1])
    tail = shards.shard_tokens(last)
    tokens = min(track.val_tokens, tail - 1)
    return tokens, [last], tail - tokens - 1


_COUNTED: dict = {}          # the data files (paths, sizes, mtimes) -> the future of their covariates
_COUNTED_LOCK = threading.Lock()


def _stamp(path: Path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _covariates(track, train_files: list[Path], val_files: list[Path]) -> concurrent.futures.Future:
    """The future of the blind probe's covariates for these data files, counted in a thread of its own (None
    without train tokens to count), once for all the launcher's repetitions on the same files."""
    key = (track.vocab_size, track.val_tokens, tuple((str(p), *_stamp(p)) for p in train_files + val_files))
    with _COUNTED_LOCK:
        if key not in _COUNTED:
            _COUNTED.clear()  # one data set at a time: a launcher runs one track
            counting = concurrent.futures.ThreadPoolExecutor(1, "surprisal")
            _COUNTED[key] = counting.submit(_count_surprisal, train_files, val_files, track.val_tokens,
                                            track.vocab_size)
            counting.shutdown(wait=False)  # the thread ends with its one task
        return _COUNTED[key]


def _count_surprisal(train_files, val_files, val_tokens: int, vocab_size: int):
    from speedrun.data import streams
    from speedrun.referee.surprisal import COUNT_TOKENS, Surprisal

    counted = streams.head_tokens(train_files, COUNT_TOKENS)
    if len(counted) < 2:  # no train tokens to count (a track of val tokens alone): no covariates
        return None
    return Surprisal(counted, vocab_size).centre(streams.head_tokens(val_files, val_tokens + 1))


class AgentData:
    """What every rank's agent shares: the track, the data files (mapped here, in the referee's process, before
    the launcher arms its watch on them), the val unigram and the monitor split's size."""

    def __init__(self, track, train_files, val_files, device: str = "cpu"):
        import torch
        from speedrun.data import shards

        # the agents' arithmetic (a validation's cross-entropy, a batch's copy) runs while the rank waits, and is
        # small next to the rank's forward: one thread. More would keep spinning after each operation (OpenMP
        # workers wait busily for a while) on the cores the ranks compute on (scripts/bench_overhead.py on 2
        # cores: a refereed validation 1.09-1.13x a plain one with 2 threads here, 1.02-1.08x with one)
        torch.set_num_threads(1)
        self.track = track
        self.train_files = [Path(p) for p in train_files]
        self.val_files = [Path(p) for p in val_files]
        shards.preload(self.train_files + self.val_files)
        self.monitor, self.monitor_files, self.monitor_start = monitor_split(track, self.val_files, self.train_files)
        self.device = device
        self._unigram = None
        self._surprisal = _covariates(track, self.train_files, self.val_files)
        self._val: dict = {}

    def unigram(self) -> np.ndarray:
        if self._unigram is None:
            from speedrun.data import streams

            self._unigram = streams.val_unigram(self.val_files, self.track.val_tokens, self.track.vocab_size)
        return self._unigram

    def surprisal(self):
        """The blind probe's covariates (`speedrun.referee.surprisal`): counted from the head of the train
        shards and centred on the scored split in a thread started with the first repetition's agents
        (gpt2-small: seconds, which a scored validation must not spend), and kept for the launcher's later
        repetitions on the same data files."""
        return self._surprisal.result()

    def val_stream(self, split: str, batch_tokens: int, seq_len: int, rank: int, world_size: int, layout: str):
        """This rank's share of a split at a validation shape: "scored" (the track's val tokens) or "monitor"
        (as many whole validation batches as fit in the monitor split)."""
        from speedrun.data import streams

        key = (split, batch_tokens, seq_len, rank, world_size, layout)
        if key not in self._val:
            track = self.track
            if split == "scored":
                tokens, start = track.val_tokens, 0
            else:
                tokens, start = (self.monitor // batch_tokens) * batch_tokens, self.monitor_start
                if tokens == 0:
                    raise SpeedrunError(f"validation batch of {batch_tokens} tokens is larger than the track's "
                                        f"monitor split ({self.monitor} val tokens after the scored ones)")
            files = self.val_files if split == "scored" else self.monitor_files
            self._val[key] = streams.ValStream(files, tokens, batch_tokens, seq_len, rank, world_size,
                                               layout, "cpu", bos_token=track.bos_token,
                                               max_seq_len=track.checks.max_seq_len, start=start)
        return self._val[key]


@dataclass
class Validation:
    """One validation in progress on one rank."""

    step: int | None
    split: str
    batch_tokens: int
    seq_len: int
    layout: str
    steps: object                       # the evaluation.measuring generator
    batch: object = None                # the batch whose logits are awaited
    handed: int = 0
    extras: dict = field(default_factory=dict)


class Agent:
    """The referee's side of one rank. `handle(kind, msg, t)` answers one request: a dict, or None when the
    answer comes later (a validation's loss, once every rank's validation is complete)."""

    def __init__(self, referee, st, data: AgentData, world_size: int):
        self.referee, self.st, self.data, self.world_size = referee, st, data, world_size
        self.track = data.track
        self.stream = None
        self.config: dict | None = None
        self.micro = 0
        self.step = None
        self.served = 0
        self.start_checks = 0
        self.ring = None
        self.slot_bytes = 0
        self.inputs = None               # the shared buffer validation inputs go through
        self.logits: dict = {}           # path -> shared buffer the rank writes logits into
        self.val: Validation | None = None
        self.last_val: tuple | None = None  # (batch_tokens, seq_len, layout) of the last validation
        self.score_pending = False
        self.start_batch = None
        self.sealed: dict | None = None   # this repetition's sealed model state: its bytes, tensors and mode
        self.pairs = None                 # replica.Pairs of the scored validation in progress
        self.replica_run = None           # the replica run: (k, Pairs, batches generator, marks in hand)
        self.replica_batch = None
        self.replica_bare = False         # the replica's start() had no logits_fn: it calls the warm-up model
        self._seal = self._state_buf = None  # shared buffers of the state going out / coming back in

    # --- dispatch -----------------------------------------------------------------------------------------
    def handle(self, kind: str, msg: dict, t: float) -> dict | None:
        try:
            return getattr(self, f"_{kind}")(msg, t)
        except SpeedrunError as exc:
            return {"error": str(exc)}

    def close(self) -> None:
        for buf in [self.ring, self.inputs, *self.logits.values(), self._seal, self._state_buf]:
            if buf is not None:
                buf.close()
        self.ring, self.inputs, self.logits = None, None, {}
        self._seal = self._state_buf = None

    # --- the train loader ------------------------------------------------------------------------------------
    def _loader(self, msg: dict, t: float) -> dict:
        from speedrun.data import streams

        if msg["layout"] not in ("rows", "flat"):
            raise SpeedrunError(f"train_loader: layout must be 'rows' or 'flat', got {msg['layout']!r}")
        if self.micro and self.st.phase == "timed":
            raise SpeedrunError(f"train_loader.set() in the middle of a step ({self.micro} of "
                                f"{self.config['accum_steps']} micro-batches served)")
        streams.check_shape(msg["batch_tokens"], msg["seq_len"], self.world_size, msg["accum_steps"],
                            max_seq_len=self.track.checks.max_seq_len, what="train_loader")
        broken = self.track.checks.shape_problems(self.track.name, msg["batch_tokens"], msg["seq_len"])
        if broken:
            raise SpeedrunError(f"train_loader: {broken[0]}")
        config = {k: msg[k] for k in ("batch_tokens", "seq_len", "accum_steps", "layout", "align_to_bos",
                                      "max_doc_len")}
        config["align_to_bos"] = bool(config["align_to_bos"]) or config["layout"] == "flat"
        self.config = config
        if self.stream is None:
            self.stream = streams.TrainStream(self.data.train_files, self.track.bos_token,
                                              max_seq_len=self.track.checks.max_seq_len)
        self.referee._on_loader(self.st, config, t)
        return {"ok": True}

    def _next(self, msg: dict, t: float) -> dict:
        from speedrun.data import streams

        phase = self.st.phase
        if phase != "timed":
            reason = REFUSALS.get(phase, "before start() outside warmup()")
            if phase == "warmup":
                reason = "from the referee inside warmup() (warm-up batches are random tokens)"
            self.referee._on_refused(self.st, {"reason": reason}, t)
            raise SpeedrunError(f"the train loader serves no batch {reason}")
        c = self.config
        if c is None:
            raise SpeedrunError("no train loader: call run.train_loader() first")
        if self.micro == 0:
            self.step = self.stream.next_step(c["batch_tokens"], c["seq_len"], align_to_bos=c["align_to_bos"],
                                              max_doc_len=c["max_doc_len"])
        step, T = self.step, c["seq_len"]
        indices = streams.owned_pieces(step.num_pieces, self.st.rank, self.world_size, c["accum_steps"],
                                       self.micro)
        k = len(indices)
        need = 16 * k * T + 4 * (k * T + 1)
        if self.ring is None or need > self.slot_bytes:
            from speedrun.referee.shared import SharedBuffer

            if self.ring is not None:
                self.ring.close()
            self.slot_bytes = -(-need // 4096) * 4096
            self.ring = SharedBuffer.create(self.slot_bytes * RING, self.referee.shared_place)
        slot = self.served % RING
        offset = slot * self.slot_bytes
        host = self.ring.tensor(_int64(), (2, k, T), offset).numpy()
        window = step._window(indices)
        if window is not None:
            host[0] = window[:-1].reshape(k, T)
            host[1] = window[1:].reshape(k, T)
        else:
            for j, piece in enumerate(step.pieces(indices)):
                host[0, j] = piece[:-1]
                host[1, j] = piece[1:]
        answer = {"buf": self.ring.path, "offset": offset, "k": k, "T": T, "cu": None}
        if c["layout"] == "flat":
            cu = streams._cu_seqlens(host[0].reshape(-1), T, self.track.bos_token)
            self.ring.tensor(_int32(), (len(cu),), offset + 16 * k * T).numpy()[:] = cu
            answer["cu"] = len(cu)
        self.served += 1
        self.micro = (self.micro + 1) % c["accum_steps"]
        self.referee._on_batch(self.st, {}, t)
        return answer

    # --- warm-up and start --------------------------------------------------------------------------------
    def _warmup_begin(self, msg: dict, t: float) -> dict:
        if self.st.phase not in ("init", "ready"):
            self.referee._on_warmup_begin(self.st, msg, t)  # the problem, in its words
            raise SpeedrunError("warmup() must come before start(), once")
        self.referee._on_warmup_begin(self.st, msg, t)
        return {"ok": True}

    def _split(self) -> str:
        return "monitor" if self.data.monitor and not self.score_pending else "scored"

    def _start_check(self, msg: dict, t: float) -> dict:
        """The start check's inputs: the first validation batch of this rank's share (of the monitor split,
        where there is one, so no scored row is handed out before the end)."""
        if self.st.phase not in ("init", "ready"):
            raise SpeedrunError("start() called twice" if self.st.start_t else "start() out of order")
        if self.start_checks:
            self.referee.problem(f"rank {self.st.rank} asked for the start check again (start() asks once): "
                                 f"a request of the script's own")
            raise SpeedrunError("the start check is handed out once, by start()")
        self.start_checks += 1
        bt, sl, layout = msg["batch_tokens"], msg["seq_len"], msg["layout"]
        split = self._split() if self.data.monitor >= bt else "scored"
        s = self.data.val_stream(split, bt, sl, self.st.rank, self.world_size, layout)
        pieces = list(s.pieces_of(0))[:START_CHECK_PIECES]  # enough to see a trained model, too few to train on
        self.start_batch = self._make_batch([s.val_piece(i) for i in pieces], layout)
        return self._hand_inputs(self.start_batch)

    def _start(self, msg: dict, t: float) -> dict:
        from speedrun.referee import evaluation

        loss_sum, tokens, detail = None, 0, msg["detail"]
        if msg["logits"] is not None and self.start_batch is not None:
            try:
                logits = self._logits(msg["logits"])
                import torch

                with torch.no_grad():
                    nll = evaluation.token_nll(logits, self.start_batch.targets, self.track.vocab_size)
                loss_sum, tokens = float(nll.double().sum()), nll.numel()
            except SpeedrunError as exc:
                detail = f"the start check's logits were refused: {exc}"[:500]
        elif detail == "ok":
            detail = "no logits for the start check"
        self.start_batch = None
        self.referee._on_start_check(self.st, {"loss_sum": loss_sum, "tokens": tokens, "detail": detail}, t)
        was = self.st.phase
        self.referee._on_start(self.st, {"inductor": msg["inductor"]}, t)
        if was not in ("init", "ready"):
            raise SpeedrunError("start() called twice" if self.st.start_t else "start() out of order")
        return {"ok": True}

    # --- validation ------------------------------------------------------------------------------------------
    def _val_begin(self, msg: dict, t: float) -> dict:
        from speedrun.referee import evaluation

        phase = self.st.phase
        if self.val is not None:
            raise SpeedrunError("a validation is already in progress")
        if phase == "finished" and self.score_pending:
            split = "scored"
        elif phase == "timed":
            split = self._split()
        else:
            raise SpeedrunError({"init": "validate() before start()", "ready": "validate() before start()",
                                 "warmup": "validate() inside warmup()", "finished": "validate() after finish()"}
                                .get(phase, f"validate() {REFUSALS.get(phase, 'now')}"))
        bt, sl, layout = msg["batch_tokens"], msg["seq_len"], msg["layout"]
        # the shape must tile the scored tokens, which finish() will measure at it, in rows enough for the blind
        # probe: say so at the first validation
        scored = self.data.val_stream("scored", bt, sl, self.st.rank, self.world_size, layout)
        least = evaluation.min_rows(scored.val_tokens)
        if scored.num_pieces < least:
            raise SpeedrunError(f"validation rows of {sl} tokens cut the {scored.val_tokens} scored val tokens into "
                                f"{scored.num_pieces}; the referee's blind probe needs at least {least} (rows of "
                                f"at most {scored.val_tokens // least} tokens)")
        if split == "monitor" and self.data.monitor < bt:
            split = "scored"
            self.referee.warn_once(f"the track's monitor split ({self.data.monitor} val tokens) holds no whole "
                                   f"validation batch of {bt} tokens: validations at that shape measure the "
                                   f"scored val tokens, which the script then sees before the end")
        s = self.data.val_stream(split, bt, sl, self.st.rank, self.world_size, layout)
        flat = layout == "flat"

        def own(b: int, i: int) -> int:
            return s.pieces_of(b)[i]

        # the scored validation after finish() is the one whose rows the rank has never been shown: enough
        # extra batches there for the blind positions to bound a peek (`evaluation.BLIND_ROWS`), one elsewhere
        # (and the covariates that sharpen them: the other validations are not judged on them)
        scored = phase == "finished"
        extra = evaluation.extra_batches(len(s), s.k, self.world_size) if scored else 1
        keep = None
        if scored and self.sealed is None and self.referee.replica_dir is not None:
            self.referee.replica_why = "finish() sealed no model state (the script gave warmup() no model)"
        if scored and self.sealed is not None:  # the positions the replica will check, drawn now, never told
            from speedrun.referee import replica

            self.pairs = replica.Pairs((bt, sl, layout), s.k)
            keep = replica.choose([q for b in range(len(s)) for q in s.pieces_of(b)], sl, self.world_size, s.k)
        steps = evaluation.measuring(len(s), s.k, sl, flat, own, s.val_piece,
                                     lambda pieces: self._make_batch(pieces, layout), self.track.vocab_size,
                                     unigram=self.data.unigram(), extra=extra,
                                     surprisal=self.data.surprisal() if scored else None, keep=keep)
        self.val = Validation(msg["step"], split, bt, sl, layout, steps,
                              extras={"split_tokens": s.val_tokens, "share": s.tokens_per_rank})
        if phase == "timed":
            self.last_val = (bt, sl, layout)
        return {"ok": True, "batches": len(s) + extra, "split": split}

    def _val_next(self, msg: dict, t: float) -> dict | None:
        v = self.val
        if v is None:
            raise SpeedrunError("no validation in progress")
        if v.handed == 0:
            self.referee._on_val_begin(self.st, {"step": v.step}, t)  # the pause begins with the first batch
        error = msg["error"]
        batch = None
        try:
            if error is not None:
                raise _RankFailed(error)
            logits = None
            if v.handed:
                if msg["logits"] is None:
                    raise SpeedrunError("no logits for the validation batch handed out")
                logits = self._logits(msg["logits"])
            batch = v.steps.send(logits)
        except StopIteration as done:
            return self._val_done(v, done.value, None, t)
        except (SpeedrunError, _RankFailed, RuntimeError, ValueError) as exc:
            v.steps.close()
            text = str(exc) if isinstance(exc, _RankFailed) else f"{type(exc).__name__}: {exc}"
            return self._val_done(v, None, text[:1000], t)
        v.batch, v.handed = batch, v.handed + 1
        return self._hand_inputs(batch)

    def _val_done(self, v: Validation, m, error: str | None, t: float) -> dict | None:
        self.val = None
        report = {"step": v.step, "loss_sum": m.loss_sum if m else None, "tokens": m.tokens if m else 0,
                  "batch_tokens": v.batch_tokens, "seq_len": v.seq_len, "layout": v.layout,
                  "probe": m.probe if m else {}, "error": error, "split": v.split, **v.extras}
        if error is None:
            self.referee.await_validation(self.st)
        self.referee._on_val_end(self.st, report, t)
        if v.split == "scored":
            self.score_pending = False
            if m is not None and self.pairs is not None:
                self.pairs.live = m.kept
                self.referee.replica_pairs[self.st.rank] = (self.sealed, self.pairs)
        if error is not None:
            return {"done": True, "error": error}
        return None  # answered with the loss once every rank's validation is complete

    def _val_buffer(self, msg: dict, t: float) -> dict:
        from speedrun.referee.shared import SharedBuffer

        nbytes = msg["nbytes"]
        # room for the logits of the batch in hand, at most: float64, up to twice the vocabulary plus 1,024
        # columns (padding past the vocabulary only wastes probability); anything more is not for logits
        batch = self.val.batch if self.val is not None else self.replica_batch or self.start_batch
        if batch is None:
            raise SpeedrunError("a logits buffer asked for with no validation batch handed out")
        limit = batch.targets.numel() * (2 * self.track.vocab_size + 1024) * 8
        if not 0 < nbytes <= limit:
            raise SpeedrunError(f"a logits buffer of {nbytes} bytes for a batch of {batch.targets.numel()} tokens "
                                f"(at most {limit})")
        for buf in list(self.logits.values()):
            buf.close()
        buf = SharedBuffer.create(nbytes, self.referee.shared_place)
        self.logits = {buf.path: buf}
        return {"buf": buf.path}

    def _finish(self, msg: dict, t: float) -> dict:
        phase = self.st.phase
        self.referee._on_finish(self.st, msg, t)
        if phase != "timed":
            raise SpeedrunError("finish() before start()" if phase in ("init", "ready", "warmup")
                                else "finish() called twice")
        self.score_pending = bool(self.data.monitor) and self.last_val is not None and \
            self.data.monitor >= self.last_val[0]
        if not self.score_pending and self.referee.replica_dir is not None:
            self.referee.replica_why = ("the scored rows were measured before finish() (the track's monitor split "
                                        "holds no validation batch): a replica cannot check rows the script saw")
        if self.score_pending:
            bt, sl, layout = self.last_val
            return {"score": True, "batch_tokens": bt, "seq_len": sl, "layout": layout}
        return {"score": False}

    # --- the seal and the replica check (speedrun.referee.replica) -----------------------------------------
    def _seal_buffer(self, msg: dict, t: float) -> dict:
        """A shared buffer for the model state finish() hands over, before the scored rows come."""
        from speedrun.referee.shared import SharedBuffer

        if self.referee.replica_dir is None:
            raise SpeedrunError("this run keeps no sealed state (the replica check is off)")
        if self.st.phase != "finished" or not self.score_pending or self.val is not None or self.sealed:
            raise SpeedrunError("the model state is sealed once, by finish(), before the scored validation")
        nbytes = msg["nbytes"]
        if not 0 < nbytes <= SEAL_MAX_BYTES:
            raise SpeedrunError(f"a sealed model state of {nbytes} bytes (at most {SEAL_MAX_BYTES})")
        self._seal = SharedBuffer.create(nbytes, self.referee.shared_place)
        return {"buf": self._seal.path}

    def _sealed(self, msg: dict, t: float) -> dict:
        """The state is written: its bytes are copied out at once (the rank may still hold the buffer mapped),
        into the launcher's memory; the launcher files them after the repetition (`Launch.replica_kept`)."""
        buf = self._seal
        if buf is None or self.sealed or self.val is not None or not 0 <= msg["nbytes"] <= buf.size:
            raise SpeedrunError("no sealed state was asked for")
        data = bytes(memoryview(buf._map)[:msg["nbytes"]])
        buf.close()
        self._seal = None
        self.sealed = {"data": data, "training": bool(msg["training"]), "tensors": msg["tensors"]}
        return {"ok": True}

    def _replica_state(self, msg: dict, t: float) -> dict:
        """The replica run: repetition k's sealed state for this rank, in a shared buffer."""
        from speedrun.referee.shared import SharedBuffer

        plan = (self.referee.replica_plan or {}).get(msg["k"], {}).get(self.st.rank)
        if plan is None or self.replica_run is not None:
            raise SpeedrunError(f"no sealed state of repetition {msg['k']} to check on rank {self.st.rank}")
        self.replica_bare = bool(msg["bare"])
        sealed = plan[0]
        raw = Path(sealed["path"]).read_bytes()
        if self._state_buf is not None:  # the last repetition's: read by now
            self._state_buf.close()
        buf = self._state_buf = SharedBuffer.create(max(1, len(raw)), self.referee.shared_place)
        memoryview(buf._map)[:len(raw)] = raw
        return {"buf": buf.path, "nbytes": len(raw), "training": sealed["training"], "tensors": sealed["tensors"]}

    def _replica_next(self, msg: dict, t: float) -> dict:
        """The replica run: the last batch's logits -> the next batch of cut copies, or {"done": true} once
        repetition k's positions are all scored (their sums go to the referee)."""
        from speedrun.referee import replica

        k = msg["k"]
        if msg["error"] is not None:
            self.referee.replica_errors.append(f"rank {self.st.rank}: {msg['error']}"[:1000])
            self.replica_run = None
            return {"done": True}
        if self.replica_run is None or self.replica_run[0] != k:
            plan = (self.referee.replica_plan or {}).get(k, {}).get(self.st.rank)
            if plan is None:
                raise SpeedrunError(f"no positions of repetition {k} to check on rank {self.st.rank}")
            pairs = plan[1]  # the scored side's positions; the replica's losses join them
            bt, sl, layout = pairs.shape
            s = self.data.val_stream("scored", bt, sl, self.st.rank, self.world_size, layout)
            gen = replica.batches(pairs, s.val_piece, self.data.unigram(),
                                  lambda rows: self._make_batch(rows, layout), np.random.default_rng())
            self.replica_run = [k, pairs, gen, None]
        run = self.replica_run
        if run[3] is not None:
            if msg["logits"] is None:
                raise SpeedrunError("no logits for the replica batch handed out")
            from speedrun.referee import evaluation

            logits = evaluation.plain_logits(self._logits(msg["logits"]))
            with evaluation.referee_arithmetic():
                losses = replica.losses_at(logits, run[1].shape[1], run[3])
            run[1].replica.update({q: loss for (_, q, _, _), loss in zip(run[3], losses)})
        try:
            self.replica_batch, run[3] = next(run[2])
        except StopIteration:
            self.referee.replica_results.setdefault(k, {})[self.st.rank] = {**run[1].sums(), "bare": self.replica_bare}
            self.replica_run, self.replica_batch = None, None
            return {"done": True}
        return self._hand_inputs(self.replica_batch)

    # --- tensors across the boundary ------------------------------------------------------------------------
    def _make_batch(self, pieces, layout: str):
        from speedrun.data import streams
        from speedrun.referee import evaluation

        return evaluation.Batch(*streams.make_batch(pieces, layout, "cpu", bos_token=self.track.bos_token))

    def _hand_inputs(self, batch) -> dict:
        """Write a batch's inputs (never its targets) into the rank's input buffer."""
        from speedrun.referee.shared import SharedBuffer

        inputs, cu = batch.inputs, batch.cu_seqlens
        n_cu = 0 if cu is None else cu.numel()
        need = inputs.numel() * 8 + n_cu * 4
        if self.inputs is None or need > self.inputs.size:
            if self.inputs is not None:
                self.inputs.close()
            self.inputs = SharedBuffer.create(need, self.referee.shared_place)
        self.inputs.tensor(_int64(), tuple(inputs.shape)).copy_(inputs)
        if cu is not None:
            self.inputs.tensor(_int32(), (n_cu,), inputs.numel() * 8).copy_(cu)
        return {"buf": self.inputs.path, "offset": 0, "shape": list(inputs.shape), "cu": n_cu if cu is not None
                else None}

    def _logits(self, meta: dict):
        """The logits a rank handed back: a view of one of this agent's own buffers, or a CUDA IPC handle."""
        if not isinstance(meta, dict):
            raise SpeedrunError("logits: not a description of a tensor")
        if "ipc" in meta:
            from speedrun.referee import shared

            return shared.from_ipc_handle(str(meta["ipc"]))
        import torch

        buf = self.logits.get(meta.get("buf"))
        if buf is None:
            raise SpeedrunError("logits: in a buffer the referee did not hand out")
        dtype = meta.get("dtype")
        if dtype not in LOGIT_DTYPES:
            raise SpeedrunError(f"logits_fn must return floating-point logits, got {dtype}")
        shape = meta.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise SpeedrunError(f"logits: bad shape {shape!r}")
        return buf.tensor(getattr(torch, dtype.split(".")[1]), shape)


class _RankFailed(Exception):
    """The rank's logits_fn raised: its message, as the rank reported it."""


def _int64():
    import torch

    return torch.int64


def _int32():
    import torch

    return torch.int32


def finite(x) -> bool:
    return x is not None and math.isfinite(x)
