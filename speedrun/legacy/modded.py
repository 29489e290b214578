"""Import modded-nanogpt record logs as self-reported run evidence (`speedrun import-log`).

Years of speedrun history exist only as the text logs the training scripts wrote. Turning them into the same
evidence a referee run leaves (manifest + `run-K.jsonl`) lets `verify`, `plot` and the ledger treat them
alike, while the manifest's `"self_reported": true` and the missing seal keep them apart from refereed runs:
nothing here was timed or probed by us, we only read what the script printed.

A modded-nanogpt *record* is a group of runs: a folder of logs (one run each), or one file holding many trials.
`import-log DIR` (or several files with `--as-record`) makes ONE run directory whose repetitions are the trials
of all those logs, so the track's rule judges the group as modded-nanogpt does; `--step` and `--loss-field`
choose the judging point (track 3 judges at a declared step, sometimes on `val_ema_loss`).

The parser follows the format facts of every era (see `../shared/reference/modded-nanogpt-logs.md`):
llm.c-style `s:N trl:/tel:` lines without times; script + `=`*100 separators + environment + output; late-2024
files opening with a separator; warm-up chatter; optimization-track files with times in seconds, extra fields
and many trials per file. Trials inside one file are told apart by their own structure: the step count starts
again, or the header (`Running PyTorch ...`, the nvidia-smi table) is printed again; a validation line repeated
verbatim within a trial (stdout echoed at the end of a batch) is an echo, not a new run. A trial's result is its
*last* validation line (never the largest train_time: early eras restart the clock after compiling). Unknown
lines and truncation are reported, never fatal. The hardware (GPU rows of the nvidia-smi table, or the
`world_size` the optimization-track scripts print) goes into the manifest; the judge (`speedrun.judge.verify`, which
judges imported evidence like any other) holds it against the track's.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from speedrun.version import API_VERSION, __version__
from speedrun.errors import SpeedrunError
from speedrun.evidence import rundir
from speedrun.evidence.rundir import MANIFEST, EventWriter, events_path, sha256_file, write_json_atomic

SOURCE = "modded-nanogpt log"
SEPARATOR = "=" * 100
MAX_TRAIN_EVENTS = 200  # train lines kept per trial (evenly sampled, plus the last one)
LOG_SUFFIXES = (".txt", ".log")
DEFAULT_LOSS_FIELD = "val_loss"

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
    r"^Running pytorch (\S+) compiled for CUDA (\S+?)(?: on (.+?) with world_size[ =](\d+))?\s*$", re.I)
_DEVICE = re.compile(r"^Running on (?:device_name=)?(.+?) with world_size[ =](\d+)\s*$", re.I)
_PYTHON = re.compile(r"^Running Python (\d+\.\d+(?:\.\d+)?)", re.I)
_TRITON = re.compile(r"^Running Triton version (\S+)", re.I)
_GPU_ROW = re.compile(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off)\s+\|\s+[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:")
_GPU_LIST = re.compile(r"^GPU (\d+): (.+?) \(UUID:")  # `nvidia-smi -L`
_KNOWN_CHATTER = re.compile(
    r"^(peak memory|resetting model|nvidia-smi|.*warm.?up|.*compil|.*dataloader|running )", re.I)
_MODEL_DIM = re.compile(r"\b(?:model_dim|n_embd)\s*(?::\s*int\s*)?=\s*(\d+)")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class StepLine:
    """One step or validation line: `seconds` is None in eras that print no time."""

    kind: str  # "val" or "train"
    step: int
    total: int | None
    loss: float | None  # the judged field's value (val_loss unless another field was asked for)
    seconds: float | None
    lineno: int
    unit: str | None = None  # "ms" or "s", as printed
    bad_loss: bool = False  # a loss was printed but is nan/inf/garbled
    missing_field: bool = False  # a validation line without the asked-for loss field
    raw_loss: float | None = None  # val_loss itself, when another field is judged

    def key(self) -> tuple:
        return (self.kind, self.step, self.total, self.loss, self.seconds)


@dataclass
class Trial:
    """One training run inside a log file (optimization-track files hold many)."""

    number: int
    header: int = 0  # which printed header (environment) this trial ran under
    vals: list[StepLine] = field(default_factory=list)
    trains: list[StepLine] = field(default_factory=list)
    last: StepLine | None = None  # the last step-bearing line, of either kind
    unknown: list[tuple[int, str]] = field(default_factory=list)
    nonfinite: int = 0
    echoes: int = 0  # step lines after this trial that only repeated its lines verbatim (skipped)
    clock_restart: StepLine | None = None  # first line whose train_time is below the previous one
    seen: set = field(default_factory=set, repr=False)

    @property
    def total(self) -> int | None:
        return self.last.total if self.last else None

    @property
    def complete(self) -> bool:
        """Ended on a validation line (possibly before its scheduled last step: track 3 stops early by design)."""
        return self.last is not None and self.last.kind == "val"

    @property
    def stopped_early(self) -> bool:
        last = self.last
        return self.complete and last.total is not None and last.step < last.total

    def val_at(self, step: int) -> StepLine | None:
        found = [v for v in self.vals if v.step == step]
        return found[-1] if found else None


@dataclass
class Header:
    """What one printed header says about the machine and software."""

    env: dict
    world_size: int | None
    world_size_printed: bool


@dataclass
class LegacyLog:
    path: Path
    era: str  # "llm.c" (no separators, no times) or "modded-nanogpt"
    headers: list[Header]
    script: list[str]
    trials: list[Trial]
    loss_field: str = DEFAULT_LOSS_FIELD

    @property
    def env(self) -> dict:
        return self.headers[0].env

    @property
    def world_size(self) -> int | None:
        return self.headers[0].world_size

    @property
    def world_size_printed(self) -> bool:
        return any(h.world_size_printed for h in self.headers)

    def hardware(self, trial: Trial | None = None) -> tuple[str | None, dict | None]:
        """(label like "8xNVIDIA H100 80GB HBM3", {"gpu_name", "gpu_count"}) of a trial (default: the first)."""
        h = self.headers[trial.header if trial is not None else 0]
        return hardware_of(h.env, h.world_size)


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


def parse_step_line(line: str, lineno: int = 0, loss_field: str = DEFAULT_LOSS_FIELD) -> StepLine | None:
    """Parse a `step:S/N ...` or llm.c `s:S trl:/tel:` line; None when the line is neither.

    `loss_field` names the validation field to judge (`val_loss`, or e.g. `val_ema_loss`); a validation line
    without it is still a validation, marked `missing_field`.
    """
    m = _STEP.match(line)
    if m:
        fields = dict(tok.split(":", 1) for tok in m.group(3).split() if ":" in tok)
        seconds, unit = _seconds(fields.get("train_time", ""))
        step, total = int(m.group(1)), int(m.group(2))
        if "val_loss" in fields or loss_field in fields:
            raw = _float(fields["val_loss"]) if "val_loss" in fields else None
            if loss_field not in fields:
                return StepLine("val", step, total, None, seconds, lineno, unit, missing_field=True, raw_loss=raw)
            loss = _float(fields[loss_field])
            return StepLine("val", step, total, loss, seconds, lineno, unit, bad_loss=loss is None, raw_loss=raw)
        if seconds is not None:
            loss = _float(fields["train_loss"]) if "train_loss" in fields else None
            return StepLine("train", step, total, loss, seconds, lineno, unit,
                            bad_loss="train_loss" in fields and loss is None)
        return None
    m = _LLMC.match(line)
    if m:
        kind = "val" if m.group(2) == "tel" else "train"
        loss = _float(m.group(3))
        if kind == "val" and loss_field != DEFAULT_LOSS_FIELD:
            return StepLine(kind, int(m.group(1)), None, None, None, lineno, missing_field=True, raw_loss=loss)
        return StepLine(kind, int(m.group(1)), None, loss, None, lineno, bad_loss=loss is None, raw_loss=loss)
    return None


def _is_step(text: str) -> bool:
    return bool(_STEP.match(text) or _LLMC.match(text))


def _roles(lines: list[str]) -> list[str]:
    """Tag every line "sep", "script", "env" or "output".

    Separators cut the file into regions. A region with step lines is output up to its last step line; what
    follows that line, when another separator comes later, is the next log's script (logs concatenated into one
    file). Of the regions without step lines, the first one of each log is its script and the rest environment.
    Without separators everything is output (llm.c files, raw stdout captures).
    """
    seps = [i for i, line in enumerate(lines) if line.rstrip() == SEPARATOR]
    if not seps:
        return ["output"] * len(lines)
    roles = ["sep" if i in set(seps) else "" for i in range(len(lines))]
    bounds = [-1] + seps + [len(lines)]
    script_seen = False
    for r in range(len(bounds) - 1):
        lo, hi = bounds[r] + 1, bounds[r + 1]
        steps = [i for i in range(lo, hi) if _is_step(lines[i].strip())]
        if steps:
            last_region = hi == len(lines)
            end = hi if last_region else steps[-1] + 1
            for i in range(lo, end):
                roles[i] = "output"
            tail = range(end, hi)
            for i in tail:
                roles[i] = "script"
            script_seen = any(lines[i].strip() for i in tail)
        else:
            has_text = any(lines[i].strip() for i in range(lo, hi))
            role = "env" if script_seen or not has_text else "script"
            script_seen = script_seen or has_text
            for i in range(lo, hi):
                roles[i] = role
    return roles


class _HeaderReader:
    def __init__(self):
        self.env = {"torch": None, "cuda": None, "triton": None, "python": None, "device_name": None,
                    "device_count": None}
        self.world_size: int | None = None
        self.gpus: dict[int, str] = {}

    def read(self, text: str) -> bool:
        """Take what an environment line says; False when it is not one."""
        if m := _TORCH.match(text):
            self.env["torch"], self.env["cuda"] = m.group(1), m.group(2)
            if m.group(3):
                self.env["device_name"], self.world_size = m.group(3).strip(), int(m.group(4))
        elif m := _DEVICE.match(text):
            self.env["device_name"], self.world_size = m.group(1).strip(), int(m.group(2))
        elif m := _PYTHON.match(text):
            self.env["python"] = m.group(1)
        elif m := _TRITON.match(text):
            self.env["triton"] = m.group(1)
        elif m := (_GPU_ROW.match(text) or _GPU_LIST.match(text)):
            self.gpus[int(m.group(1))] = m.group(2).strip()
        else:
            return False
        return True

    def header(self) -> Header:
        env = dict(self.env)
        if self.gpus:
            env["device_count"] = len(self.gpus)
            env["device_name"] = env["device_name"] or " / ".join(sorted(set(self.gpus.values())))
        elif self.world_size is not None:
            env["device_count"] = self.world_size
        return Header(env, self.world_size or env["device_count"], self.world_size is not None)


def _split(lines: list[str], roles: list[str], loss_field: str) -> tuple[list[Trial], list[Header]]:
    """Walk the file once: environment lines build headers, output lines build trials.

    A new trial starts when the step count goes back (a validation at step 0, or any step below the previous
    one) or when a header is printed again after steps. A "trial" whose every line repeats the previous trial's
    lines verbatim is echoed output (a batch runner printing a run's tail again) and is folded back into it.
    """
    readers = [_HeaderReader()]
    trials = [Trial(1)]
    header_pending = False  # a header line came after the current trial's steps: the next steps are a new run
    pending: list[tuple[int, str]] = []  # unknown lines after such a header belong to the run that follows
    for lineno, (line, role) in enumerate(zip(lines, roles), start=1):
        text = line.strip()
        if not text or role in ("sep", "script"):
            continue
        trial = trials[-1]
        parsed = parse_step_line(text, lineno, loss_field) if role == "output" else None
        if parsed is None:
            is_env = _HeaderReader().read(text)
            if is_env:
                if trial.last is not None and not header_pending:
                    readers.append(_HeaderReader())
                    header_pending = True
                readers[-1].read(text)
            elif role == "output" and not _KNOWN_CHATTER.match(text):
                (pending if header_pending else trial.unknown).append((lineno, text))
            continue
        prev = trial.last
        restart = prev is not None and (parsed.step < prev.step or (parsed.kind == "val" and parsed.step == 0))
        if header_pending or restart:
            trial = Trial(len(trials) + 1, header=len(readers) - 1, unknown=pending)
            trials.append(trial)
            header_pending, pending = False, []
            prev = None
        trial.seen.add(parsed.key())
        trial.nonfinite += parsed.bad_loss
        if (trial.clock_restart is None and prev is not None and prev.seconds is not None
                and parsed.seconds is not None and parsed.seconds < prev.seconds):
            trial.clock_restart = parsed
        (trial.vals if parsed.kind == "val" else trial.trains).append(parsed)
        trial.last = parsed
    trials[-1].unknown += pending  # a header with no run after it: its lines stay with the last run
    kept: list[Trial] = []
    for trial in trials:
        if kept and trial.last is not None and trial.header == kept[-1].header and trial.seen <= kept[-1].seen:
            # every line repeats the previous trial verbatim: echoed output (or the same run pasted twice)
            kept[-1].echoes += len(trial.vals) + len(trial.trains)
            kept[-1].unknown += trial.unknown
        elif kept and kept[-1].last is None:  # chatter before the first run is not a run
            trial.unknown[:0] = kept[-1].unknown
            kept[-1] = trial
        else:
            kept.append(trial)
    for i, t in enumerate(kept, start=1):
        t.number = i
    return kept, [r.header() for r in readers]


def parse_log(path: str | Path, loss_field: str = DEFAULT_LOSS_FIELD) -> LegacyLog:
    """Read one modded-nanogpt log file of any era; raises `SpeedrunError` when it holds no training output."""
    path = Path(path)
    if not _FIELD_NAME.match(loss_field):
        raise SpeedrunError(f"--loss-field {loss_field!r}: expected a field name like val_loss or val_ema_loss")
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except IsADirectoryError:
        raise SpeedrunError(f"{path}: is a directory (import a record folder with `import-log DIR`)") from None
    except OSError as exc:
        raise SpeedrunError(f"{path}: cannot read: {exc.strerror}") from None
    lines = text.splitlines()
    roles = _roles(lines)
    first = roles.index("script") if "script" in roles else len(lines)
    end = next((i for i in range(first, len(lines)) if roles[i] != "script"), len(lines))
    script = lines[first:end]  # the first log's script (later ones are copies or other logs' scripts)
    trials, headers = _split(lines, roles, loss_field)
    if not any(t.last for t in trials):
        raise SpeedrunError(f"{path}: no step or validation lines found (not a modded-nanogpt log?)")
    era = "modded-nanogpt" if any(r == "sep" for r in roles) else "llm.c"
    if era == "llm.c" and any(t.last.seconds is not None for t in trials if t.last):
        era = "modded-nanogpt"  # raw stdout of a later script, without the header
    return LegacyLog(path=path, era=era, headers=headers, script=script, trials=trials, loss_field=loss_field)


# --- hardware -----------------------------------------------------------------------------------------------


def hardware_of(env: dict, world_size: int | None) -> tuple[str | None, dict | None]:
    """The hardware label and fingerprint a header tells: "8xNVIDIA H100 80GB HBM3" and its parts."""
    name, count = env.get("device_name"), world_size or env.get("device_count")
    if not name and not count:
        return None, None
    fingerprint = {"gpu_name": name, "gpu_count": count}
    if name and count:
        return f"{count}x{name}", fingerprint
    return (name or f"{count}x(unknown GPU)"), fingerprint


# --- track inference ----------------------------------------------------------------------------------------


def infer_track(log: LegacyLog) -> tuple[str | None, str]:
    """Guess our track from the file's location, else its content; returns (name or None, how it was told)."""
    for part in reversed(log.path.resolve().parts):
        for modded, ours in MODDED_TRACKS.items():
            if modded in part:
                return ours, f"its path ({modded})"
    if log.world_size_printed:
        return "optimization", "world_size on its PyTorch line"
    if any(v.unit == "s" for t in log.trials for v in t.vals):
        return "optimization", "its validation times in seconds"
    dims = {int(d) for d in _MODEL_DIM.findall("\n".join(log.script))} & {768, 1024}
    if len(dims) == 1:
        dim = dims.pop()
        return ("gpt2-small" if dim == 768 else "gpt2-medium"), f"its script's model_dim={dim}"
    finals = [t.vals[-1].raw_loss for t in log.trials if t.complete and t.vals[-1].raw_loss is not None]
    if finals:
        mean = sum(finals) / len(finals)
        if 3.2 <= mean <= 3.4:
            return "gpt2-small", f"its final val loss {mean:.3f}, near 3.28"
        if 2.85 <= mean <= 3.0:
            return "gpt2-medium", f"its final val loss {mean:.3f}, near 2.92"
    return None, ""


def _infer_group_track(logs: list[LegacyLog]) -> tuple[str, str]:
    guesses = {}
    for log in logs:
        name, how = infer_track(log)
        if name is not None:
            guesses.setdefault(name, (log.path, how))
    if len(guesses) == 1:
        name, (_, how) = next(iter(guesses.items()))
        return name, how
    where = logs[0].path if len(logs) == 1 else f"{len(logs)} logs"
    if not guesses:
        raise SpeedrunError(f"{where}: cannot tell which track this log belongs to; "
                            f"pass --track (gpt2-small, gpt2-medium or optimization)")
    told = ", ".join(f"{p.name} looks like {n} ({how})" for n, (p, how) in guesses.items())
    raise SpeedrunError(f"the logs disagree about their track ({told}); pass --track")


# --- writing evidence ---------------------------------------------------------------------------------------


@dataclass
class TrialResult:
    """What one imported trial amounts to: the line judged as its result (None when it has none)."""

    k: int
    status: str  # "ok", "truncated", "missing-step" or "missing-field"
    result: StepLine | None
    last_step: int | None
    total: int | None
    notes: list[str]
    source: str = ""  # the log file's name in the run directory
    trial: int = 1  # the trial's number inside that file
    hardware: str | None = None


def judge_trial(trial: Trial, step: int | None, loss_field: str = DEFAULT_LOSS_FIELD) -> TrialResult:
    """The trial's result: its final validation, or with `step` the validation at that step."""
    last = trial.last
    last_step, total = (last.step if last else None), trial.total
    where = f"step {last_step}" + (f" of {total}" if total is not None else "")
    if step is not None:
        line = trial.val_at(step)
        if line is None:
            return TrialResult(trial.number, "missing-step", None, last_step, total,
                               [f"no validation at the declared step {step} (log ends at {where})"])
        notes = [f"result read at step {step} (--step), not at the log's last validation ({where})"] \
            if line is not trial.vals[-1] or not trial.complete else []
    elif trial.complete:
        line = trial.vals[-1]
        notes = [f"stopped at step {last_step} of the {total} scheduled"] if trial.stopped_early else []
    else:
        return TrialResult(trial.number, "truncated", None, last_step, total,
                           [f"log ends at {where} without a final validation"])
    if line.missing_field:
        return TrialResult(trial.number, "missing-field", None, last_step, total,
                           notes + [f"its validation at step {line.step} has no {loss_field} field"])
    return TrialResult(trial.number, "ok", line, last_step, total, notes)


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
    header = log.headers[trial.header]
    writer = EventWriter(path, wall=True)
    try:
        init = {"track": track, "source": SOURCE, "self_reported": True, "log": judged.source,
                "trial": trial.number}
        if header.world_size is not None:
            init["world_size"] = header.world_size
        if header.env.get("device_name"):
            init["device"] = header.env["device_name"]
        if log.loss_field != DEFAULT_LOSS_FIELD:
            init["loss_field"] = log.loss_field
        writer.write("init", **init)
        lines = sorted([v for v in trial.vals if keep(v)] + _sample([t for t in trial.trains if keep(t)]),
                       key=lambda s: s.lineno)
        for s in lines:
            if s.kind == "val":
                event = {"step": s.step, "timed_s": s.seconds, "loss": s.loss, "tokens": None}
                if log.loss_field != DEFAULT_LOSS_FIELD:
                    event["val_loss"] = s.raw_loss
                writer.write("val", **event)
            else:
                event = {"step": s.step, "timed_s": s.seconds, "tokens": None}
                if s.loss is not None:
                    event["loss"] = s.loss
                writer.write("train", **event)
        if trial.unknown:
            lineno, text = trial.unknown[0]
            writer.write("warning", message=f"skipped {len(trial.unknown)} unrecognised line(s); first at line "
                                            f"{lineno}: {text[:120]!r}", count=len(trial.unknown))
        if trial.echoes:
            writer.write("warning", message=f"skipped {trial.echoes} step line(s) after this trial that repeat its "
                                            f"lines verbatim (echoed output, not a new run)", count=trial.echoes)
        if trial.nonfinite:
            writer.write("warning", message=f"{trial.nonfinite} step line(s) with a nan/inf or unreadable loss",
                         count=trial.nonfinite)
        if trial.clock_restart is not None:
            at = trial.clock_restart
            writer.write("warning", message=f"train_time restarts at step {at.step} (line {at.lineno}): earlier "
                                            f"times include compilation (untimed grace steps)", count=1)
        if log.era == "llm.c":
            writer.write("warning", message="this log era prints no times: timed_s is null", count=1)
        if judged.status != "ok" or (step is None and judged.notes):
            writer.write("warning", message="; ".join(judged.notes), count=1)
        if judged.result is not None:
            writer.write("finish", step=judged.result.step, timed_s=judged.result.seconds, tokens=None)
    finally:
        writer.close()


def default_out_dir(path: Path, out: str | Path | None) -> Path:
    """`runs/imported/<name>`: the file's stem, or a record folder's name."""
    name = path.name if path.is_dir() else path.stem
    return Path(out if out is not None else Path("runs") / "imported") / name


def _copy_name(name: str) -> str:
    """The source log keeps its name in the run dir unless that name means something there."""
    if rundir.is_reserved(name):
        return f"source-{name}"
    return name


def _copy_names(paths: list[Path]) -> list[str]:
    names = [_copy_name(p.name) for p in paths]
    if len(set(names)) == len(names):
        return names
    width = len(str(len(paths)))
    return [f"{i:0{width}d}-{n}" for i, n in enumerate(names, start=1)]


@dataclass
class Imported:
    run_dir: Path
    log: LegacyLog  # the first log (the only one for a single-file import)
    trials: list[TrialResult]
    track: str
    track_from: str  # how the track was told, one short phrase: "--track", "its path (...)", "its script's ..."
    requested_step: int | None
    logs: list[LegacyLog] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, why) for record folders
    loss_field: str = DEFAULT_LOSS_FIELD
    hardware: str | None = None


def _group_hardware(labels: list[tuple[str | None, dict | None]]) -> tuple[str | None, dict | None]:
    known = {}
    for label, fp in labels:
        if label is not None:
            known.setdefault(label, fp)
    if len(known) == 1:
        return next(iter(known.items()))
    if not known:
        return None, None
    return "mixed: " + "; ".join(known), None


def import_logs(paths: list[str | Path], track: str | None = None, out: str | Path | None = None,
                step: int | None = None, force: bool = False, loss_field: str = DEFAULT_LOSS_FIELD,
                name: str | None = None, skipped: list[tuple[str, str]] | None = None) -> Imported:
    """Parse several logs as ONE record: one run directory whose repetitions are all their trials, in order.

    Every file must parse (a record is not silently thinned out). The run directory is built aside and renamed
    into place, so a failure leaves nothing half-written and an existing directory is only replaced with
    `force`.
    """
    from speedrun.tracks import load_track

    paths = [Path(p) for p in paths]
    if not paths:
        raise SpeedrunError("no log files to import")
    if step is not None and step < 0:
        raise SpeedrunError(f"--step {step}: must be a step number (0 or more)")
    logs = [parse_log(p, loss_field) for p in paths]
    how = "--track"
    if track is None:
        track, how = _infer_group_track(logs)
    track_obj = load_track(track)
    copy_names = _copy_names(paths)

    judged: list[TrialResult] = []
    for log, copy_name in zip(logs, copy_names):
        for trial in log.trials:
            j = judge_trial(trial, step, loss_field)
            j.k, j.source, j.trial, j.hardware = len(judged) + 1, copy_name, trial.number, log.hardware(trial)[0]
            judged.append(j)
    where = str(paths[0]) if len(paths) == 1 else f"{len(paths)} logs"
    if step is not None and not any(j.result for j in judged):
        steps = sorted({v.step for log in logs for t in log.trials for v in t.vals})
        shown = ", ".join(map(str, steps[-6:]))
        raise SpeedrunError(f"{where}: no trial has a validation at step {step} (validation steps end: {shown})")
    if loss_field != DEFAULT_LOSS_FIELD and not any(
            not v.missing_field for log in logs for t in log.trials for v in t.vals):
        raise SpeedrunError(f"{where}: no validation line has a {loss_field} field")

    if name is not None and (not name or "/" in name or name in (".", "..")):
        raise SpeedrunError(f"--name {name!r}: expected a plain directory name")
    target = (Path(out if out is not None else Path("runs") / "imported") / name) if name \
        else default_out_dir(paths[0], out)
    if target.exists() and not force:
        raise SpeedrunError(f"{target}: already exists; remove it or pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    tmp.chmod(0o755)  # mkdtemp makes it private; a run directory is meant to be shared
    hardware, fingerprint = _group_hardware([log.hardware(t) for log in logs for t in log.trials])
    try:
        sources = []
        for path, log, copy_name in zip(paths, logs, copy_names):
            shutil.copyfile(path, tmp / copy_name)
            label, fp = _group_hardware([log.hardware(t) for t in log.trials])
            sources.append({"name": copy_name, "sha256": sha256_file(path), "trials": len(log.trials),
                            "era": log.era, "hardware": label})
        k = 0
        for log in logs:
            for trial in log.trials:
                _write_events(events_path(tmp, judged[k].k), trial, judged[k], track_obj.name, log, step)
                k += 1
        eras = sorted({log.era for log in logs})
        write_json_atomic(tmp / MANIFEST, {
            "self_reported": True,
            "source": SOURCE,
            "harness_version": __version__,
            "api_version": API_VERSION,
            "track": {"name": track_obj.name, "config_sha256": track_obj.config_sha256},
            "track_inferred_from": how,
            "era": eras[0] if len(eras) == 1 else "mixed: " + ", ".join(eras),
            "source_logs": sources,
            "skipped_files": [{"name": n, "reason": why} for n, why in (skipped or [])],
            "env": logs[0].env,
            "hardware": hardware,
            "hardware_fingerprint": fingerprint,
            "requested_step": step,
            "loss_field": loss_field,
            "repetitions": [{"k": j.k, "status": j.status, "exit_code": None, "wall_s": None, "notes": j.notes,
                             "source": j.source, "trial": j.trial, "hardware": j.hardware} for j in judged],
        })
        _replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Imported(target, logs[0], judged, track_obj.name, how, step, logs, list(skipped or []), loss_field,
                    hardware)


def import_log(path: str | Path, track: str | None = None, out: str | Path | None = None,
               step: int | None = None, force: bool = False, loss_field: str = DEFAULT_LOSS_FIELD) -> Imported:
    """Parse one log (all the trials in it) into its run directory."""
    if Path(path).is_dir():
        return import_record_dir(path, track, out, step, force, loss_field)
    return import_logs([path], track, out, step, force, loss_field)


def record_files(folder: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """The logs of a record folder (its `.txt`/`.log` files, sorted by name) and the files passed over."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SpeedrunError(f"{folder}: not a directory")
    logs, skipped = [], []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in LOG_SUFFIXES:
            continue
        try:
            text = p.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            raise SpeedrunError(f"{p}: cannot read: {exc.strerror}") from None
        if any(_is_step(line.strip()) for line in text.splitlines()):
            logs.append(p)
        else:
            skipped.append((p.name, "no step or validation lines"))
    if not logs:
        subdirs = sorted(d.name for d in folder.iterdir() if d.is_dir())
        hint = f" (sub-folders: {', '.join(subdirs[:4])}; import one of them)" if subdirs else ""
        raise SpeedrunError(f"{folder}: no log files with step lines{hint}")
    return logs, skipped


def import_record_dir(folder: str | Path, track: str | None = None, out: str | Path | None = None,
                      step: int | None = None, force: bool = False, loss_field: str = DEFAULT_LOSS_FIELD,
                      name: str | None = None) -> Imported:
    """A modded-nanogpt record folder (logs, one run or many each) as one run directory named after it."""
    folder = Path(folder)
    logs, skipped = record_files(folder)
    return import_logs(logs, track, out, step, force, loss_field, name=name or folder.resolve().name,
                       skipped=skipped)


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
