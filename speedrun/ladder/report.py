"""`ladder.json`: the ladder's results, their schema in one place (the dataclasses below), built from the cells.

Why typed: the table, the plots and anyone comparing two ladders read this one file; the dataclasses are its
schema (`SCHEMA_VERSION` grows when a field is added; readers ignore fields they do not know, as with the
run evidence). Losses are val losses in nats per token on the track's val split; tokens are train tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from speedrun.ladder import estimate
from speedrun.ladder.runner import Cell
from speedrun.ladder.spec import LadderSpec

SCHEMA_VERSION = 1
REPORT = "ladder.json"


@dataclass
class Interval:
    value: float | None
    lo: float | None
    hi: float | None


@dataclass
class TunePoint:
    hparams: dict[str, Any]
    loss: float | None              # mean over the tuning seeds; None when a seed failed (e.g. diverged)
    seeds: list[int]
    failed: list[int]               # tuning seeds whose run failed or had a problem


@dataclass
class MethodResult:
    method: str
    budget: float
    steps: int
    tokens: int | None              # train tokens of one run, as the referee counted them (else from the spec)
    complete: bool                  # tuning and confirmation all done
    best: dict[str, Any] | None     # the setting chosen on the tuning seeds
    at_edge: list[str]              # chosen values that sit at an edge of the search space
    tuning: list[TunePoint]
    confirm_seeds: list[int]
    confirm_losses: list[float]     # the reported numbers: the chosen setting re-run with fresh seeds
    loss: Interval                  # their mean, Student-t interval
    params_measured: int | None     # the referee's parameter count of the runs


@dataclass
class Comparison:
    method: str
    budget: float
    gap: Interval                   # method loss - baseline loss at the same budget (negative: method better)
    speedup: Interval               # data-equivalent: baseline tokens to match / method tokens (bootstrap)
    baseline_tokens: float | None   # tokens the baseline needs to reach the method's loss
    extrapolated: bool              # read beyond the baseline's measured curve
    undefined_share: float          # bootstrap replicates where the curve could not be inverted


@dataclass
class SizeResult:
    size: str
    params: int                     # as the spec states it
    params_measured: int | None     # as the referee measured it (a mismatch is a warning)
    overrides: dict[str, Any]
    methods: list[MethodResult]
    comparisons: list[Comparison]
    baseline_curve: list[tuple[float, float]]   # (tokens, mean loss) the speed-up was read from


@dataclass
class TrendResult:
    method: str
    budget: float
    slope: Interval                 # d log(speed-up) / d log(params)
    crossover_params: Interval      # where the speed-up reaches 1 (None: no crossover)
    within_ladder: bool
    crossing_share: float
    verdict: str


@dataclass
class LadderReport:
    schema_version: int
    name: str
    spec_path: str | None
    track: str
    baseline: str
    curve: str
    created: str
    complete: bool
    sizes: list[SizeResult]
    trends: list[TrendResult]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _iv(e) -> Interval:
    return Interval(e.value, e.lo, e.hi)


def _method_result(spec: LadderSpec, cell: Cell) -> MethodResult:
    method, size = spec.methods[cell.method], spec.size(cell.size)
    by: dict[tuple, list] = {}
    for point, result in cell.tuned.items():
        by.setdefault(point.hparams, []).append((point.seed, result))
    tuning = []
    for hp, runs in by.items():
        losses = [r.loss for _, r in runs]
        failed = [s for s, r in runs if not r.ok]
        tuning.append(TunePoint(dict(hp), None if failed else math.fsum(losses) / len(losses),
                                sorted(s for s, _ in runs), sorted(failed)))
    confirmed = sorted(cell.confirmed.items(), key=lambda kv: kv[0].seed)
    losses = [r.loss for _, r in confirmed if r.ok]
    measured = {r.params for r in list(cell.tuned.values()) + list(cell.confirmed.values()) if r.params}
    complete = cell.best is not None and len(confirmed) == len(spec.confirm_seeds)
    return MethodResult(cell.method, cell.budget, spec.budget.steps(cell.budget, size.params),
                        _tokens(spec, cell), complete, cell.best,
                        estimate.at_edge(cell.best or {}, method.search), tuning,
                        [p.seed for p, _ in confirmed], losses, _iv(estimate.mean_ci(losses)),
                        measured.pop() if len(measured) == 1 else None)


def _tokens(spec: LadderSpec, cell: Cell) -> int | None:
    """Train tokens of the cell's runs: the referee's count (all runs of a cell serve the same), else the spec's."""
    counted = sorted({r.tokens for r in list(cell.confirmed.values()) + list(cell.tuned.values()) if r.tokens})
    if counted:
        return counted[-1]
    return spec.budget.tokens(cell.budget, spec.size(cell.size).params) or None


def _curve(spec: LadderSpec, cells: list[Cell], size: str) -> tuple[dict[float, list[float]], bool]:
    """The baseline's loss-vs-tokens at one size: tokens -> the confirmation seeds' losses; paired or not."""
    base = [c for c in cells if c.method == spec.baseline and c.size == size]
    if spec.curve == "budgets":
        curve: dict[float, list[float]] = {}
        for c in base:
            losses = [r.loss for r in c.confirmed.values() if r.ok]
            tokens = _tokens(spec, c)
            if losses and len(losses) == len(c.confirmed) and tokens:
                curve[float(tokens)] = losses
        return curve, False
    longest = max(base, key=lambda c: c.budget, default=None)
    if longest is None or not longest.confirmed:
        return {}, True
    runs = [r for _, r in sorted(longest.confirmed.items(), key=lambda kv: kv[0].seed) if r.ok]
    common = set.intersection(*(set(t for t, _ in r.curve) for r in runs)) if runs else set()
    curve = {float(t): [dict(r.curve)[t] for r in runs] for t in sorted(common) if t > 0}
    return curve, True


def build_report(spec: LadderSpec, cells: list[Cell], n_boot: int = 2000) -> LadderReport:
    """The report of whatever the cells hold (a ladder still running gives a partial one, `complete` false)."""
    warnings: list[str] = []
    sizes: list[SizeResult] = []
    boot: dict[tuple[str, float], list] = {}     # (method, budget) -> per size (params, value, replicates)
    for size in spec.sizes:
        here = [c for c in cells if c.size == size.name]
        methods = [_method_result(spec, c) for c in here]
        measured = {m.params_measured for m in methods if m.params_measured}
        params_measured = measured.pop() if len(measured) == 1 else None
        if params_measured and params_measured != size.params:
            warnings.append(f"size {size.name}: the spec says {size.params:,} parameters, the runs measured "
                            f"{params_measured:,}")
        for m in methods:
            for edge in m.at_edge:
                warnings.append(f"{m.method} at {size.name}, budget {m.budget:g}: {edge} (the optimum may lie "
                                f"outside the search space)")
            failed = [t for t in m.tuning if t.failed]
            if failed and len(failed) == len(m.tuning):
                warnings.append(f"{m.method} at {size.name}, budget {m.budget:g}: every tuning point failed")
        curve, paired = _curve(spec, cells, size.name)
        base_by_budget = {m.budget: m for m in methods if m.method == spec.baseline}
        comparisons = []
        for m in methods:
            if m.method == spec.baseline or not m.confirm_losses:
                continue
            base = base_by_budget.get(m.budget)
            gap = estimate.diff_ci(m.confirm_losses, base.confirm_losses) if base else estimate.Estimate(None, None, None)
            s = estimate.speedup(m.confirm_losses, m.tokens or math.nan, curve, paired=paired, n_boot=n_boot)
            comparisons.append(Comparison(m.method, m.budget, _iv(gap), Interval(s.value, s.lo, s.hi),
                                          s.baseline_tokens, s.extrapolated, s.undefined_share))
            boot.setdefault((m.method, m.budget), []).append((size.params, s.value, s.replicates))
        mean_curve = [(t, math.fsum(v) / len(v)) for t, v in sorted(curve.items())]
        sizes.append(SizeResult(size.name, size.params, params_measured, dict(size.overrides), methods, comparisons,
                                mean_curve))
    trends = []
    for (method, budget), rows in boot.items():
        t = estimate.crossover([r[0] for r in rows], [r[1] for r in rows],
                               [r[2] if len(r[2]) else [math.nan] for r in rows])
        trends.append(TrendResult(method, budget, Interval(t.slope, t.slope_lo, t.slope_hi),
                                  Interval(t.crossover_params, t.crossover_lo, t.crossover_hi), t.within_ladder,
                                  t.crossing_share, t.verdict))
    complete = all(m.complete for s in sizes for m in s.methods)
    return LadderReport(SCHEMA_VERSION, spec.name, str(spec.path) if spec.path else None, spec.track, spec.baseline,
                        spec.curve, datetime.now(timezone.utc).isoformat(timespec="seconds"), complete, sizes, trends,
                        warnings)


def write_report(report: LadderReport, folder: Path) -> Path:
    from speedrun.evidence import rundir

    path = Path(folder) / REPORT
    rundir.write_json_atomic(path, report.to_dict())
    return path
