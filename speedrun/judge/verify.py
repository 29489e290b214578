"""`speedrun verify RUN_DIR`: the verdict, from the run directory alone.

Anyone can re-verify a run without re-running it. This reads the manifest, the script copy and each
repetition's events as the launcher wrote them, and checks that
- the run was refereed (a plain `torchrun` run never qualifies), and the track file and the data files it
  pinned are the ones installed here now (each difference names the file); a harness other than the one that
  judged the run is reported as information (`verdict["harness"]`), since a record is evidence of what
  happened under its own harness and a newer harness re-establishes it by replay;
- every repetition exited cleanly, its events are intact (the seal matches) and hold no problem the referee
  found while it ran (rule breaks, phase violations, failed probes, a failed start check, files opened);
- every rank reported: its init carries the repetition's seed; each validation has all ranks, covers exactly
  the track's val tokens, and its loss is the sum of the ranks' sums; every rank's probe passed;
- the clock is consistent: the timed seconds equal finish - start - pauses from the launcher's timestamps and
  never exceed the process wallclock; the last validation directly precedes finish();
- no two repetitions are identical (that would mean the seed had no effect);
- the blind positions of all repetitions' scored validations, pooled, show no model reading its targets (the
  referee judged each repetition alone; pooled, the bar is sqrt(n) lower: `integrity.blind_pooled`);
- the replica check (the sealed model loaded afresh after the run, shown nothing after each checked position)
  repeats the scored losses: no mean gap over its bar, no logits other than the sealed model's
  (`integrity.replica_status`; a run it did not check is no problem here, and never a record);
- the script's sha256 matches its copy; the track's source rules hold (comments do not count);
- the final losses (or the losses at a declared judging step, `--step`) meet the target by the track's rule.
It writes `verdict.json` (`speedrun.cli.verify` prints it), and `qualifies` is true only when all of that holds.
A problem is said once and leads with its root cause: a failed repetition's first problem is how it ended,
with the script's line of the exception, the path of its full log and what followed from it (the verdict's
`problem_details`); a repetition that finished with problems is "invalid", never "ok"; and a run the launcher
was interrupted in says so first (its verdict's `status` is "interrupted").

Self-reported evidence (modded-nanogpt logs imported by `speedrun.legacy.modded`) goes through the same judge:
`EvidenceKind` says what it cannot show (no referee clock, no probes, no seal, no pins), so only each
repetition's printed loss, the track's statistical rule and the hardware apply, and the verdict says so plainly.
Both kinds yield one `Judgement` of `RepetitionResult`s and one verdict, so `record add` and `import-log` use
the judgement they already have instead of reading the run again.
"""

from __future__ import annotations

import io
import math
import re
import tokenize
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from speedrun.version import __version__
from speedrun.evidence import hardware, rundir
from speedrun.evidence import schema
from speedrun.judge import integrity
from speedrun.errors import SpeedrunError

if TYPE_CHECKING:
    from speedrun.judge.stats import BlindGap, EarliestStep, TargetResult
    from speedrun.tracks import Track

TIMING_SLACK_S = 2e-3
LOSS_REL_TOL = 1e-9
# dense bf16 peak FLOP/s per device, for MFU (datasheet figures)
PEAK_FLOPS = {"H100 80GB HBM3": 989e12, "H100 SXM": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
              "H200": 989e12, "GH200": 989e12, "A100": 312e12, "B200": 2250e12, "L40S": 362e12}


def strip_comments(source: str) -> str:
    """The source with its comments removed (strings kept: `importlib.import_module("...")` still counts)."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type != tokenize.COMMENT]
        return tokenize.untokenize(tokens)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "\n".join(line.split("#", 1)[0] for line in source.splitlines())


def rule_problems(track, script_text: str, loader_events: list[dict]) -> list[str]:
    """The track's checks on the submission source (comments excluded) and on the train shapes it asked for."""
    problems = []
    code = strip_comments(script_text)
    for pattern in track.checks.forbidden:
        m = re.search(pattern, code)
        if m:
            line = code[: m.start()].count("\n") + 1
            problems.append(f"script line {line} matches a pattern track {track.name} forbids: {pattern}")
    for ev in loader_events:
        problems += track.checks.shape_problems(track.name, ev.get("batch_tokens"), ev.get("seq_len"))
    return problems


@dataclass(frozen=True)
class EvidenceKind:
    """What a kind of evidence can show. One judge serves both kinds; these flags say which checks apply.

    A refereed run (`speedrun run`) carries what the referee measured: pins, a script copy, the launcher's seeds,
    sealed events with its clock, the ranks' reports and the probes. Self-reported evidence (modded-nanogpt logs
    brought in by `speedrun import-log`) carries only what a script printed: its losses, its times and its
    hardware, which is then held against the track's (nothing else timed it).
    """

    self_reported: bool
    referee: bool          # pins, script copy, seeds, seal, clock, rank reports and probes are there to check
    hardware_rule: bool    # hold each repetition's stated hardware against the track's
    repetition_fields: tuple[str, ...]  # what a judged repetition reports in the verdict, in this order


REFEREED = EvidenceKind(
    self_reported=False, referee=True, hardware_rule=False,
    repetition_fields=("k", "status", "exit_code", "wall_s", "seed", "final_loss", "timed_s", "batches", "tokens",
                       "problems", "warnings"))
SELF_REPORTED = EvidenceKind(
    self_reported=True, referee=False, hardware_rule=True,
    repetition_fields=("k", "status", "final_loss", "timed_s", "batches", "problems", "warnings", "source", "trial",
                       "hardware"))


@dataclass
class RepetitionResult:
    """One repetition as judged, of either kind: its judged loss and metric, and what is wrong with it."""

    kind: EvidenceKind
    k: int | None
    status: str | None
    exit_code: int | None = None
    wall_s: float | None = None
    seed: int | None = None
    final_loss: float | None = None
    timed_s: float | None = None
    batches: int | None = None
    tokens: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    source: str | None = None      # self-reported: the log file, the trial inside it, the hardware it names
    trial: int | None = None
    hardware: str | None = None
    details: dict = field(default_factory=dict)  # problem -> what explains it (the verdict's problem_details)

    @property
    def good(self) -> bool:
        """Judged, and nothing wrong: it counts toward the target and the metric."""
        return self.final_loss is not None and not self.problems

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.kind.repetition_fields}

    # read like the verdict's repetition entries
    def __getitem__(self, name: str):
        return self.to_dict()[name]

    def get(self, name: str, default=None):
        return self.to_dict().get(name, default)


def _blank(k, rep: dict, problems: list[str]) -> RepetitionResult:
    return RepetitionResult(REFEREED, k, rep.get("status"), rep.get("exit_code"), rep.get("wall_s"), rep.get("seed"),
                            problems=problems)


def problem_detail(event: dict | None, log: Path | None = None) -> dict:
    """What explains a problem (an entry of the verdict's `problem_details`, see `schema.VERDICT_FIELDS`): the
    script's line an exception came from and the consequences its `problem` event carries, and the full log."""
    event = event or {}
    detail: dict = {}
    if isinstance(event.get("where"), str):
        detail["where"] = event["where"]
    if log is not None and log.is_file():
        detail["log"] = str(log)
    consequences = event.get("consequences")
    if isinstance(consequences, list) and consequences:
        detail["consequences"] = [str(c) for c in consequences]
    return detail


def detail_lines(detail: dict, most: int = 4, width: int = 100) -> list[str]:
    """A problem's detail as the lines shown under it (the launcher's progress and `print_verdict` alike): the
    script's line, the full log, and the first `most` consequences, each cut to `width` characters (the
    verdict keeps them whole)."""
    lines = []
    if detail.get("where"):
        lines.append(f"at {detail['where']}")
    if detail.get("log"):
        lines.append(f"full log: {detail['log']}")
    then = [str(c).splitlines()[0] if str(c).strip() else str(c) for c in detail.get("consequences") or []]
    then = [c if len(c) <= width else c[:width - 3] + "..." for c in then]
    if then:
        shown = then if len(then) <= most else then[:most - 1] + [f"{len(then) - most + 1} more"]
        lines.append("and so: " + "; ".join(shown))
    return lines


def check_repetition(track, events: rundir.Events, rep: dict, seed: int | None, step: int | None) -> RepetitionResult:
    """Check one refereed repetition's events; returns its summary with a list of problems (empty = valid).

    A repetition that did not end well leads with how it ended (its status and the launcher's error, which is
    the root cause the referee recorded, if any): that cause's own event is not listed again, and what it
    explains comes with it (`details`), with the repetition's full log."""
    k = rep.get("k")
    out = _blank(k, rep, [])
    problems = out.problems
    status, error = rep.get("status"), rep.get("error")
    raised = events.of("problem")
    cause = None
    if status not in ("ok", "invalid"):  # "invalid": finished, and its problems say the rest
        cause = next((e for e in raised if error and e.get("message") == error), None)
        code = rep.get("exit_code")
        head = f"repetition {k} {status}" + (f" (exit code {code})" if code is not None else "") \
            + (f": {error}" if error else "")
        problems.append(head)
        detail = problem_detail(cause, rundir.log_path(events.path.parent, k) if events.path else None)
        if detail:
            out.details[head] = detail
    if not events.sealed:
        problems.append(f"{rundir.events_name(k)} has no seal (the launcher died before the repetition ended?)")
    elif not events.seal_ok:
        problems.append(f"{rundir.events_name(k)} was modified after the run (its seal does not match)")
    for e in raised:
        if e is cause:
            continue
        text = f"repetition {k}: {e.get('message')}"
        problems.append(text)
        detail = problem_detail(e) if e.get("where") or e.get("consequences") else {}
        if detail:
            out.details[text] = detail
    out.warnings = [e.get("message") for e in events.of("warning")]

    referee_saw = bool(problems)  # a failed or stopped repetition: do not list every missing phase again
    inits = events.of("init")
    world = inits[0].get("world_size") if inits else None
    if not inits:
        if not referee_saw:
            problems.append(f"repetition {k}: no rank called speedrun.init()")
    else:
        ranks = sorted(e.get("rank") for e in inits)
        if ranks != list(range(world or 0)):
            problems.append(f"repetition {k}: ranks {ranks} reported, the run has {world}")
        for e in inits:
            if seed is not None and e.get("seed") != seed:
                problems.append(f"repetition {k}: rank {e.get('rank')} ran with seed {e.get('seed')}, the launcher "
                                f"chose {seed}")
    for w in events.of("warmup"):
        if not w.get("restored") or w.get("digest_before") != w.get("digest_after"):
            problems.append(f"repetition {k}: warm-up changed the model/optimizer state on rank {w.get('rank')}")

    vals, start, finish = events.of("val"), events.last("start"), events.last("finish")
    if not referee_saw:
        if start is None:
            problems.append(f"repetition {k}: the run never started (no start event)")
        if finish is None:
            problems.append(f"repetition {k}: the run never finished (no finish event)")
        if not vals:
            problems.append(f"repetition {k} has no validation")
    if not vals:
        return out
    for v in vals:
        label = f"repetition {k}: validation at step {v.get('step')}"
        # a monitor validation (referee v3) measures val tokens after the scored ones; only scored ones count
        monitor = v.get("split") == "monitor"
        divisor = v.get("tokens") if monitor and isinstance(v.get("tokens"), int) else track.val_tokens
        if not monitor and v.get("tokens") != track.val_tokens:
            problems.append(f"{label} covered {v.get('tokens')} tokens, the track needs {track.val_tokens}")
        ranks = v.get("ranks") or []
        if world is not None and len(ranks) != world:
            problems.append(f"{label} has {len(ranks)} rank report(s), the run has {world} ranks")
        total = math.fsum(r.get("loss_sum") or 0.0 for r in ranks)
        loss = v.get("loss")
        if not isinstance(loss, (int, float)) or not divisor or not math.isclose(total / divisor, loss,
                                                                   rel_tol=LOSS_REL_TOL, abs_tol=1e-12):
            problems.append(f"{label}: its loss {loss} is not the ranks' sums / val tokens")
        for r in ranks:
            probe = r.get("probe") or {}
            if not probe.get("passed"):
                problems.append(f"{label}: rank {r.get('rank')}'s probe did not pass")

    timeline = vals
    vals = [v for v in vals if v.get("split", "scored") == "scored"]
    if not vals:
        problems.append(f"repetition {k} has no validation of the scored val tokens")
        return out
    if step is not None:
        at = [v for v in vals if v.get("step") == step]
        if not at:
            problems.append(f"repetition {k} has no validation at the judging step {step}")
            return out
        judged = at[-1]
    else:
        judged = vals[-1]
    out.final_loss = judged.get("loss")
    out.batches = judged.get("batches")
    out.timed_s = judged.get("timed_s") if step is not None else (finish or {}).get("timed_s")

    if start is not None and finish is not None:
        out.tokens = finish.get("tokens")
        if timeline[-1].get("batches") != finish.get("batches"):
            problems.append(f"repetition {k} trained after its last validation")
        # time outside the clock beyond its budgets counts as timed (the `budget` event, each val's untimed_s)
        paused = -float((events.last("budget") or {}).get("charged_s", 0.0))
        for v in timeline:
            if v.get("t", 0.0) > finish.get("t", 0.0):  # the scored validation after finish(): clock stopped
                continue
            expect = v.get("t", 0.0) - start.get("t", 0.0) - paused
            if abs(expect - v.get("timed_s", 0.0)) > TIMING_SLACK_S:
                problems.append(f"repetition {k}: clock inconsistent at validation step {v.get('step')}")
                break
            paused += v.get("untimed_s", v.get("seconds", 0.0))
        timed = finish.get("timed_s", 0.0)
        # the scored validation after finish(): what it was charged (its wait after finish() and its part beyond
        # the validation cap) counts as timed, after the clock stopped
        late = sum(v.get("charged_s", 0.0) for v in timeline if v.get("t", 0.0) > finish.get("t", 0.0))
        span = finish.get("t", 0.0) - start.get("t", 0.0) - paused + late
        if abs(span - timed) > TIMING_SLACK_S:
            problems.append(f"repetition {k}: clock inconsistent: {span:.4f} s between start and finish outside "
                            f"validation, but {timed:.4f} s timed")
        wall = rep.get("wall_s")
        if wall is not None and timed > wall:
            problems.append(f"repetition {k}: timed {timed:.3f} s exceeds the process wallclock {wall:.3f} s")
    return out


def _pin_problems(manifest: dict, track) -> tuple[list[str], list[str], dict]:
    """Track and data of the run against what is installed here now (a difference is a problem: they define
    the task), and the harness the run was judged under against this one (a difference is information: a
    record is evidence of what happened under the harness that judged it; replay re-establishes it)."""
    from speedrun import paths
    from speedrun.evidence import pins

    problems, warnings = [], []
    harness = {"run": manifest.get("harness_version"), "now": __version__, "differs": []}
    recorded = manifest.get("pins")
    if not recorded:
        return [f"the run has no pins (made by harness {manifest.get('harness_version')}, before pins existed): "
                f"re-run it under this harness"], [], harness
    hasher = pins.Hasher()
    harness["differs"] = pins.diff_harness(recorded["harness"], hasher)
    tpin = recorded.get("track") or {}
    if tpin.get("sha256") != track.config_sha256:
        problems.append(f"track file {track.path} differs from the one the run used ({tpin.get('path')})")
    folder = paths.track_data_dir(track)  # the files are named by the pins; their bytes are what is compared
    missing = []
    for name, pin in (recorded.get("data") or {}).items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
        elif hasher.sha256(path) != pin.get("sha256"):
            problems.append(f"data file {name} differs from the one the run used (sha256 {pin.get('sha256', '')[:12]}...)")
    if missing:
        warnings.append(f"{len(missing)} data file(s) of the run are not present here, so not re-checked "
                        f"(e.g. {missing[0]})")
    hasher.flush()
    return problems, warnings, harness


def throughput(manifest: dict, results: list[dict], events_by_k: dict) -> dict:
    """Tokens per second, model FLOPs per token (6N plus attention when the script declares it, else 6N) and
    MFU against the device's peak when the device is known."""
    rates = [r["tokens"] / r["timed_s"] for r in results if r.get("tokens") and r.get("timed_s")]
    tokens_per_s = math.fsum(rates) / len(rates) if rates else None
    model = None
    for events in events_by_k.values():
        model = events.last("model") or model
    flops = model.get("flops_per_token") if model else None
    fp = manifest.get("hardware_fingerprint") or {}
    peak = None
    if fp.get("kind") == "cuda":
        name = fp.get("gpu_name") or ""
        per = next((v for key, v in PEAK_FLOPS.items() if key in name), None)
        if per:
            peak = per * manifest.get("nproc_per_node", 1) * manifest.get("nnodes", 1)
    mfu = tokens_per_s * flops / peak if tokens_per_s and flops and peak else None
    return {"tokens_per_s": tokens_per_s, "flops_per_token": flops,
            "flops_source": model.get("flops_source") if model else None, "peak_flops": peak, "mfu": mfu}


def identical_repetitions(results: list[dict]) -> list[str]:
    seen: dict[float, int] = {}
    problems = []
    for r in results:
        loss = r.get("final_loss")
        if loss is None:
            continue
        if loss in seen:
            problems.append(f"repetitions {seen[loss]} and {r['k']} have identical final losses ({loss!r}): the "
                            f"seed has no effect, so they are not independent runs")
        else:
            seen[loss] = r["k"]
    return problems


_STATUS_TEXT = {"truncated": "is truncated", "missing-step": "has no result at the declared step",
                "missing-field": "has no value in the judged loss field"}


def check_imported_repetition(run_dir: Path, meta: dict, manifest: dict, judged_step: int | None) \
        -> tuple[RepetitionResult, list[dict] | None]:
    """Judge one self-reported repetition as modded-nanogpt does: its loss at the declared step, else at its
    final validation. There is no clock, seal or probe to check, only what the log printed. Returns the result
    and its validations up to the judged step (None when it has no judged loss)."""
    k = meta.get("k")
    where = f" ({meta['source']}, trial {meta.get('trial')})" if meta.get("source") else ""
    rep = RepetitionResult(SELF_REPORTED, k, meta.get("status"), source=meta.get("source"), trial=meta.get("trial"),
                           hardware=meta.get("hardware", manifest.get("hardware")))
    path = rundir.events_path(run_dir, k)
    if not path.exists():
        rep.problems.append(f"repetition {k}{where} left no events ({rundir.events_name(k)})")
        return rep, None
    try:
        events = rundir.read_events(path)
    except SpeedrunError as exc:
        rep.problems.append(f"repetition {k}{where}: {exc}")
        return rep, None
    rep.warnings = [e.get("message") for e in events.of("warning")]
    if meta.get("status") not in ("ok", None):
        notes = "; ".join(meta.get("notes") or [])
        what = _STATUS_TEXT.get(meta.get("status"), f"is {meta.get('status')}")
        rep.problems.append(f"repetition {k}{where} {what}" + (f": {notes}" if notes else ""))
        return rep, None
    vals = events.of("val")
    if not vals:
        rep.problems.append(f"repetition {k}{where} has no validation")
        return rep, None
    if judged_step is not None:
        line = [v for v in vals if v.get("step") == judged_step]
        if not line:
            rep.problems.append(f"repetition {k}{where} has no validation at the declared step {judged_step}")
            return rep, None
        line = line[-1]
    elif events.last("finish") is None:
        rep.problems.append(f"repetition {k}{where} is truncated (no final validation)")
        return rep, None
    else:
        line = vals[-1]
    loss = line.get("loss")
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        rep.problems.append(f"repetition {k}{where}: its loss at step {line.get('step')} is not a number")
        return rep, None
    rep.final_loss, rep.timed_s, rep.batches = float(loss), line.get("timed_s"), line.get("step")
    return rep, [v for v in vals if judged_step is None or (v.get("step") or 0) <= judged_step]


def _ranges(ks: list[int]) -> str:
    ks = sorted(ks)
    parts, start = [], None
    for i, k in enumerate(ks):
        if start is None:
            start = k
        if i + 1 == len(ks) or ks[i + 1] != k + 1:
            parts.append(str(start) if start == k else f"{start}-{k}")
            start = None
    return ", ".join(parts)


def hardware_findings(reps: list[RepetitionResult], manifest: dict, track) -> tuple[list[str], list[str]]:
    """Hold each repetition's hardware against the track's: a mismatch is a problem on wallclock tracks (time
    depends on it) and a warning on step-count tracks (the batch is fixed, so steps do not)."""
    problems, warnings = [], []
    fallback = (manifest.get("hardware"), manifest.get("hardware_fingerprint"))
    by_label: dict[str | None, list] = {}
    for rep in reps:
        by_label.setdefault(rep.hardware, []).append(rep)
    for label, group in by_label.items():
        ks = _ranges([r.k for r in group])
        who = f"repetition{'s' if len(group) > 1 else ''} {ks}"
        if label is None:
            warnings.append(f"{who}: the log does not say which hardware it ran on; the track expects "
                            f"{track.hardware}")
            continue
        fingerprint = None
        if label == fallback[0] and fallback[1]:
            fingerprint = fallback[1]
        elif (m := re.match(r"^(\d+)x(.+)$", label)):
            fingerprint = {"gpu_name": m.group(2), "gpu_count": int(m.group(1))}
        match = hardware.matches(fingerprint, track.hardware)
        if match is None:
            warnings.append(f"{who} ran on {label}: cannot tell whether that is the track's {track.hardware}")
        elif not match:
            text = f"{who} ran on {label}; track {track.name} expects {track.hardware}"
            if track.timed:
                problems.append(text)
            else:
                warnings.append(text + " (steps do not depend on the hardware: the global batch is fixed)")
    return problems, warnings


@dataclass
class Judgement:
    """What a run directory's evidence amounts to under its track's rules: the one verdict, of either kind.

    `verdict()` is the content of `verdict.json` (see `speedrun.evidence.schema.VERDICT_FIELDS`); the manifest
    and the track it was judged against stay here, so callers need not read them again."""

    run_dir: Path
    manifest: dict
    track: "Track"
    kind: EvidenceKind
    refereed: bool
    repetitions: list[RepetitionResult]
    problems: list[str]
    warnings: list[str]
    target: "TargetResult"          # the track's rule over the judged losses of the good repetitions
    judged_step: int | None         # the declared judging step (None: each repetition's final validation)
    earliest: "EarliestStep | None" = None  # self-reported, margin rule: the earliest common step where it holds
    events: dict = field(default_factory=dict)  # refereed: repetition number -> its events
    verified_at: str = ""
    harness: dict = field(default_factory=dict)  # the run's harness against this one: information, not a problem
    details: dict = field(default_factory=dict)  # problem -> what explains it (verdict["problem_details"])
    interrupted: str | None = None  # the launcher was interrupted (the manifest's "interrupted")
    blind: "BlindGap | None" = None  # refereed: the blind positions of all repetitions pooled (None: one or none)
    replica: dict | None = None      # refereed: the replica check of the good repetitions (integrity.replica_status)

    @property
    def self_reported(self) -> bool:
        return self.kind.self_reported

    @property
    def hardware(self) -> str | None:
        return self.manifest.get("hardware")

    @property
    def qualifies(self) -> bool:
        return not self.problems and bool(self.target.passed)

    @property
    def status(self) -> str:
        """The verdict in a word: "interrupted", "qualifies" or "does not qualify"."""
        return "interrupted" if self.interrupted else "qualifies" if self.qualifies else "does not qualify"

    @property
    def good(self) -> list[RepetitionResult]:
        return [r for r in self.repetitions if r.good]

    def to_dict(self) -> dict:
        """The judgement in brief (what `import-log` reports)."""
        return {"repetitions": [r.to_dict() for r in self.repetitions], "problems": self.problems,
                "warnings": self.warnings, "target": self.target.to_dict(), "judged_step": self.judged_step,
                "earliest": self.earliest.to_dict() if self.earliest is not None else None,
                "hardware": self.hardware, "qualifies": self.qualifies}

    def verdict(self) -> dict:
        from speedrun.judge import stats

        field_name = self.track.metric_field
        good = [r.to_dict() for r in self.good]
        values = [r[field_name] for r in good if r.get(field_name) is not None]
        mean, sd = stats.mean_sd(values)
        manifest = self.manifest
        sandboxed, sandbox = integrity.sandbox_status(manifest)
        return {
            "run_dir": str(self.run_dir),
            "track": self.track.name,
            "self_reported": self.self_reported,
            "refereed": self.refereed,
            "status": self.status,
            "qualifies": self.qualifies,
            "problems": self.problems,
            "problem_details": {p: self.details[p] for p in self.problems if p in self.details},
            "warnings": self.warnings,
            "target": self.target.to_dict(),
            "judged_step": self.judged_step,
            "metric": {"name": self.track.metric, "unit": self.track.metric_unit, "values": values, "mean": mean,
                       "sd": sd},
            "throughput": throughput(manifest, good, self.events) if self.kind.referee else {},
            "blind": self.blind.to_dict() if self.blind is not None else None,
            "replica": self.replica,
            "repetitions": [r.to_dict() for r in self.repetitions],
            "script_sha256": (manifest.get("script") or {}).get("sha256"),
            "hardware": manifest.get("hardware"),
            "hardware_fingerprint": manifest.get("hardware_fingerprint"),
            "harness_version": manifest.get("harness_version"),
            # only a sandboxed run can become a record (ledger.compare refuses the others)
            "sandboxed": sandboxed,
            "sandbox": sandbox,
            "harness": self.harness or {"run": manifest.get("harness_version"), "now": __version__, "differs": []},
            "verified_by": __version__,
            "verified_at": self.verified_at,
        }

    def write(self) -> dict:
        """Write `verdict.json` into the run directory; returns what was written."""
        verdict = self.verdict()
        rundir.write_json_atomic(self.run_dir / rundir.VERDICT, verdict)
        return verdict


def read_manifest(run_dir: str | Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SpeedrunError(f"{run_dir}: not a run directory")
    return rundir.read_json(run_dir / rundir.MANIFEST)


def judge(run_dir: str | Path, step: int | None = None, manifest: dict | None = None, track=None) -> Judgement:
    """Judge a run directory of either kind (nothing is written). `manifest` and `track` default to the run's
    own; `step` is the declared judging step (self-reported evidence: else the one recorded at import)."""
    from speedrun.judge import stats
    from speedrun.tracks import load_track

    run_dir = Path(run_dir)
    if manifest is None:
        manifest = read_manifest(run_dir)
    if track is None:
        try:
            track_name = manifest["track"]["name"]
        except (KeyError, TypeError):
            raise SpeedrunError(f"{run_dir / rundir.MANIFEST}: field 'track.name' missing") from None
        track = load_track(track_name)
    kind = SELF_REPORTED if manifest.get("self_reported") else REFEREED
    refereed = bool(manifest.get("refereed", False)) and kind.referee
    problems: list[str] = []
    warnings: list[str] = []
    judged_step = step
    harness = {"run": manifest.get("harness_version"), "now": __version__, "differs": []}
    if kind.self_reported and step is None:
        judged_step = manifest.get("requested_step")
        if judged_step is not None and (not isinstance(judged_step, int) or isinstance(judged_step, bool)):
            raise SpeedrunError(f"{run_dir / rundir.MANIFEST}: field 'requested_step': expected a step number or null")

    # --- the evidence as a whole ---
    script_text = ""
    if kind.referee:
        if not refereed:
            problems.append("unrefereed run (started without `speedrun run`): it can never qualify for a record")
        malformed = schema.check(manifest, {**schema.MANIFEST_FIELDS, **schema.MANIFEST_OPTIONAL}, rundir.MANIFEST,
                                 set(schema.MANIFEST_OPTIONAL))
        if malformed:
            problems.append(malformed)
        else:
            for rep in manifest["repetitions"]:
                malformed = schema.check(rep, schema.REPETITION_FIELDS, f"{rundir.MANIFEST} repetition")
                if malformed:
                    problems.append(malformed)
                    break
        pin_problems, pin_warnings, harness = _pin_problems(manifest, track)
        problems += pin_problems
        warnings += pin_warnings
        script = manifest.get("script") or {}
        path = rundir.script_path(run_dir, manifest)
        if not script.get("name") or not path.is_file():
            problems.append("the script copy is missing from the run directory")
        else:
            if rundir.sha256_file(path) != script.get("sha256"):
                problems.append(f"{path.name} changed after the run (sha256 does not match the manifest)")
            script_text = path.read_text(errors="replace")
        reps = manifest.get("repetitions") or []
    else:
        recorded = (manifest.get("track") or {}).get("name")
        if recorded not in (None, track.name):
            problems.append(f"the evidence was imported for track {recorded}, not {track.name}")
        reps = manifest.get("repetitions") or [{"k": k, "status": None} for k in rundir.iter_repetitions(run_dir)]
    if not reps:
        problems.append("no repetitions recorded")
    seeds = manifest.get("seeds") or []
    if kind.referee and len(set(seeds)) != len(seeds):
        problems.append(f"the repetitions' seeds are not distinct: {seeds}")

    # --- each repetition ---
    results: list[RepetitionResult] = []
    events_by_k: dict = {}
    vals_by_k: dict = {}
    loader_events: list[dict] = []
    for rep in reps:
        k = rep.get("k")
        if not kind.referee:
            result, vals = check_imported_repetition(run_dir, rep, manifest, judged_step)
            results.append(result)
            if vals is not None:
                vals_by_k[k] = vals
            continue
        path = rundir.events_path(run_dir, k)
        # "stopped" with events: it ran and was stopped as planned (a prefix replay), judged as it stands
        if rep.get("status") == "stopped" and not path.exists():
            results.append(_blank(k, rep, [f"repetition {k} was not run: {rep.get('error')}"]))
            continue
        if not path.exists():
            results.append(_blank(k, rep, [f"repetition {k} left no events ({rundir.events_name(k)})"]))
            continue
        try:
            events = rundir.read_events(path)
        except SpeedrunError as exc:
            results.append(_blank(k, rep, [str(exc)]))
            continue
        events_by_k[k] = events
        loader_events += events.of("loader")
        seed = rep.get("seed", seeds[k - 1] if isinstance(k, int) and 0 < k <= len(seeds) else None)
        result = check_repetition(track, events, rep, seed, step)
        if result.status == "ok" and result.problems:  # finished, but it cannot count
            result.status = "invalid"
        results.append(result)

    # --- the findings, in order: the evidence's own, then each repetition's, then across repetitions ---
    if kind.referee:
        problems += rule_problems(track, script_text, loader_events)
    if kind.hardware_rule:
        hw_problems, hw_warnings = hardware_findings(results, manifest, track)
        problems += hw_problems
        warnings += hw_warnings
    details: dict = {}
    interrupted = manifest.get("interrupted") if kind.referee else None
    if isinstance(interrupted, str):
        # the root cause of everything that run lacks: said first; the interrupted repetition's ending folds in
        not_run = max(0, int(manifest.get("runs") or 0) - len(reps)) if isinstance(manifest.get("runs"), int) else 0
        first = f"the run was interrupted: {interrupted}" + (f"; {not_run} repetition(s) not run" if not_run else "")
        problems.insert(0, first)
        for r in results:
            if _interrupted_head(r):
                detail = r.details.get(r.problems[0], {})
                details[first] = {**detail, "consequences": [f"repetition {r.k}: {c}"
                                                             for c in detail.get("consequences", [])]}
    else:
        interrupted = None
    for r in results:
        own = r.problems[1:] if interrupted and _interrupted_head(r) else r.problems
        problems += own
        details.update({p: d for p, d in r.details.items() if p in own})
        warnings += [f"repetition {r.k}: {w}" for w in r.warnings]
    if kind.referee:
        problems += identical_repetitions([r.to_dict() for r in results])
        problems += integrity.evidence_problems(run_dir, manifest)
        problems += integrity.plausibility(track, [r.to_dict() for r in results], events_by_k)
        blind, blind_problems = integrity.blind_pooled(events_by_k)
        problems += blind_problems
        replica, replica_problems = integrity.replica_status(manifest, [r.k for r in results if r.good])
        problems += replica_problems
    else:
        blind, replica = None, None
    for skipped in (manifest.get("skipped_files") or []) if kind.self_reported else []:
        warnings.append(f"{skipped.get('name')} was not imported: {skipped.get('reason')}")
    good = [r for r in results if r.good]
    ends = sorted({r.batches for r in good if r.batches is not None})
    if kind.self_reported and judged_step is None and len(ends) > 1:
        warnings.append(f"the repetitions were judged at different steps ({', '.join(map(str, ends))}): a record "
                        f"is judged at one step for all its runs; declare it (import-log --step)")
    target = stats.target_test([r.final_loss for r in good], track.target_val_loss, track.rule,
                               stats.sd_floor(track) if kind.referee else None)
    earliest = None
    if kind.self_reported and track.rule.test == "margin" and good and len(good) == len(results):
        earliest = stats.earliest_passing_step({r.k: vals_by_k[r.k] for r in good}, track.target_val_loss,
                                               track.rule)
    # a finding reached twice (the same rule broken in two places, the same pin seen twice) is said once
    problems, warnings = list(dict.fromkeys(problems)), list(dict.fromkeys(warnings))
    return Judgement(run_dir, manifest, track, kind, refereed, results, problems, warnings, target, judged_step,
                     earliest, events_by_k, datetime.now(timezone.utc).isoformat(timespec="seconds"), harness,
                     details, interrupted, blind, replica)


def _interrupted_head(r: RepetitionResult) -> bool:
    """Does `r` lead with its interruption (said once for the whole run, where its consequences fold)?"""
    return r.status == "interrupted" and bool(r.problems) and r.problems[0].startswith(f"repetition {r.k} interrupted")


def check_imported(run_dir: str | Path, manifest: dict, track) -> Judgement:
    """Judge imported (self-reported) evidence against `track` (refusing a refereed run's manifest)."""
    if not manifest.get("self_reported"):
        raise SpeedrunError(f"{run_dir}: not imported evidence (the manifest is not marked self_reported)")
    return judge(run_dir, manifest=manifest, track=track)


def verify_run_dir(run_dir: str | Path, write: bool = True, step: int | None = None) -> dict:
    """Verify a run directory; returns the verdict (and writes verdict.json unless `write` is false)."""
    judgement = judge(run_dir, step=step)
    verdict = judgement.verdict()
    if write:
        rundir.write_json_atomic(judgement.run_dir / rundir.VERDICT, verdict)
    return verdict
