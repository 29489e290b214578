"""Every piece of data that crosses a process or file boundary, in one place.

Three boundaries:
1. The referee channel (rank process -> launcher, one JSON object per line over a Unix socket): `MESSAGES`.
   The launcher answers `hello` (with a `welcome`), `preloaded` (with `{"go": true}`, once every local rank
   is ready) and each of `REQUESTS`, which the rank's referee agent grants or refuses (`{"error": ...}`).
   Bytes (batches, logits) never travel here: they go through shared memory (`speedrun.referee.shared`).
2. The events of one repetition, written by the launcher to `run-K.jsonl` (one JSON object per line, sealed):
   `EVENTS`. Imported (self-reported) logs use the same kinds without the referee's fields, stamp each event
   with `wall` (seconds since the epoch, at import) and carry no seal: nothing in them was measured.
3. The run directory's `manifest.json` (`MANIFEST_FIELDS`) and `verdict.json` (`VERDICT_FIELDS`).

Each table maps a kind to its fields and their JSON types; `check()` validates one object against it and
returns a readable reason, so a garbled message or a malformed file becomes a one-line problem, never a crash.
Readers must ignore fields they do not know (the schema only grows: `speedrun.API_VERSION`).
"""

from __future__ import annotations

from typing import Any

NUM = (int, float)
OPT_NUM = (int, float, type(None))
OPT_INT = (int, type(None))
OPT_STR = (str, type(None))
OPT_DICT = (dict, type(None))

# --- 1. the referee channel: rank -> launcher -------------------------------------------------------------------
# field -> type(s); every message also has "m" (its kind). Optional fields are listed in OPTIONAL.
MESSAGES: dict[str, dict[str, Any]] = {
    "hello": {"rank": int, "world_size": int, "local_rank": int, "pid": int, "api": int, "harness": str},
    "preloaded": {},                            # the bootstrap mapped the data; it waits for {"go": true}
    "script": {},                               # the bootstrap hands over to the submission script
    "init": {"api_version": int, "device": str, "device_name": str, "seed": int, "world_size": int},
    # requests, answered by the rank's referee agent (speedrun.referee.agent), which stamps and counts them:
    "loader": {"batch_tokens": int, "seq_len": int, "accum_steps": int, "layout": str, "align_to_bos": bool,
               "max_doc_len": OPT_INT},         # the train loader's shape from the next step on
    "next": {},                                 # the next train micro-batch -> {buf, offset, k, T, cu}
    "warmup_begin": {},
    "start_check": {"batch_tokens": int, "seq_len": int, "layout": str},  # -> the start check's inputs
    "start": {"inductor": list, "logits": OPT_DICT, "detail": str},  # the start check's logits; the clock starts
    "val_begin": {"step": OPT_INT, "batch_tokens": int, "seq_len": int, "layout": str},
    "val_next": {"logits": OPT_DICT, "error": OPT_STR},  # the last batch's logits -> the next inputs, or the loss
    "val_buffer": {"nbytes": int},              # a shared buffer for logits of this size -> {buf}
    "finish": {"inductor": list},               # the clock stops -> {score: true, shape} when the scored
                                                # validation is still to come (a track with a monitor split)
    "seal_buffer": {"nbytes": int},             # after finish(), before the scored rows: a shared buffer for the
    "sealed": {"nbytes": int, "training": bool, "tensors": list},  # model's state, then: it is written (its
                                                # tensors' [name, dtype, shape, offset] and the train/eval mode)
    "replica_state": {"k": int, "bare": bool},  # the replica run: repetition k's sealed state -> {buf, nbytes,
                                                # tensors, training}; bare: start() had no logits_fn (API 1)
    "replica_next": {"k": int, "logits": OPT_DICT, "error": OPT_STR},  # -> the next cut copies, or {done}
    # reports
    "model": {"params": int, "embedding_params": int, "flops_per_token": NUM, "flops_source": str},
    "batch": {},                                # one random warm-up micro-batch the rank made itself
    "warmup_end": {"seconds": NUM, "digest_before": str, "digest_after": str, "restored": bool},
    "log": {"step": OPT_INT, "scalars": dict},
    "params": {"digest": str, "at_start": OPT_STR},  # after finish(): digests of the warm-up model's parameters
                                                # now and at start()
    "open": {"path": str, "what": str},         # the audit hook saw a data file opened by the script
    "warn": {"message": str},
    "tamper": {"names": list},                  # referee or timing functions the script replaced
    "exit": {"code": int, "error": OPT_STR, "where": OPT_STR},  # the bootstrap's last word; where: the script's
                                                # line the error came from, "train.py:164: raise ..." (information)
}
OPTIONAL = {"exit": {"error", "where"}, "params": {"at_start"}}
REQUESTS = ("loader", "next", "warmup_begin", "start_check", "start", "val_begin", "val_next", "val_buffer",
            "finish", "seal_buffer", "sealed", "replica_state", "replica_next")

# the probe measurements a rank reports with each validation (judged by the launcher, not by the rank)
# rows: extra rows compared; nll_diff: the largest change (nats) of a per-token loss before a cut; dist_diff:
# the largest total-variation distance between predicted distributions before a cut; canary_*: count, sum and
# sum of squares of the per-token losses on tokens drawn from the val unigram after a cut; blind_*: count, sum
# and sum of squares of the gaps g between a copy's loss at its cut on the original's (unshown) token and the
# mean canonical loss at that position, of the covariates x and y (that token's unigram and bigram surprisals,
# each less its mean over the canonical targets), and the sums of g * x, g * y and x * y (evidence written
# before the bigram lacks the y sums: readers take them as 0)
PROBE = {"rows": int, "nll_diff": NUM, "dist_diff": NUM, "logits_shape": list, "logits_dtype": str,
         "canary_tokens": int, "canary_nll_sum": NUM, "canary_nll_sq": NUM,
         "blind_rows": int, "blind_gap_sum": NUM, "blind_gap_sq": NUM, "blind_x_sum": NUM, "blind_x_sq": NUM,
         "blind_gx_sum": NUM, "blind_y_sum": NUM, "blind_y_sq": NUM, "blind_gy_sum": NUM, "blind_xy_sum": NUM}

# --- 2. events in run-K.jsonl -------------------------------------------------------------------------------------
# every event has "event" (its kind); referee events also have "t" (launcher seconds since the repetition was
# launched) and, where one rank is meant, "rank".
EVENTS: dict[str, dict[str, Any]] = {
    "init": {"rank": int, "api_version": int, "device": str, "device_name": str, "seed": int,
             "world_size": int},
    "loader": {"from_step": int, "batch_tokens": int, "seq_len": int, "accum_steps": int, "layout": str,
               "align_to_bos": bool, "max_doc_len": OPT_INT},
    "warmup": {"seconds": NUM, "digest_before": str, "digest_after": str, "restored": bool,
               "micro_batches": int},
    "model": {"params": int, "embedding_params": int, "flops_per_token": NUM, "flops_source": str},
    "start": {"t": NUM, "start_loss": OPT_NUM, "no_data_level": NUM, "ranks": list},
    "train": {"batches": int, "timed_s": NUM, "tokens": int},
    # split: "scored" (the track's val tokens) or "monitor" (intermediate validations on val tokens after them);
    # untimed_s / charged_s: its seconds off the clock and counted as timed; val_budget_s: what is left of the
    # validation budget (val_fraction x timed seconds, less the untimed seconds of validations after the
    # `val_free` first ones)
    "val": {"step": OPT_INT, "batches": int, "timed_s": NUM, "loss": NUM, "tokens": int, "seconds": NUM,
            "ranks": list, "split": str, "untimed_s": NUM, "charged_s": NUM, "val_budget_s": NUM},
    # time outside the clock before start(), and its budgets (the track's [budget]); charged_s counts as timed
    "budget": {"pre_start_s": NUM, "pre_start_budget_s": NUM, "warmup_s": NUM, "warmup_budget_s": NUM,
               "charged_s": NUM, "val_fraction": NUM, "val_free": int},
    "log": {"step": OPT_INT, "scalars": dict},
    "warning": {"message": str},
    # a problem that explains others (a rank's exception, the launcher's timeout or interruption) carries them as
    # its `consequences` (not problems of their own: "rank 0 never called finish()" after rank 1 crashed) and,
    # for an exception, `where`: the script's line it came from
    "problem": {"message": str, "where": OPT_STR, "consequences": list},
    "finish": {"t": NUM, "batches": int, "timed_s": NUM, "tokens": int, "ranks": list, "val_untimed_s": NUM,
               "charged_s": NUM},
    "seal": {"lines": int, "sha256": str},  # last: the count and sha256 of every byte before it; it catches
                                            # accidental edits after the run, not a forger (replay does)
}
EVENTS_OPTIONAL = {"problem": {"where", "consequences"}}

# --- 3. files of a run directory ----------------------------------------------------------------------------------
MANIFEST_FIELDS = {
    "harness_version": str, "api_version": int, "self_reported": bool, "refereed": bool, "created": str,
    "track": dict, "script": dict, "pins": dict, "env": dict, "hardware": str, "hardware_fingerprint": dict,
    "command": list, "nproc_per_node": int, "nnodes": int, "runs": int, "seeds": list, "repetitions": list,
}
# optional: "interrupted" (str): the launcher was interrupted, e.g. "SIGINT (Ctrl-C) during repetition 2 of 3"
# or "SIGTERM during repetition 1 of 3" (`kill`, Slurm's time limit); the manifest then lists the repetitions
# that ran, the one it interrupted marked "interrupted"
# "replica" (dict): the replica check (`speedrun.referee.replica`), written by the launcher after the repetitions:
# {"status": "checked" | "failed" | "none" | "off", "why": why not (or null), "seconds": the replica run's
# wallclock (or null), "repetitions": [REPLICA per repetition]}
MANIFEST_OPTIONAL = {"interrupted": str, "replica": dict}
# one repetition's replica check: checked (every rank's positions scored), why not, and over all ranks the
# count of positions, the sum and sum of squares of d = replica loss - scored loss, its largest size, and the
# sums of the scored and the replica losses; optional: bare (the replica called the model given to warmup()
# itself, start() having no logits_fn: an API 1 script, whose scored logits_fn may differ from it honestly)
REPLICA = {"k": int, "checked": bool, "why": OPT_STR, "positions": int, "d_sum": NUM, "d_sq": NUM, "d_max": NUM,
           "live_sum": NUM, "replica_sum": NUM, "bare": bool}
REPLICA_OPTIONAL = {"bare"}
# status: "ok" (exit 0, the referee saw finish() and found no problem), "invalid" (exit 0 and finished, with
# problems), "failed" (non-zero exit, or the launcher stopped it: timeout, a rank gone), "unfinished" (exit 0
# without finish()), "interrupted" (the launcher was interrupted while it ran), "stopped" (not run: an earlier
# repetition failed deterministically; or a prefix replay's planned stop), "unknown"
REPETITION_FIELDS = {"k": int, "status": str, "exit_code": OPT_INT, "wall_s": OPT_NUM, "seed": int}

VERDICT_FIELDS = {
    "run_dir": str, "track": str, "self_reported": bool, "refereed": bool, "qualifies": bool, "problems": list,
    "warnings": list, "target": dict, "metric": dict, "throughput": dict, "repetitions": list,
    "judged_step": OPT_INT, "script_sha256": OPT_STR, "hardware": OPT_STR, "hardware_fingerprint": (dict, type(None)),
    "harness_version": OPT_STR, "harness": dict, "verified_by": str, "verified_at": str,
    "status": str, "problem_details": dict, "blind": (dict, type(None)), "replica": (dict, type(None)),
}
# added in harness 0.3: a verdict written earlier lacks them (readers use .get)
VERDICT_OPTIONAL = {"status", "problem_details", "blind", "replica"}
# verdict["replica"]: the replica check of the good repetitions (`integrity.replica_status`): {"checked": every
# good repetition was, "status", "unchecked": {k: why not}, "test": `stats.ReplicaGap` pooled or null, "seconds"}
# verdict["blind"]: the blind positions of all repetitions' scored validations pooled (`stats.BlindGap`: positions,
# gap, sd, bar, raw_gap, raw_sd, reads), or null for fewer than two repetitions judged on them
# verdict["status"]: "qualifies", "does not qualify", or "interrupted" (the launcher was stopped: never qualifies)
# verdict["problem_details"]: problem (as in "problems") -> {"where": the script's line an exception came from,
# "log": the repetition's full log, "consequences": [what followed from it, not problems of their own]}, for the
# problems that have any of these
# verdict["harness"]: {"run": version that judged the run, "now": this version, "differs": [one phrase per harness
# file whose bytes differ from the run's pins]}: information, never a problem (replay settles what it changes)


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def check(obj: Any, fields: dict[str, Any], what: str, optional: set[str] = frozenset()) -> str | None:
    """None when `obj` is a dict carrying every field of `fields` with the right JSON type, else the reason."""
    if not isinstance(obj, dict):
        return f"{what} is not a JSON object"
    for name, kind in fields.items():
        if name not in obj:
            if name in optional:
                continue
            return f"{what} lacks field '{name}'"
        value = obj[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            return f"{what} field '{name}' is a boolean, expected {_type_name(kind)}"
        if not isinstance(value, kinds):
            return f"{what} field '{name}' has type {type(value).__name__}, expected {_type_name(kind)}"
    return None


def check_message(msg: Any) -> str | None:
    """Validate one channel message (rank -> launcher)."""
    if not isinstance(msg, dict) or not isinstance(msg.get("m"), str):
        return "not a message object (needs a string 'm')"
    fields = MESSAGES.get(msg["m"])
    if fields is None:
        return f"unknown message kind {msg['m']!r}"
    return check(msg, fields, f"message {msg['m']!r}", OPTIONAL.get(msg["m"], set()))
