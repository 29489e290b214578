"""A ladder's points: their identity, their run directories, whether they are done, and what they measured.

Why a point is a directory named by its identity: resuming needs no database. A point is (method, size,
budget, hyper-parameters, seed); its run directory under `<ladder>/points/` is named from exactly that, so a
re-run of the same spec finds it. A point is complete when its `manifest.json` records its repetition (ok or
failed: a diverged learning rate is a result, not something to retry); a directory without that record, or
whose manifest says the launcher was interrupted (Ctrl-C), was interrupted and is cleared and run again. The
fixed overrides of sizes and methods are not part of a point's name (a spec can gain sizes, values and seeds
and keep its points): after changing one that alters training, use a new ladder directory. Results are read from the run's own
evidence through the project's verifier (`speedrun.judge.verify`), so a ladder number is a refereed number: a
repetition with any problem counts as failed.
"""

from __future__ import annotations

import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speedrun.evidence import rundir
from speedrun.errors import SpeedrunError
from speedrun.ladder.spec import LadderSpec

POINTS = "points"
RESULT = "point.json"   # the ladder's digest of a verified point, beside the run's own files


def fmt_value(value: Any) -> str:
    """A hyper-parameter value as it goes on the command line and into names (`0.02`, `3e-3` as `0.003`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e16 else str(int(value))
    return str(value)


def slug(hparams: dict[str, Any]) -> str:
    """A file-system-safe, order-stable text of a hyper-parameter setting."""
    if not hparams:
        return "default"
    text = "_".join(f"{k}-{fmt_value(v)}" for k, v in sorted(hparams.items()))
    return "".join(c if c.isalnum() or c in "._-+" else "~" for c in text)


def flags(table: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in table.items():
        out += [f"--{key.replace('_', '-')}", fmt_value(value)]
    return out


@dataclass(frozen=True)
class Point:
    method: str
    size: str
    budget: float
    hparams: tuple[tuple[str, Any], ...]   # sorted (key, value) pairs: hashable
    seed: int

    @property
    def hp(self) -> dict[str, Any]:
        return dict(self.hparams)

    @property
    def name(self) -> str:
        return f"{self.method}__{self.size}__b{fmt_value(self.budget)}__{slug(self.hp)}__s{self.seed}"

    def label(self) -> str:
        hp = " ".join(f"{k}={fmt_value(v)}" for k, v in self.hparams) or "defaults"
        return f"{self.method} {self.size} budget {fmt_value(self.budget)} {hp} seed {self.seed}"


def make_point(method: str, size: str, budget: float, hparams: dict[str, Any], seed: int) -> Point:
    return Point(method, size, float(budget), tuple(sorted(hparams.items())), seed)


def point_dir(root: Path, point: Point) -> Path:
    return Path(root) / POINTS / point.name


def script_args(spec: LadderSpec, point: Point) -> list[str]:
    """What goes after `--`: the size's overrides, the method's, the hyper-parameters, then the steps."""
    size, method = spec.size(point.size), spec.methods[point.method]
    steps = spec.budget.steps(point.budget, size.params)
    return flags(size.overrides) + flags(method.overrides) + flags(point.hp) + [f"--{spec.budget.steps_flag.replace('_', '-')}", str(steps)]


def command(spec: LadderSpec, root: Path, point: Point, python: str | None = None) -> list[str]:
    """The point's `speedrun run`, one repetition with the point's seed, into its own directory."""
    cmd = [python or sys.executable, "-m", "speedrun.cli", "run", str(spec.methods[point.method].script),
           "--track", spec.track, "--nproc", str(spec.nproc), "--runs", "1", "--seed", str(point.seed),
           "--out", str(point_dir(root, point)), "--no-verify", "--no-replica"]  # research points, not records
    if spec.timeout:
        cmd += ["--timeout", str(spec.timeout)]
    return cmd + ["--", *script_args(spec, point)]


def is_complete(root: Path, point: Point) -> bool:
    """The run recorded its repetition (ok or failed); anything less, or a run the launcher says was
    interrupted (it keeps the interrupted repetition, marked), was interrupted."""
    manifest = point_dir(root, point) / rundir.MANIFEST
    if not manifest.is_file():
        return False
    try:
        recorded = rundir.read_json(manifest)
        reps = recorded.get("repetitions") or []
    except (SpeedrunError, AttributeError):
        return False
    return len(reps) >= 1 and not recorded.get("interrupted")


def clear_incomplete(root: Path, point: Point) -> bool:
    """Remove what an interrupted run left, so `speedrun run --out` gets an empty directory; True if removed."""
    folder = point_dir(root, point)
    if folder.exists() and not is_complete(root, point):
        shutil.rmtree(folder)
        return True
    return False


@dataclass
class PointResult:
    """What a complete point measured. `loss` is None when the repetition failed or has any problem."""
    point: Point
    ok: bool
    loss: float | None
    params: int | None          # the referee's count of the model's parameters
    tokens: int | None          # train tokens served until finish()
    timed_s: float | None
    curve: list[tuple[int, float]] = field(default_factory=list)   # (train tokens, val loss) per validation
    problem: str | None = None

    def score(self) -> float:
        """For choosing a setting: the loss, or +inf for a failed (e.g. diverged) run."""
        return self.loss if self.loss is not None and math.isfinite(self.loss) else math.inf


def _digest(run_dir: Path) -> dict:
    from speedrun.judge import verify

    verdict = verify.verify_run_dir(run_dir, write=True)
    rep = (verdict.get("repetitions") or [{}])[0]
    problems = list(rep.get("problems") or [])
    loss = rep.get("final_loss")
    ok = not problems and isinstance(loss, (int, float)) and math.isfinite(loss)
    params, curve = None, []
    path = rundir.events_path(run_dir, 1)
    if path.is_file():
        events = rundir.read_events(path)
        model = events.last("model")
        params = model.get("params") if model else None
        finish = events.last("finish") or {}
        per_batch = (finish.get("tokens") / finish.get("batches")) if finish.get("batches") else None
        if per_batch:
            curve = [(int(round(v["batches"] * per_batch)), float(v["loss"])) for v in events.of("val")
                     if isinstance(v.get("loss"), (int, float)) and math.isfinite(v["loss"]) and v.get("batches")]
    return {"ok": ok, "loss": float(loss) if ok else None, "params": params, "tokens": rep.get("tokens"),
            "timed_s": rep.get("timed_s"), "curve": curve, "problem": None if ok else (problems[0] if problems else
                                                                                      f"final loss {loss}")}


def read_result(root: Path, point: Point) -> PointResult:
    """A complete point's result: verified once (its `verdict.json`), then read from the ladder's digest.
    The runner verifies each point as soon as it completes: the verdict compares the harness the run pinned
    with the one installed, so verifying after the harness changed would fail every earlier point."""
    folder = point_dir(root, point)
    digest_path = folder / RESULT
    if digest_path.is_file():
        d = rundir.read_json(digest_path)
    else:
        d = _digest(folder)
        if "with a different harness" not in (d.get("problem") or ""):
            # kept only when this harness could judge it: a point read by another version stays undecided
            rundir.write_json_atomic(digest_path, d)
    return PointResult(point, d["ok"], d["loss"], d["params"], d["tokens"], d["timed_s"],
                       [tuple(c) for c in d.get("curve") or []], d.get("problem"))
