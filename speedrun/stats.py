"""Statistics in one place: does a set of runs meet the target, and is A faster than B on the same hardware.

Comparisons are defined once, here:
- t-test rule: qualifies when the one-sided p-value of "mean loss < target" is strictly below the threshold
  (`p < 0.01`), via `scipy.stats.ttest_1samp(losses, target, alternative="less")`.
- margin rule (optimization track): qualifies when `(target - mean) * sqrt(n) >= margin` (inclusive).
- faster: one-sided Welch test of "new times < old times", `p < threshold` (strict).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

from speedrun.tracks import Rule


def p_passes(p: float, threshold: float) -> bool:
    """The one definition of 'significant': strictly below the threshold."""
    return bool(p < threshold)


def margin_passes(score: float, margin: float) -> bool:
    """The one definition of meeting a margin: at or above it (with float noise of the last digit forgiven)."""
    return bool(score >= margin - 1e-12)


@dataclass
class TargetResult:
    n: int
    mean: float
    sd: float
    target: float
    rule: str
    statistic: float  # t for the t-test, the margin score for the margin rule
    p_value: float | None
    passed: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def target_test(losses: list[float], target: float, rule: Rule) -> TargetResult:
    """Apply the track's rule to the final val losses of n runs."""
    x = np.asarray(losses, dtype=np.float64)
    n = len(x)
    mean = float(x.mean()) if n else math.nan
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    if n < rule.min_runs:
        return TargetResult(n, mean, sd, target, rule.test, math.nan, None, False,
                            f"{n} run(s); the track needs at least {rule.min_runs}")
    if not np.isfinite(x).all():
        return TargetResult(n, mean, sd, target, rule.test, math.nan, None, False, "a final loss is not finite")
    if rule.test == "margin":
        score = (target - mean) * math.sqrt(n)
        ok = margin_passes(score, rule.margin)
        why = f"(target - mean) * sqrt(n) = {score:.5f} {'>=' if ok else '<'} {rule.margin}"
        return TargetResult(n, mean, sd, target, "margin", score, None, ok, why)
    if n < 2:
        return TargetResult(n, mean, sd, target, "ttest", math.nan, None, False, "a t-test needs at least 2 runs")
    if sd == 0.0:
        # scipy returns nan for zero variance; the answer is then plain
        p = 0.0 if mean < target else 1.0
        t = -math.inf if mean < target else math.inf
    else:
        res = sps.ttest_1samp(x, target, alternative="less")
        t, p = float(res.statistic), float(res.pvalue)
    ok = p_passes(p, rule.p_value)
    why = f"one-sided t-test of mean < {target}: p = {p:.3g} ({'<' if ok else '>='} {rule.p_value})"
    return TargetResult(n, mean, sd, target, "ttest", t, p, ok, why)


@dataclass
class FasterResult:
    n_new: int
    n_old: int
    mean_new: float
    mean_old: float
    ratio: float  # mean_new / mean_old
    p_value: float
    passed: bool
    threshold: float

    def to_dict(self) -> dict:
        return asdict(self)


def faster_test(new: list[float], old: list[float], threshold: float = 0.01) -> FasterResult:
    """One-sided Welch test that `new` times are lower than `old` times."""
    a, b = np.asarray(new, dtype=np.float64), np.asarray(old, dtype=np.float64)
    ratio = float(a.mean() / b.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return FasterResult(len(a), len(b), float(a.mean()) if len(a) else math.nan,
                            float(b.mean()) if len(b) else math.nan, ratio, math.nan, False, threshold)
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        p = 0.0 if a.mean() < b.mean() else 1.0
    else:
        p = float(sps.ttest_ind(a, b, equal_var=False, alternative="less").pvalue)
    return FasterResult(len(a), len(b), float(a.mean()), float(b.mean()), ratio, p,
                        p_passes(p, threshold), threshold)


def mean_sd(values: list[float]) -> tuple[float, float]:
    x = np.asarray(values, dtype=np.float64)
    if not len(x):
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0
