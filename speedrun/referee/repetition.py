"""The referee proper: the launcher-side judge of one repetition, fed by every rank over the channel.

This code runs in the launcher's process, which the submission cannot reach. Ranks only *report* (phase
changes, micro-batches taken, per-rank validation sums and probe measurements); this module owns the clock,
the counters, the aggregation and the decisions, and writes `run-K.jsonl`:

- Time: every message is stamped on arrival with the launcher's monotonic clock (`channel.Server`). The run
  starts at the first rank's `start` and ends at the last rank's `finish`; a validation pauses the clock only
  while *every* rank is inside it (from the last rank's `val_begin` to the first rank's `val_end`). A rank can
  lengthen the timed span, never shorten it.
- Counters: steps, micro-batches and tokens are counted here from `batch` messages, per rank, per phase. A batch
  taken before `start()` outside `warmup()`, during a validation or after `finish()` is a problem.
- Loss: the mean val loss is the sum over ranks of their reported sums of per-token cross-entropy, divided by
  the track's val token count; every rank must report exactly its share of the val tokens.
- Probes: each rank reports how far its model's outputs moved on spliced copies of real val rows (see
  `speedrun.referee.evaluation`); the tolerance and the pass/fail decision are made here.
- Seeds: the launcher chose each repetition's seed and hands it to the ranks; every rank must report it back.
- The start check: the model's loss on a fixed val subset at `start()` must not be below the no-data level
  (the unigram entropy of the val tokens): a model trained before the clock fails.
Every problem becomes a `problem` event naming the rank and the rule; `speedrun verify` refuses any run with one.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from speedrun.evidence import schema
from speedrun.evidence.rundir import EventWriter
from speedrun.judge import stats
from speedrun.judge.integrity import blind_words

TRAIN_EVENT_EVERY = 10      # one `train` event every this many steps of rank 0
VAL_COST = 1.0              # a validation's untimed seconds per val token <= this x timed seconds per train token
PROBE_TOL_FP32 = 1e-3       # nats: allowed movement of earlier outputs on a CPU / fp32 model
PROBE_TOL_LOW = 2e-2        # nats: on a GPU or with 16-bit logits (kernels differ between batch compositions)
LOW_PRECISION = ("torch.bfloat16", "torch.float16")
CANARY_SIGMAS, CANARY_MIN_SLACK = 5.0, 0.05   # slack below the no-data level for the canary's sample mean

PHASE_WORDS = {"boot": "before the script started", "script": "before speedrun.init()",
               "init": "before start() outside warmup()", "ready": "before start() outside warmup()",
               "val": "during a validation", "finished": "after finish()", "exited": "after the script ended"}


def _count(obj, key: str) -> int:
    """obj[key] when obj is a dict holding a non-negative int there, else 0 (a malformed report counts nothing)."""
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass
class RankState:
    rank: int
    cid: int
    phase: str = "boot"
    preloaded: bool = False
    pid: int = 0
    device: str = ""
    device_name: str = ""
    seed: int | None = None
    config: dict | None = None
    configs: list = field(default_factory=list)       # [(from_step, config)] in the timed run
    steps: int = 0
    micro_in_step: int = 0
    tokens: int = 0
    warmup_micro: int = 0
    start_t: float | None = None
    start_check: dict | None = None
    vals: list = field(default_factory=list)          # [{"t_begin", "step", "steps", "t_end", "msg"}]
    finish_t: float | None = None
    finish_steps: int | None = None
    params_digest: str | None = None
    params_at_start: str | None = None
    exit: dict | None = None
    closed_in: str | None = None
    agent: object = None                              # the rank's referee agent (speedrun.referee.agent)
    hello_t: float | None = None                      # the rank's first line reached the referee
    warmup_span: tuple | None = None                  # (t_begin, t_end) of warmup()


class Referee:
    """One repetition. `handle()` is the channel handler; `close()` ends it and seals the evidence."""

    def __init__(self, track, repetition: int, seed: int, nproc: int, log: EventWriter, t0: float,
                 welcome: dict, on_event: Callable[[dict], None] | None = None, harness: str | None = None):
        self.track, self.k, self.seed, self.nproc = track, repetition, seed, nproc
        self.log, self.t0, self.welcome, self.on_event = log, t0, welcome, on_event
        self.no_data_level = float(welcome["no_data_level"])
        self.harness = harness  # the package directory the ranks must import
        self.shared_place = None  # where the agents put their shared buffers (a sandboxed run's: bound into it)
        # the replica check (speedrun.referee.replica): where sealed states go (None: the check is off); what
        # the scored validation kept (rank -> (state file, Pairs)); in the replica run, what to check
        # (k -> rank -> (state file, Pairs)), what the replica gave (k -> rank -> sums) and its ranks' errors
        self.replica_dir: str | None = None
        self.replica_pairs: dict = {}
        self.replica_plan: dict | None = None
        self.replica_results: dict = {}
        self.replica_errors: list[str] = []
        self.replica_why: str | None = None   # why this repetition kept nothing to check, when the agents know
        self.require_exit = harness is not None  # launched by `speedrun run`: every rank's bootstrap reports
        self.world_size: int | None = None
        self.ranks: dict[int, RankState] = {}
        self.by_cid: dict[int, int] = {}
        self.problems: list[str] = []
        self._problem_set: set[str] = set()
        self.vals_done = 0
        self.paused = 0.0
        self.start_t: float | None = None
        self.last_loss: float | None = None
        self.last_timed = 0.0
        self.closed = False
        self.on_all_preloaded: Callable[[], None] | None = None
        self.logged = 0  # `log` events of rank 0 so far
        self._agent_data = None      # shared by the rank agents; made at the first hello
        self._out: list[tuple[int, dict]] = []   # answers that wait for every rank (a validation's loss)
        self._awaiting: dict[int, int] = {}      # rank -> connection waiting for its validation's loss
        self.val_untimed = 0.0       # validation seconds taken off the clock so far
        self.val_budgeted = 0.0      # the part of them after the `val_free` first validations (the budget's use)
        self.charged = 0.0           # seconds outside the clock beyond their budgets, counted as timed
        self.late = 0.0              # the part of them after finish() (the clock had stopped: added to it)

    # --- helpers ---------------------------------------------------------------------------------------------

    def _t(self, t: float) -> float:
        return round(t - self.t0, 6)

    def _emit(self, kind: str, **fields) -> dict:
        event = self.log.write(kind, **fields)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                pass
        return event

    def warn_once(self, message: str) -> None:
        if message not in self._problem_set:
            self._problem_set.add(message)
            self._emit("warning", message=message)

    def problem(self, message: str, **explained) -> None:
        """Record a problem once; `explained`: `where` and `consequences` of a root cause (see schema.EVENTS)."""
        if message not in self._problem_set:
            self._problem_set.add(message)
            self.problems.append(message)
            self._emit("problem", message=message, **{k: v for k, v in explained.items() if v})

    def timed_at(self, t: float) -> float:
        return 0.0 if self.start_t is None else max(0.0, t - self.start_t - self.paused)

    # --- the channel handler --------------------------------------------------------------------------------

    def handle(self, cid: int, msg: dict | None, t: float, error: str | None) -> list[tuple[int, dict]]:
        """Handle one line from connection `cid`; returns the answers to send, as (connection, message) pairs:
        the `welcome` to a `hello`, and `go` to every rank once all local ranks have mapped the data."""
        if self.closed:
            return []
        rank = self.by_cid.get(cid)
        who = f"rank {rank}" if rank is not None else "a connection"
        if error == "closed":
            if rank is not None:
                st = self.ranks[rank]
                if st.phase not in ("finished", "exited") and st.closed_in is None:
                    st.closed_in = st.phase
            return []
        if error is not None:
            self.problem(f"{who} sent a garbled message on the referee channel ({error})")
            return []
        reason = schema.check_message(msg)
        if reason is not None:
            self.problem(f"{who} sent a garbled message on the referee channel ({reason})")
            return []
        kind = msg["m"]
        if kind == "hello":
            return [(cid, self._hello(cid, msg, t))]
        if rank is None:
            self.problem(f"a connection sent {kind!r} before saying hello")
            return [(cid, {"error": "say hello first"})] if kind in schema.REQUESTS else []
        if kind == "preloaded":
            return self._on_preloaded(self.ranks[rank])
        st = self.ranks[rank]
        if kind in schema.REQUESTS:
            answer = st.agent.handle(kind, msg, t)
            out, self._out = self._out, []
            return ([(cid, answer)] if answer is not None else []) + out
        getattr(self, "_on_warmup_batch" if kind == "batch" else f"_on_{kind}")(st, msg, t)
        return []

    def _on_preloaded(self, st: RankState) -> list[tuple[int, dict]]:
        if st.preloaded:
            self.problem(f"rank {st.rank} said twice that it mapped the data")
            return []
        st.preloaded = True
        ready = [s for s in self.ranks.values() if s.preloaded]
        if len(ready) < self.nproc:
            return []
        if self.on_all_preloaded is not None:
            self.on_all_preloaded()  # the launcher arms its watch on the data files now
        return [(s.cid, {"go": True}) for s in ready]

    def _hello(self, cid: int, msg: dict, t: float) -> dict:
        rank, world = msg["rank"], msg["world_size"]
        if cid in self.by_cid:
            self.problem(f"rank {self.by_cid[cid]} said hello twice")
            return {"error": "hello twice"}
        if self.world_size is None:
            self.world_size = world
        if world != self.world_size or not 0 <= rank < world:
            self.problem(f"a connection claims rank {rank} of {world}, the run has {self.world_size} ranks")
            return {"error": "bad rank"}
        if rank in self.ranks:
            self.problem(f"a second connection claims rank {rank}: only the bootstrap may talk to the referee")
            return {"error": f"rank {rank} is already connected"}
        if self.harness and os.path.realpath(msg["harness"]) != os.path.realpath(self.harness):
            self.problem(f"rank {rank} runs the harness from {msg['harness']}, not the launcher's {self.harness}")
        from speedrun.referee import agent

        if self._agent_data is None:
            self._agent_data = agent.AgentData(self.track, self.welcome["train_files"], self.welcome["val_files"])
        st = self.ranks[rank] = RankState(rank=rank, cid=cid, pid=msg["pid"], hello_t=t)
        st.agent = agent.Agent(self, st, self._agent_data, world)
        self.by_cid[cid] = rank
        return dict(self.welcome, seed=self.seed, repetition=self.k)

    def _on_script(self, st: RankState, msg: dict, t: float) -> None:
        if st.phase == "boot":
            st.phase = "script"

    def _on_init(self, st: RankState, msg: dict, t: float) -> None:
        if st.phase != "script":
            self.problem(f"rank {st.rank} called speedrun.init() twice or out of order")
            return
        st.phase, st.device, st.device_name, st.seed = "init", msg["device"], msg["device_name"], msg["seed"]
        if msg["seed"] != self.seed:
            self.problem(f"rank {st.rank} runs with seed {msg['seed']}, but the launcher chose seed {self.seed}")
        if msg["world_size"] != self.world_size:
            self.problem(f"rank {st.rank} reports world size {msg['world_size']}, its hello said {self.world_size}")
        self._emit("init", rank=st.rank, t=self._t(t), api_version=msg["api_version"], device=msg["device"],
                   device_name=msg["device_name"], seed=msg["seed"], world_size=msg["world_size"])

    def _on_loader(self, st: RankState, msg: dict, t: float) -> None:
        config = {k: msg[k] for k in schema.MESSAGES["loader"]}
        if st.micro_in_step and st.phase == "timed":
            self.problem(f"rank {st.rank} changed the batch shape in the middle of a step")
        st.config = config
        if st.phase in ("timed", "init", "ready", "script"):
            if not st.configs or st.configs[-1][1] != config:
                st.configs.append((st.steps, config))
                if st.rank == 0:
                    self._emit("loader", from_step=st.steps, **config)

    def _rule_check(self, st: RankState) -> None:
        c = st.config or {}
        for problem in self.track.checks.shape_problems(self.track.name, c.get("batch_tokens"), c.get("seq_len")):
            self.problem(problem)

    def _on_warmup_batch(self, st: RankState, msg: dict, t: float) -> None:
        """A rank's own report of a random warm-up batch; every other batch is counted by its agent."""
        if st.phase == "warmup":
            st.warmup_micro += 1
        else:
            self.problem(f"rank {st.rank} reported a training batch the referee did not serve "
                         f"({PHASE_WORDS.get(st.phase, st.phase)}): only the referee agent counts batches")

    def _on_batch(self, st: RankState, msg: dict, t: float) -> None:
        if st.phase == "warmup":
            st.warmup_micro += 1
            return
        if st.phase != "timed":
            self.problem(f"rank {st.rank} took a training batch {PHASE_WORDS.get(st.phase, st.phase)}")
            return
        if st.config is None:
            self.problem(f"rank {st.rank} took a training batch without a train loader")
            return
        st.micro_in_step += 1
        if st.micro_in_step >= st.config["accum_steps"]:
            st.micro_in_step = 0
            st.steps += 1
            st.tokens += st.config["batch_tokens"]
            self._rule_check(st)
            if st.rank == 0 and st.steps % TRAIN_EVENT_EVERY == 0:
                self._emit("train", batches=st.steps, timed_s=round(self.timed_at(t), 4), tokens=st.tokens)

    def _on_model(self, st: RankState, msg: dict, t: float) -> None:
        if st.rank == 0:
            self._emit("model", **{k: msg[k] for k in schema.MESSAGES["model"]})

    def _on_refused(self, st: RankState, msg: dict, t: float) -> None:
        self.problem(f"rank {st.rank} asked for a training batch {msg['reason']} (refused)")

    def _on_warmup_begin(self, st: RankState, msg: dict, t: float) -> None:
        if st.phase not in ("init", "ready"):
            self.problem(f"rank {st.rank} entered warmup() {PHASE_WORDS.get(st.phase, 'out of order')}")
            return
        st.phase = "warmup"
        st.warmup_span = (t, None)

    def _on_warmup_end(self, st: RankState, msg: dict, t: float) -> None:
        if st.phase != "warmup":
            self.problem(f"rank {st.rank} left a warmup() it never entered")
            return
        st.phase = "ready"
        st.warmup_span = (st.warmup_span[0], t) if st.warmup_span else (t, t)
        if not msg["restored"] or msg["digest_before"] != msg["digest_after"]:
            self.problem(f"rank {st.rank}: warm-up changed the model/optimizer state")
        self._emit("warmup", rank=st.rank, t=self._t(t), seconds=msg["seconds"],
                   digest_before=msg["digest_before"], digest_after=msg["digest_after"], restored=msg["restored"],
                   micro_batches=st.warmup_micro)

    def _on_start_check(self, st: RankState, msg: dict, t: float) -> None:
        st.start_check = msg

    def _inductor(self, st: RankState, names: list, when: str) -> None:
        if names:
            shown = ", ".join(str(n) for n in names[:5]) + (" ..." if len(names) > 5 else "")
            self.problem(f"rank {st.rank}: torch._inductor.config differs from its defaults at {when} ({shown}): "
                         f"track rules forbid extra compile flags")

    def _on_start(self, st: RankState, msg: dict, t: float) -> None:
        if st.phase not in ("init", "ready"):
            self.problem(f"rank {st.rank} called start() {'twice' if st.start_t else 'out of order'}")
            return
        st.phase, st.start_t = "timed", t
        self._inductor(st, msg["inductor"], "start()")
        if st.config is not None and (not st.configs or st.configs[-1][1] != st.config):
            st.configs.append((0, st.config))  # the loader's shape as warm-up left it
            if st.rank == 0:
                self._emit("loader", from_step=0, **st.config)
        if len([r for r in self.ranks.values() if r.start_t is not None]) == self.world_size:
            self._all_started()

    def _all_started(self) -> None:
        states = [self.ranks[r] for r in sorted(self.ranks)]
        self.start_t = min(s.start_t for s in states)
        loss_sum, tokens, missing = 0.0, 0, []
        for s in states:
            c = s.start_check
            if c is None or c["loss_sum"] is None or not c["tokens"]:
                missing.append(f"rank {s.rank}: {c['detail'] if c else 'no start check reported'}")
            else:
                loss_sum += c["loss_sum"]
                tokens += c["tokens"]
        start_loss = loss_sum / tokens if tokens and not missing else None
        if missing:
            self.problem("the start check did not run (" + "; ".join(missing) + ")")
        elif not math.isfinite(start_loss) or start_loss < self.no_data_level:
            self.problem(f"untimed training: at start() the model's val loss on the start check's val subset is "
                         f"{start_loss:.4f}, below the no-data level {self.no_data_level:.4f} (the unigram "
                         f"entropy of the val tokens): it was trained before the clock started")
        self._start_budgets(states)
        self._emit("start", t=self._t(self.start_t), start_loss=start_loss, no_data_level=self.no_data_level,
                   ranks=[{"rank": s.rank, "t": self._t(s.start_t),
                           "loss_sum": (s.start_check or {}).get("loss_sum"),
                           "tokens": (s.start_check or {}).get("tokens", 0)} for s in states])

    def _start_budgets(self, states: list[RankState]) -> None:
        """Time outside the clock before start(): from the first rank's first line to the clock's start,
        outside warm-up, within `pre_start_s`; warm-up within `warmup_s`. What is beyond counts as timed
        (by moving the clock's start earlier), and the `budget` event records both."""
        budget = self.track.budget
        hello = min((s.hello_t for s in states if s.hello_t is not None), default=self.start_t)
        spans = [s.warmup_span for s in states if s.warmup_span and s.warmup_span[1] is not None]
        warm = max((b - a for a, b in spans), default=0.0)
        pre = max(0.0, self.start_t - hello - warm)
        over = max(0.0, pre - budget.pre_start_s) + max(0.0, warm - budget.warmup_s)
        self.paused -= over
        self.charged += over
        self._emit("budget", pre_start_s=round(pre, 4), pre_start_budget_s=budget.pre_start_s,
                   warmup_s=round(warm, 4), warmup_budget_s=budget.warmup_s, charged_s=round(over, 4),
                   val_fraction=budget.val_fraction, val_free=budget.val_free)

    def _on_val_begin(self, st: RankState, msg: dict, t: float) -> None:
        if st.phase == "finished" and st.agent is not None and st.agent.score_pending:
            st.phase = "scoring"  # the scored validation finish() asked for
            st.vals.append({"t_begin": t, "step": msg["step"], "steps": st.steps, "micro": st.micro_in_step,
                            "t_end": None, "msg": None})
            return
        if st.phase != "timed":
            self.problem(f"rank {st.rank} began a validation {PHASE_WORDS.get(st.phase, 'outside the timed run')}")
            return
        st.phase = "val"
        st.vals.append({"t_begin": t, "step": msg["step"], "steps": st.steps, "micro": st.micro_in_step,
                        "t_end": None, "msg": None})

    def await_validation(self, st: RankState) -> None:
        """The rank's agent answers its last `val_next` with the loss, once every rank's validation is in."""
        self._awaiting[st.rank] = st.cid

    def _on_val_end(self, st: RankState, msg: dict, t: float) -> None:
        if st.phase not in ("val", "scoring"):
            self.problem(f"rank {st.rank} ended a validation it never began")
            return
        st.phase = "timed" if st.phase == "val" else "finished"
        st.vals[-1].update(t_end=t, msg=msg)
        index = len(st.vals)
        if index > self.vals_done and all(len(s.vals) >= index and s.vals[index - 1]["msg"] is not None
                                          for s in self.ranks.values()) and len(self.ranks) == self.world_size:
            self._validation_complete(index)

    def _probe_tolerance(self, st: RankState, probe: dict) -> float:
        low = probe.get("logits_dtype") in LOW_PRECISION or st.device.startswith("cuda")
        return PROBE_TOL_LOW if low else PROBE_TOL_FP32

    def _validation_complete(self, index: int) -> None:
        self.vals_done = index
        states = [self.ranks[r] for r in sorted(self.ranks)]
        entries = [s.vals[index - 1] for s in states]
        t_begin, t_end = max(e["t_begin"] for e in entries), min(e["t_end"] for e in entries)
        seconds = max(0.0, t_end - t_begin)
        split = entries[0]["msg"].get("split", "scored")
        split_tokens = entries[0]["msg"].get("split_tokens", self.track.val_tokens)
        after_finish = all(s.finish_t is not None for s in states)
        # the referee's own extra batches (the probes' copies) are its cost, not the script's: the caps count them
        measured = split_tokens + self.world_size * max(
            (_count(e["msg"].get("probe"), "rows") * _count(e["msg"], "seq_len") for e in entries), default=0)
        if after_finish:  # the scored validation finish() asked for: the clock has stopped already
            finish_t = max(s.finish_t for s in states)
            timed_s = self.timed_at(finish_t)
            off, charged = self._score_budget(seconds, max(0.0, t_begin - finish_t), timed_s, measured)
        else:
            timed_s = self.timed_at(t_begin)
            off, charged = self._val_budget(index, seconds, timed_s, measured)
            self.paused += off
        share = split_tokens // self.world_size
        loss_sum, tokens, ranks = 0.0, 0, []
        step = entries[0]["step"]
        for s, e in zip(states, entries):
            m = e["msg"]
            if m["error"]:
                self.problem(f"rank {s.rank}: validation at step {m['step']} failed: {m['error']}")
            if m["tokens"] != share:
                self.problem(f"rank {s.rank}: validation at step {m['step']} covered {m['tokens']} tokens, its share "
                             f"of the {split} split's {split_tokens} val tokens is {share}")
            if e["step"] != step or e["steps"] != entries[0]["steps"]:
                self.problem(f"ranks disagree at validation {index}: rank {s.rank} at step {e['step']} after "
                             f"{e['steps']} steps, rank {states[0].rank} at step {step} after {entries[0]['steps']}")
            if m["loss_sum"] is None or not math.isfinite(m["loss_sum"]):
                self.problem(f"rank {s.rank}: validation at step {m['step']} gave a non-finite loss")
            else:
                loss_sum += m["loss_sum"]
            tokens += m["tokens"]
            probe = dict(m["probe"])
            reason = schema.check(probe, schema.PROBE, "probe")
            if reason:
                self.problem(f"rank {s.rank}: the probe at validation step {step} did not run ({reason})")
            else:
                tol = self._probe_tolerance(s, probe)
                worst = max(probe["nll_diff"], probe["dist_diff"])
                moved = not (probe["rows"] > 0 and worst <= tol)
                n = probe["canary_tokens"]
                canary_mean = probe["canary_nll_sum"] / n if n else None
                floor = None
                if n:
                    sd = math.sqrt(max(0.0, probe["canary_nll_sq"] / n - canary_mean ** 2))
                    floor = self.no_data_level - max(CANARY_MIN_SLACK, CANARY_SIGMAS * sd / math.sqrt(n))
                foresees = canary_mean is not None and not canary_mean >= floor
                probe.update(tolerance=tol, canary_mean=canary_mean, canary_floor=floor,
                             passed=not moved and not foresees)
                if moved:
                    self.problem(f"rank {s.rank}: causality probe failed at validation step {step}: outputs before "
                                 f"the cut moved by {worst:.3g} (tolerance {tol:g}) on copies of val rows cut and "
                                 f"continued differently: the model sees the future or changed during validation")
                if foresees:
                    self.problem(f"rank {s.rank}: causality probe failed at validation step {step}: loss "
                                 f"{canary_mean:.3f} on {n} tokens drawn at random from the val unigram, below "
                                 f"the {self.no_data_level:.3f} no model can beat without seeing them: the model "
                                 f"sees the tokens it predicts")
            ranks.append({"rank": s.rank, "loss_sum": m["loss_sum"], "tokens": m["tokens"],
                          "t_begin": self._t(e["t_begin"]), "t_end": self._t(e["t_end"]),
                          "batch_tokens": m["batch_tokens"], "seq_len": m["seq_len"], "layout": m["layout"],
                          "probe": probe})
        if split == "scored":
            self._judge_blind(step, [r["probe"] for r in ranks])
        loss = loss_sum / split_tokens
        if tokens != split_tokens:
            self.problem(f"validation at step {step} covered {tokens} tokens, the {split} split has {split_tokens}")
        if split == "scored" or self.last_loss is None:
            self.last_loss = loss
        self.last_timed = timed_s
        self._emit("val", step=step, batches=entries[0]["steps"], timed_s=round(timed_s, 4), loss=loss,
                   tokens=tokens, seconds=round(seconds, 4), t=self._t(t_begin), ranks=ranks, split=split,
                   untimed_s=round(off, 4), charged_s=round(charged, 4),
                   val_budget_s=round(max(0.0, self.track.budget.val_fraction * timed_s - self.val_budgeted), 4))
        for rank, cid in sorted(self._awaiting.items()):
            self._out.append((cid, {"done": True, "loss": loss, "split": split}))
        self._awaiting.clear()

    def _judge_blind(self, step, probes: list[dict]) -> None:
        """The blind positions of every rank's copies at the scored validation, pooled: a model that reads its
        targets from its inputs scores the canonical rows lower than it can where the target was never shown
        (`evaluation`). A problem when the mean gap clears its bar (`stats.blind_gap`);
        each rank's probe records the pooled figures and fails with it. Only the scored split is judged: its
        rows are new to the rank, and the gap there is the one the verdict rests on (a monitor split's rows
        come again and again, and a small sample's skewed mean would only risk accusing an honest run)."""
        # the probes that passed their schema check (the loop above gave them a tolerance)
        counted = [p for p in probes if isinstance(p.get("blind_rows"), int) and "tolerance" in p]
        test = stats.blind_gap(counted)
        if test is None:
            n = sum(p["blind_rows"] for p in counted)
            self.warn_once(f"the scored validation at step {step} held {n} blind positions, fewer than "
                           f"{stats.BLIND_MIN_ROWS}: too few to judge whether the model reads its targets (longer "
                           f"rows make fewer of them)")
            return
        for p in counted:
            p.update(blind_gap=test.gap, blind_bar=test.bar, blind_sd=test.sd, blind_raw_gap=test.raw_gap,
                     blind_raw_sd=test.raw_sd)
            p["passed"] = p["passed"] and not test.reads
        if test.reads:
            self.problem(f"blind probe failed at validation step {step}: {blind_words(test)}")

    def _val_budget(self, index: int, seconds: float, timed_s: float, tokens: int) -> tuple[float, float]:
        """(seconds off the clock, seconds counted as timed) of validation `index` over `tokens` val tokens.

        No validation is untimed beyond what the run's own training says it can cost (`_val_cap`: a forward
        pass costs about a third of a training step per token; a validation before any training step is not
        capped this way: there is nothing to measure against, and no train batch to work on). Within that, the
        first `val_free` validations are untimed; after them, validations stay untimed while all their untimed
        seconds fit in `val_fraction` of the timed seconds so far. The part beyond counts as timed: training
        hidden inside a validation is charged back."""
        budget = self.track.budget
        cap = self._val_cap(seconds, timed_s, tokens)
        if index <= budget.val_free:
            off = min(seconds, cap)
        else:
            off = min(seconds, cap, max(0.0, budget.val_fraction * timed_s - self.val_budgeted))
            self.val_budgeted += off
        self.val_untimed += off
        self.charged += seconds - off
        return off, seconds - off

    def _val_cap(self, seconds: float, timed_s: float, tokens: int) -> float:
        """The most a validation over `tokens` val tokens may take off the clock: `VAL_COST` x each rank's share
        of them x the timed seconds per train token of a rank so far (each rank measures its share while it
        trains on its own batches; the whole split against one rank's tokens would allow world-size times as
        much). Before any training step there is nothing to measure against: no cap."""
        trained = max((s.tokens for s in self.ranks.values()), default=0)
        share = tokens / max(1, self.world_size or len(self.ranks))
        return seconds if trained == 0 else VAL_COST * share * timed_s / trained

    def _score_budget(self, seconds: float, gap: float, timed_s: float, tokens: int) -> tuple[float, float]:
        """(seconds off the clock, seconds added to it) of the scored validation that follows finish().

        The clock stopped at finish(), and the harness's finish() begins the scored validation at once: the
        `gap` between the two is added to the timed seconds whole (a script that asks for finish() itself could
        otherwise train there, off the clock, before its final model is measured), and the validation is untimed
        up to the same `VAL_COST` cap as any other (it is not charged to `val_fraction`: it is the one
        validation every run must make)."""
        off = min(seconds, self._val_cap(seconds, timed_s, tokens))
        charged = gap + seconds - off
        self.val_untimed += off
        self.charged += charged
        self.late += charged
        return off, charged

    def _on_log(self, st: RankState, msg: dict, t: float) -> None:
        if st.rank == 0:
            self.logged += 1
            self._emit("log", step=msg["step"], scalars=msg["scalars"], t=self._t(t))

    def _on_finish(self, st: RankState, msg: dict, t: float) -> None:
        if st.phase != "timed":
            self.problem(f"rank {st.rank} called finish() {PHASE_WORDS.get(st.phase, 'out of order')}")
            return
        st.phase, st.finish_t, st.finish_steps = "finished", t, st.steps
        self._inductor(st, msg["inductor"], "finish()")
        last = st.vals[-1] if st.vals else None
        if last is None:
            self.problem(f"rank {st.rank} called finish() without a validation")
        elif last["steps"] != st.steps or last["micro"] != st.micro_in_step:
            self.problem(f"rank {st.rank} trained after its last validation: finish() must directly follow a "
                         f"validation of the final model")

    def _on_params(self, st: RankState, msg: dict, t: float) -> None:
        st.params_digest = msg["digest"]
        st.params_at_start = msg.get("at_start")

    def _on_open(self, st: RankState, msg: dict, t: float) -> None:
        self.problem(f"rank {st.rank} opened the {msg['what']} file {os.path.basename(msg['path'])} itself "
                     f"({PHASE_WORDS.get(st.phase, 'during ' + st.phase)}): only the referee reads the data")

    def _on_tamper(self, st: RankState, msg: dict, t: float) -> None:
        names = [str(n) for n in msg["names"]]
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        self.problem(f"rank {st.rank}: the script replaced referee or timing functions ({shown}): the referee "
                     f"does not use them, but no honest submission patches them")

    def _on_warn(self, st: RankState, msg: dict, t: float) -> None:
        self._emit("warning", message=f"rank {st.rank}: {msg['message']}"[:2000])

    def _on_exit(self, st: RankState, msg: dict, t: float) -> None:
        st.exit = dict(msg, t=t)
        if st.phase != "finished":
            st.closed_in = st.closed_in or st.phase
        st.phase = "exited" if st.phase != "finished" else "finished"

    # --- the end of the repetition -------------------------------------------------------------------------------

    def _missing(self) -> list[str]:
        """What the repetition lacks at its end, rank by rank: a rank that never connected, never reached
        init(), start() or finish(), left a validation unfinished or ended without its final report."""
        expected = self.world_size or self.nproc
        if not self.ranks:
            return ["no rank connected to the referee (the processes failed before the script started?)"]
        missing = []
        for r in range(expected):
            st = self.ranks.get(r)
            if st is None:
                missing.append(f"rank {r} never connected to the referee")
                continue
            if st.phase in ("boot", "script") or (st.phase == "exited" and st.seed is None):
                missing.append(f"rank {r} never called speedrun.init()")
            elif st.start_t is None:
                missing.append(f"rank {r} never called start()")
            elif st.finish_t is None:
                where = st.closed_in or st.phase
                during = " during a validation" if where == "val" else ""
                missing.append(f"rank {r} never called finish(){during}"
                               + (f" (its process ended {PHASE_WORDS.get(where, 'in ' + where)})"
                                  if where not in ("timed", "val") else ""))
            if st.vals and st.vals[-1]["msg"] is None:
                missing.append(f"rank {r} did not finish its validation at step {st.vals[-1]['step']}")
            elif st.finish_t is not None and st.agent is not None and st.agent.score_pending:
                missing.append(f"rank {r} never measured the scored val tokens after finish() (its final loss "
                               f"would be the monitor split's)")
            if self.require_exit and st.finish_t is not None and st.exit is None:
                missing.append(f"rank {r} ended without the bootstrap's final report (the script cut its own "
                               f"process short, e.g. os._exit)")
        return missing

    def close(self, exit_code: int | None, extra_problems: list[str] = (), stopped: str | None = None,
              planned: bool = False) -> dict:
        """Judge what is missing, write the `finish` event and the seal; returns a summary for the manifest.

        What is missing at the end is explained by a root cause when there is one: `stopped`, why the launcher
        ended the repetition (a timeout, a rank gone, Ctrl-C), else the first exception a rank raised. The cause
        is the one problem, with what is missing (and the other ranks' later exceptions) as its consequences;
        `planned` (a prefix replay's stop) makes what is missing no problem at all. Without a cause, each
        missing piece is a problem of its own (a script that ended without calling finish())."""
        states = [self.ranks[r] for r in sorted(self.ranks)]
        # the ranks' own exceptions, first raised first (a rank that died makes the others fail afterwards)
        raised = sorted((s.exit["t"], s.rank, s.exit["error"], s.exit.get("where")) for s in states
                        if s.exit and s.exit.get("error"))
        errors = [f"rank {r}: {e}" for _, r, e, _ in raised]
        missing = self._missing()
        cause = None
        if planned:
            pass
        elif stopped:
            cause = stopped
            self.problem(stopped, consequences=errors + missing)
        elif raised:
            cause = errors[0]
            self.problem(cause, where=raised[0][3], consequences=errors[1:] + missing)
        else:
            for m in missing:
                self.problem(m)
        for p in extra_problems:
            self.problem(p)
        expected = self.world_size or self.nproc
        if states:
            ref = states[0]
            for s in states[1:]:
                # a rank stopped early (a timeout, a crash) may not have asked for every shape yet: only shapes
                # both asked for can disagree, and a count only when both finished
                mine, theirs = list(s.configs), list(ref.configs)
                both = min(len(mine), len(theirs))
                if mine[:both] != theirs[:both] or (len(mine) != len(theirs) and s.finish_t is not None
                                                    and ref.finish_t is not None):
                    self.problem(f"ranks disagree on the train loader's shapes: rank {s.rank} vs rank {ref.rank}")
                if s.finish_steps is not None and ref.finish_steps is not None and s.finish_steps != ref.finish_steps:
                    self.problem(f"ranks disagree on steps served: rank {s.rank} {s.finish_steps}, rank {ref.rank} "
                                 f"{ref.finish_steps}")
        for s in states:
            if s.params_digest and s.params_digest == s.params_at_start and s.finish_steps:
                self.problem(f"rank {s.rank}: the model given to warmup() did not change during the {s.finish_steps} "
                             f"timed steps: the run trained something else (a stand-in handed to the warm-up)")
        digests = {s.rank: s.params_digest for s in states if s.params_digest}
        if len(set(digests.values())) > 1:
            groups: dict = {}
            for r, d in digests.items():
                groups.setdefault(d, []).append(r)
            shown = " vs ".join("ranks " + ",".join(map(str, g)) for g in groups.values())
            self.problem(f"the ranks' model parameters differ after finish() ({shown}): were the gradients "
                         f"synchronised (DDP or an all-reduce)?")
        finished = bool(states) and len(states) == expected and all(s.finish_t is not None for s in states)
        summary = {"finished": finished, "timed_s": None, "steps": None, "final_loss": self.last_loss}
        if finished and self.start_t is not None:
            finish_t = max(s.finish_t for s in states)
            timed = max(0.0, finish_t - self.start_t - self.paused) + self.late
            steps = states[0].finish_steps
            self._emit("finish", t=self._t(finish_t), batches=steps, timed_s=round(timed, 4),
                       tokens=states[0].tokens,
                       ranks=[{"rank": s.rank, "t": self._t(s.finish_t), "batches": s.finish_steps,
                               "tokens": s.tokens} for s in states],
                       val_untimed_s=round(self.val_untimed, 4), charged_s=round(self.charged, 4))
            summary.update(timed_s=round(timed, 4), steps=steps)
            if not steps:
                self.problem("the timed run took no training step")
        for s in states:
            if s.agent is not None:
                s.agent.close()
        self.closed = True
        self.log.seal()
        summary["problems"] = list(self.problems)
        summary["errors"], summary["cause"] = errors, cause
        summary["status"] = ("failed" if exit_code not in (0, None) else "unfinished" if not finished
                             else "invalid" if self.problems else "ok")
        return summary

    def describe(self) -> str:
        st = self.ranks.get(0)
        steps = st.steps if st else 0
        timed = self.timed_at(time.monotonic()) if st and st.phase in ("timed",) else self.last_timed
        loss = f"{self.last_loss:.4f}" if self.last_loss is not None else "-"
        phase = st.phase if st else "starting"
        return f"step {steps}  timed {timed:7.2f} s  val loss {loss}  ({phase})"
