"""Import modded-nanogpt record logs as self-reported run evidence (`speedrun import-log`).

Years of speedrun history exist only as the text logs the training scripts wrote. Turning them into the same
evidence a referee run leaves (manifest + `run-K.jsonl`) lets `verify`, `plot` and the ledger treat them
alike, while the manifest's `"self_reported": true` and the missing seal keep them apart from refereed runs:
nothing here was timed or probed by us, we only read what the script printed.

The parser follows the format facts of every era (see `../shared/reference/modded-nanogpt-logs.md`):
llm.c-style `s:N trl:/tel:` lines without times; script + `=`*100 separators + environment + output; late-2024
files opening with a separator; warm-up chatter; optimization-track files with times in seconds, extra fields
and many trials per file. A trial's result is its *last* validation line (never the largest train_time: early
eras restart the clock after compiling). Unknown lines and truncation are reported, never fatal.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from speedrun import API_VERSION, __version__
from speedrun.errors import SpeedrunError
from speedrun.evidence import MANIFEST, EventWriter, events_path, sha256_file, write_json_atomic

SOURCE = "modded-nanogpt log"
SEPARATOR = "=" * 100
MAX_TRAIN_EVENTS = 200  # train lines kept per trial (evenly sampled, plus the last one)

# modded-nanogpt record folders -> our track names
MODDED_TRACKS = {
    "track_1_short": "gpt2-small",
    "track_2_medium": "gpt2-medium",
    "track_3_optimization": "optimization",
}

_STEP = re.compile(r"^step:(\d+)/(\d+)\s+(.*)$")
_LLMC = re.compile(r"^s:(\d+)\s+(trl|tel):(\S+)(?:\s+\S+:\S+)*\s*$")
_TIME = re.compile(r"^(\d+(?:\.\d+)?)(ms|s)$")
_TORCH = re.compile(
    r"^Running pytorch (\S+) compiled for CUDA (\S+?)(?: on (.+?) with world_size (\d+))?\s*$", re.I)
_PYTHON = re.compile(r"^Running Python (\d+\.\d+(?:\.\d+)?)", re.I)
_TRITON = re.compile(r"^Running Triton version (\S+)", re.I)
_GPU_ROW = re.compile(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off)\s+\|\s+[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:")
_KNOWN_CHATTER = re.compile(
    r"^(peak memory|resetting model|nvidia-smi|.*warm.?up|.*compil|.*dataloader|running )", re.I)
_MODEL_DIM = re.compile(r"\b(?:model_dim|n_embd)\s*(?::\s*int\s*)?=\s*(\d+)")


@dataclass
class StepLine:
    """One step or validation line: `seconds` is None in eras that print no time."""

    kind: str  # "val" or "train"
    step: int
    total: int | None
    loss: float | None
    seconds: float | None
    lineno: int
    unit: str | None = None  # "ms" or "s", as printed
    bad_loss: bool = False  # a loss was printed but is nan/inf/garbled


@dataclass
class Trial:
    """One training run inside a log file (optimization-track files hold many)."""

    number: int
    vals: list[StepLine] = field(default_factory=list)
    trains: list[StepLine] = field(default_factory=list)
    last: StepLine | None = None  # the last step-bearing line, of either kind
    unknown: list[tuple[int, str]] = field(default_factory=list)
    nonfinite: int = 0
    clock_restart: StepLine | None = None  # first line whose train_time is below the previous one

    @property
    def total(self) -> int | None:
        return self.last.total if self.last else None

    @property
    def complete(self) -> bool:
        """Ended on a validation line at the scheduled last step (or, without a schedule, on any val line)."""
        last = self.last
        return last is not None and last.kind == "val" and (last.total is None or last.step == last.total)

    def val_at(self, step: int) -> StepLine | None:
        found = [v for v in self.vals if v.step == step]
        return found[-1] if found else None


@dataclass
class LegacyLog:
    path: Path
    era: str  # "llm.c" (no separators, no times) or "modded-nanogpt"
    env: dict
    world_size: int | None
    world_size_printed: bool  # optimization-track files say "... with world_size N"
    script: list[str]
    trials: list[Trial]


# --- parsing ------------------------------------------------------------------------------------------------


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _seconds(text: str) -> tuple[float | None, str | None]:
    m = _TIME.match(text)
    if not m:
        return None, None
    value = float(m.group(1))
    return (value / 1000.0 if m.group(2) == "ms" else value), m.group(2)


def parse_step_line(line: str, lineno: int = 0) -> StepLine | None:
    """Parse a `step:S/N ...` or llm.c `s:S trl:/tel:` line; None when the line is neither."""
    m = _STEP.match(line)
    if m:
        fields = dict(tok.split(":", 1) for tok in m.group(3).split() if ":" in tok)
        seconds, unit = _seconds(fields.get("train_time", ""))
        step, total = int(m.group(1)), int(m.group(2))
        if "val_loss" in fields:
            loss = _float(fields["val_loss"])
            return StepLine("val", step, total, loss, seconds, lineno, unit, bad_loss=loss is None)
        if seconds is not None:
            loss = _float(fields["train_loss"]) if "train_loss" in fields else None
            return StepLine("train", step, total, loss, seconds, lineno, unit,
                            bad_loss="train_loss" in fields and loss is None)
        return None
    m = _LLMC.match(line)
    if m:
        kind = "val" if m.group(2) == "tel" else "train"
        loss = _float(m.group(3))
        return StepLine(kind, int(m.group(1)), None, loss, None, lineno, bad_loss=loss is None)
    return None


def _regions(lines: list[str]) -> tuple[list[str], list[tuple[int, str]], list[tuple[int, str]]]:
    """Split into (script lines, environment lines, output lines); the latter two keep 1-based line numbers."""
    numbered = list(enumerate(lines, start=1))
    seps = [i for i, line in enumerate(lines) if line.rstrip() == SEPARATOR]
    if not seps:
        return [], [], numbered
    if seps[0] == 0:  # late-2024 files: separator, script, separator, environment, separator, output
        script_end = seps[1] if len(seps) > 1 else len(lines)
        script = lines[1:script_end]
    else:
        script_end = seps[0]
        script = lines[:script_end]
    env = numbered[script_end + 1:seps[-1]] if seps[-1] > script_end else []
    return script, env, numbered[seps[-1] + 1:]


def _read_env(lines: list[tuple[int, str]]) -> tuple[dict, int | None, bool]:
    env = {"torch": None, "cuda": None, "triton": None, "python": None, "device_name": None, "device_count": None}
    world_size = None
    gpus: dict[int, str] = {}
    for _, line in lines:
        text = line.strip()
        if m := _TORCH.match(text):
            env["torch"], env["cuda"] = m.group(1), m.group(2)
            if m.group(3):
                env["device_name"], world_size = m.group(3).strip(), int(m.group(4))
        elif m := _PYTHON.match(text):
            env["python"] = m.group(1)
        elif m := _TRITON.match(text):
            env["triton"] = m.group(1)
        elif m := _GPU_ROW.match(text):
            gpus[int(m.group(1))] = m.group(2).strip()
    if gpus:
        env["device_count"] = len(gpus)
        env["device_name"] = env["device_name"] or " / ".join(sorted(set(gpus.values())))
    elif world_size is not None:
        env["device_count"] = world_size
    return env, world_size or env["device_count"], world_size is not None


def _is_env_line(text: str) -> bool:
    return bool(_TORCH.match(text) or _PYTHON.match(text) or _TRITON.match(text) or _GPU_ROW.match(text))


def _split_trials(output: list[tuple[int, str]]) -> list[Trial]:
    """Group output lines into trials: a validation at step 0 after some steps starts a new one."""
    trials = [Trial(1)]
    for lineno, line in output:
        text = line.strip()
        if not text:
            continue
        parsed = parse_step_line(text, lineno)
        if parsed is None:
            if not (_KNOWN_CHATTER.match(text) or _is_env_line(text)):
                trials[-1].unknown.append((lineno, text))
            continue
        trial = trials[-1]
        if parsed.kind == "val" and parsed.step == 0 and trial.last is not None:
            trial = Trial(len(trials) + 1)
            trials.append(trial)
        trial.nonfinite += parsed.bad_loss
        previous = trial.last
        if (trial.clock_restart is None and previous is not None and previous.seconds is not None
                and parsed.seconds is not None and parsed.seconds < previous.seconds):
            trial.clock_restart = parsed
        (trial.vals if parsed.kind == "val" else trial.trains).append(parsed)
        trial.last = parsed
    return trials


def parse_log(path: str | Path) -> LegacyLog:
    """Read one modded-nanogpt log file of any era; raises `SpeedrunError` when it holds no training output."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot read: {exc.strerror}") from None
    lines = text.splitlines()
    script, env_lines, output = _regions(lines)
    trials = _split_trials(output)
    if not any(t.last for t in trials):
        raise SpeedrunError(f"{path}: no step or validation lines found (not a modded-nanogpt log?)")
    env, world_size, printed = _read_env(env_lines + output)
    era = "modded-nanogpt" if any(line.rstrip() == SEPARATOR for line in lines) else "llm.c"
    if era == "llm.c" and any(t.last.seconds is not None for t in trials if t.last):
        era = "modded-nanogpt"  # raw stdout of a later script, without the header
    return LegacyLog(path=path, era=era, env=env, world_size=world_size, world_size_printed=printed,
                     script=script, trials=trials)


# --- track inference ----------------------------------------------------------------------------------------


def infer_track(log: LegacyLog) -> tuple[str | None, str]:
    """Guess our track from the file's location, else its content; returns (name or None, how it was told)."""
    for part in reversed(log.path.resolve().parts):
        for modded, ours in MODDED_TRACKS.items():
            if modded in part:
                return ours, f"path ({modded})"
    if log.world_size_printed:
        return "optimization", "content (world_size on the PyTorch line)"
    if any(v.unit == "s" for t in log.trials for v in t.vals):
        return "optimization", "content (validation times in seconds)"
    dims = {int(d) for d in _MODEL_DIM.findall("\n".join(log.script))} & {768, 1024}
    if len(dims) == 1:
        dim = dims.pop()
        return ("gpt2-small" if dim == 768 else "gpt2-medium"), f"content (script model_dim={dim})"
    finals = [t.vals[-1].loss for t in log.trials if t.complete and t.vals[-1].loss is not None]
    if finals:
        mean = sum(finals) / len(finals)
        if 3.2 <= mean <= 3.4:
            return "gpt2-small", f"content (final val loss {mean:.3f}, near 3.28)"
        if 2.85 <= mean <= 3.0:
            return "gpt2-medium", f"content (final val loss {mean:.3f}, near 2.92)"
    return None, ""


# --- writing evidence ---------------------------------------------------------------------------------------


@dataclass
class TrialResult:
    """What one imported trial amounts to: the line judged as its result (None when it has none)."""

    k: int
    status: str  # "ok" or "truncated"
    result: StepLine | None
    last_step: int | None
    total: int | None
    notes: list[str]


def judge_trial(trial: Trial, step: int | None) -> TrialResult:
    """The trial's result: its final validation, or with `step` the validation at that step."""
    last = trial.last
    last_step, total = (last.step if last else None), trial.total
    where = f"step {last_step}" + (f" of {total}" if total is not None else "")
    if step is not None:
        line = trial.val_at(step)
        if line is None:
            return TrialResult(trial.number, "truncated", None, last_step, total,
                               [f"no validation at requested step {step} (log ends at {where})"])
        return TrialResult(trial.number, "ok", line, last_step, total,
                           [f"result read at step {step} (--step), not at the log's last validation ({where})"])
    if trial.complete:
        return TrialResult(trial.number, "ok", trial.vals[-1], last_step, total, [])
    return TrialResult(trial.number, "truncated", None, last_step, total,
                       [f"log ends at {where} without a final validation"])


def _sample(lines: list[StepLine], limit: int = MAX_TRAIN_EVENTS) -> list[StepLine]:
    if len(lines) <= limit:
        return lines
    stride = math.ceil(len(lines) / limit)
    kept = lines[::stride]
    return kept if kept[-1] is lines[-1] else kept + [lines[-1]]


def _write_events(path: Path, trial: Trial, judged: TrialResult, track: str, log: LegacyLog, step: int | None):
    """One `run-K.jsonl`, deliberately unsealed: nothing here was measured by a referee."""
    limit = step if step is not None and judged.result is not None else None
    keep = (lambda s: s.step <= limit) if limit is not None else (lambda s: True)
    writer = EventWriter(path)
    try:
        init = {"track": track, "source": SOURCE, "self_reported": True}
        if log.world_size is not None:
            init["world_size"] = log.world_size
        if log.env.get("device_name"):
            init["device"] = log.env["device_name"]
        writer.write("init", **init)
        lines = sorted([v for v in trial.vals if keep(v)] + _sample([t for t in trial.trains if keep(t)]),
                       key=lambda s: s.lineno)
        for s in lines:
            if s.kind == "val":
                writer.write("val", step=s.step, timed_s=s.seconds, loss=s.loss, tokens=None)
            else:
                event = {"step": s.step, "timed_s": s.seconds, "tokens": None}
                if s.loss is not None:
                    event["loss"] = s.loss
                writer.write("train", **event)
        if trial.unknown:
            lineno, text = trial.unknown[0]
            writer.write("warning", message=f"skipped {len(trial.unknown)} unrecognised line(s); first at line "
                                            f"{lineno}: {text[:120]!r}", count=len(trial.unknown))
        if trial.nonfinite:
            writer.write("warning", message=f"{trial.nonfinite} step line(s) with a nan/inf or unreadable loss",
                         count=trial.nonfinite)
        if trial.clock_restart is not None:
            at = trial.clock_restart
            writer.write("warning", message=f"train_time restarts at step {at.step} (line {at.lineno}): earlier "
                                            f"times include compilation (untimed grace steps)", count=1)
        if log.era == "llm.c":
            writer.write("warning", message="this log era prints no times: timed_s is null", count=1)
        if judged.status == "truncated":
            writer.write("warning", message="; ".join(judged.notes), count=1)
        if judged.result is not None:
            writer.write("finish", step=judged.result.step, timed_s=judged.result.seconds, tokens=None)
    finally:
        writer.close()


def default_out_dir(path: Path, out: str | Path | None) -> Path:
    return Path(out if out is not None else Path("runs") / "imported") / path.stem


def _copy_name(name: str) -> str:
    """The source log keeps its name in the run dir unless that name means something there."""
    if name in (MANIFEST, "verdict.json") or re.fullmatch(r"run-\d+\.(jsonl|log)", name):
        return f"source-{name}"
    return name


@dataclass
class Imported:
    run_dir: Path
    log: LegacyLog
    trials: list[TrialResult]
    track: str
    track_from: str  # "--track", "path (...)" or "content (...)"
    requested_step: int | None


def import_log(path: str | Path, track: str | None = None, out: str | Path | None = None,
               step: int | None = None, force: bool = False) -> Imported:
    """Parse one log and write its run directory (built aside, then renamed into place)."""
    from speedrun.tracks import load_track

    path = Path(path)
    log = parse_log(path)
    how = "--track"
    if track is None:
        track, how = infer_track(log)
        if track is None:
            raise SpeedrunError(f"{path}: cannot tell which track this log belongs to; "
                                f"pass --track (gpt2-small, gpt2-medium or optimization)")
    track_obj = load_track(track)
    judged = [judge_trial(t, step) for t in log.trials]
    if step is not None and not any(j.result for j in judged):
        steps = sorted({v.step for t in log.trials for v in t.vals})
        shown = ", ".join(map(str, steps[-6:]))
        raise SpeedrunError(f"{path}: no trial has a validation at step {step} (validation steps end: {shown})")

    target = default_out_dir(path, out)
    if target.exists() and not force:
        raise SpeedrunError(f"{target}: already exists; remove it or pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; a run directory is meant to be shared
    try:
        copy_name = _copy_name(path.name)
        shutil.copyfile(path, tmp / copy_name)
        for trial, j in zip(log.trials, judged):
            _write_events(events_path(tmp, trial.number), trial, j, track_obj.name, log, step)
        write_json_atomic(tmp / MANIFEST, {
            "self_reported": True,
            "source": SOURCE,
            "harness_version": __version__,
            "api_version": API_VERSION,
            "track": {"name": track_obj.name, "config_sha256": track_obj.config_sha256},
            "track_inferred_from": how,
            "era": log.era,
            "source_logs": [{"name": copy_name, "sha256": sha256_file(path)}],
            "env": log.env,
            "requested_step": step,
            "repetitions": [{"k": j.k, "status": j.status, "exit_code": None, "wall_s": None, "notes": j.notes}
                            for j in judged],
        })
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Imported(target, log, judged, track_obj.name, how, step)


def _replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an existing target is moved aside first and removed only after the swap."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        old.rmdir()
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- command line -------------------------------------------------------------------------------------------


def _summary_table(imp: Imported):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(f"{imp.log.path.name} -> {imp.run_dir}"),
                  caption=escape(f"track {imp.track} (from {imp.track_from}); self-reported {imp.log.era} log, "
                                 f"not refereed"))
    table.add_column("trial", justify="right")
    table.add_column("steps", justify="right")
    table.add_column("final val loss", justify="right")
    table.add_column("time (s)", justify="right")
    table.add_column("status")
    for j in imp.trials:
        steps = "-" if j.last_step is None else f"{j.last_step}" + (f"/{j.total}" if j.total is not None else "")
        loss = "-" if j.result is None or j.result.loss is None else f"{j.result.loss:.4f}"
        secs = "-" if j.result is None or j.result.seconds is None else f"{j.result.seconds:.3f}"
        status = j.status
        if j.result is not None and j.result.step != j.last_step:
            status += f" (judged at step {j.result.step})"
        elif j.status == "truncated":
            status += " (no final validation)" if imp.requested_step is None else \
                f" (no validation at step {imp.requested_step})"
        table.add_row(str(j.k), steps, loss, secs, status)
    return table


def _cmd_import(args) -> int:
    from rich.console import Console

    console = Console()
    paths = [Path(p) for p in args.files]
    targets = [default_out_dir(p, args.out) for p in paths]
    dupes = {t for t in targets if targets.count(t) > 1}
    if dupes:
        raise SpeedrunError(f"several input files would be imported to {sorted(dupes)[0]}; import them separately "
                            f"with different --out directories")
    failed = 0
    for path in paths:
        try:
            imp = import_log(path, args.track, args.out, args.step, args.force)
        except SpeedrunError as exc:
            print(f"speedrun: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        console.print(_summary_table(imp))
        unknown = sum(len(t.unknown) for t in imp.log.trials)
        if unknown:
            console.print(f"  skipped {unknown} unrecognised line(s) (warnings in the run-K.jsonl files)")
    return 1 if failed else 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import-log", help="import modded-nanogpt logs as self-reported run evidence",
        description="Parse modded-nanogpt record logs (every era) into run directories marked self-reported: "
                    "one per file, one run-K.jsonl per trial, with a copy of the log.")
    p.add_argument("files", nargs="+", metavar="FILE", help="modded-nanogpt log file(s)")
    p.add_argument("--track", help="our track name (default: from the path, e.g. track_1_short, or the content)")
    p.add_argument("--out", help="parent directory for the run directories (default runs/imported)")
    p.add_argument("--step", type=int, help="judge each trial at the validation of this step (early-judged runs)")
    p.add_argument("--force", action="store_true", help="replace an existing run directory of the same name")
    p.set_defaults(func=_cmd_import)
