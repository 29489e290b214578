"""The ladder's statistics: loss intervals, the data-equivalent speed-up, and where it crosses 1.

Why these estimators:
- Tuned loss: the mean over the confirmation seeds (fresh seeds of the chosen setting, so not the minimum of
  noisy draws), with a Student-t interval. The gap (method - baseline) gets a Welch interval.
- Data-equivalent speed-up at one size: how many tokens the baseline needs to reach the method's loss,
  divided by the tokens the method used. The baseline's loss-vs-tokens curve is its tuned loss at each budget
  (or the intermediate validations of its runs); it is inverted piecewise in log-log (a power law between
  measured points). A loss below the curve's last point is reached by extending the last segment's power law:
  flagged `extrapolated`. Its error can go either way: having no loss floor it underestimates the tokens a
  flattening curve needs, but a segment taken from a run's own validations (steps within one schedule) is
  flatter than the curve across full schedules, and the tiny ladder's extension overstated the speed-up
  (1.15x read off the validations against 1.07-1.11x measured at 150 steps). Measure the curve instead
  (`curve = "budgets"` with a budget past the method's loss).
- Its interval: a bootstrap over seeds (the method's confirmation seeds and, per budget, the baseline's;
  seeds of the same runs are resampled together when the curve is their validations). With 2 seeds a group
  has only 3 distinct resampled means, so the interval is a rough one; more seeds narrow it honestly.
- Crossover: where the speed-up falls to 1 between two adjacent sizes (interpolated in log speed-up vs log
  parameters), from the point estimates and in each bootstrap replicate (its interval is over the replicates
  that cross, and the share that does is reported). Across all sizes, a least-squares line of log speed-up on
  log parameters gives the trend and, when no adjacent pair crosses, the size where the trend would reach 1
  (outside the ladder, so labelled as an extrapolation).

numpy and scipy are imported here only; nothing prints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

LEVEL = 0.95


@dataclass
class Estimate:
    value: float | None
    lo: float | None
    hi: float | None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """Mean with a Student-t interval (None bounds for a single value: no spread to go on)."""
    from scipy import stats

    x = np.asarray([v for v in values if _finite(v)], dtype=float)
    if x.size == 0:
        return Estimate(None, None, None)
    m = float(x.mean())
    if x.size < 2:
        return Estimate(m, None, None)
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Estimate(m, m - half, m + half)


def diff_ci(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Estimate:
    """mean(a) - mean(b) with a Welch interval."""
    from scipy import stats

    x = np.asarray([v for v in a if _finite(v)], dtype=float)
    y = np.asarray([v for v in b if _finite(v)], dtype=float)
    if x.size == 0 or y.size == 0:
        return Estimate(None, None, None)
    d = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return Estimate(d, None, None)
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0:
        return Estimate(d, d, d)
    dof = (va + vb) ** 2 / (va ** 2 / (x.size - 1) + vb ** 2 / (y.size - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof) * se)
    return Estimate(d, d - half, d + half)


def tokens_to_reach(curve: Sequence[tuple[float, float]], loss: float) -> tuple[float | None, bool]:
    """Tokens at which a loss-vs-tokens curve reaches `loss`: (tokens, extrapolated). Piecewise power law
    between the curve's points; beyond them, the nearest segment's power law. (None, False) when the curve
    does not fall there (a flat or rising segment), so no token count can be read off it."""
    pts = sorted((float(t), float(l)) for t, l in curve if _finite(t) and _finite(l) and t > 0 and l > 0)
    if len(pts) < 2 or not _finite(loss) or loss <= 0:
        return None, False
    logs = [(math.log(t), math.log(l)) for t, l in pts]
    y = math.log(loss)

    def along(i: int) -> float | None:
        (x0, y0), (x1, y1) = logs[i], logs[i + 1]
        if y1 >= y0:
            return None
        return math.exp(x0 + (y - y0) * (x1 - x0) / (y1 - y0))

    for i in range(len(logs) - 1):   # the first segment that spans the loss
        (_, y0), (_, y1) = logs[i], logs[i + 1]
        if y1 < y0 and y1 <= y <= y0:
            return along(i), False
    if y < min(l for _, l in logs):
        t = along(len(logs) - 2)
        return (t, True) if t is not None else (None, False)
    if y > logs[0][1]:
        t = along(0)
        return (t, True) if t is not None else (None, False)
    return None, False


@dataclass
class SpeedupEstimate:
    value: float | None
    lo: float | None
    hi: float | None
    extrapolated: bool
    baseline_tokens: float | None          # tokens the baseline needs for the method's mean loss
    undefined_share: float                  # bootstrap replicates where the curve could not be inverted
    replicates: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)


def speedup(method_losses: Sequence[float], method_tokens: float, curve: dict[float, list[float]],
            paired: bool = False, n_boot: int = 2000, seed: int = 0, level: float = LEVEL) -> SpeedupEstimate:
    """Data-equivalent speed-up of a method (its confirmation losses at `method_tokens`) over a baseline whose
    curve maps tokens -> the losses of its seeds there. `paired`: the curve's lists are the same runs' seeds
    in the same order (validations of one run per seed), resampled together."""
    m = np.asarray([v for v in method_losses if _finite(v)], dtype=float)
    tokens = sorted(curve)
    if m.size == 0 or len(tokens) < 2 or any(not curve[t] for t in tokens) or not _finite(method_tokens) \
            or method_tokens <= 0:
        return SpeedupEstimate(None, None, None, False, None, 1.0)
    cols = [np.asarray(curve[t], dtype=float) for t in tokens]
    mean_curve = [(t, float(c.mean())) for t, c in zip(tokens, cols)]
    needed, extrapolated = tokens_to_reach(mean_curve, float(m.mean()))
    value = needed / method_tokens if needed else None
    rng = np.random.default_rng(seed)
    reps = np.full(n_boot, np.nan)
    for b in range(n_boot):
        mb = m[rng.integers(0, m.size, m.size)].mean()
        if paired:
            n = min(c.size for c in cols)
            idx = rng.integers(0, n, n)
            cb = [(t, float(c[:n][idx].mean())) for t, c in zip(tokens, cols)]
        else:
            cb = [(t, float(c[rng.integers(0, c.size, c.size)].mean())) for t, c in zip(tokens, cols)]
        t_b, _ = tokens_to_reach(cb, float(mb))
        if t_b:
            reps[b] = t_b / method_tokens
    ok = reps[np.isfinite(reps)]
    undefined = 1.0 - ok.size / n_boot
    lo = hi = None
    if ok.size:
        lo, hi = (float(q) for q in np.quantile(ok, [0.5 - level / 2, 0.5 + level / 2]))
    return SpeedupEstimate(value, lo, hi, extrapolated, needed, undefined, reps)


@dataclass
class Trend:
    slope: float | None                 # d log(speed-up) / d log(params)
    slope_lo: float | None
    slope_hi: float | None
    crossover_params: float | None      # where the speed-up reaches 1
    crossover_lo: float | None
    crossover_hi: float | None
    within_ladder: bool                 # two adjacent sizes straddle 1 (else the crossover is extrapolated)
    crossing_share: float               # bootstrap replicates that cross within the ladder
    verdict: str


def _fit(logn: np.ndarray, logs: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(logn, logs, 1)
    return float(slope), float(intercept)


def _cross_between(params: Sequence[float], s: Sequence[float]) -> float | None:
    """The first place where log speed-up changes sign between adjacent sizes, interpolated in log-log."""
    for i in range(len(params) - 1):
        a, b = s[i], s[i + 1]
        if not (_finite(a) and _finite(b)) or a <= 0 or b <= 0:
            continue
        la, lb = math.log(a), math.log(b)
        if la == 0:
            return float(params[i])
        if la * lb < 0 or lb == 0:
            x0, x1 = math.log(params[i]), math.log(params[i + 1])
            return math.exp(x0 + (0 - la) * (x1 - x0) / (lb - la))
    return None


def crossover(params: Sequence[float], values: Sequence[float | None], replicates: Sequence[np.ndarray],
              level: float = LEVEL) -> Trend:
    """The trend of the speed-up across sizes and the size where it crosses 1, with bootstrap intervals.
    `replicates[i]`: bootstrap draws of size i's speed-up (NaN where undefined), all of the same length."""
    sizes = [i for i, v in enumerate(values) if _finite(v) and v > 0]
    if len(sizes) < 2:
        return Trend(None, None, None, None, None, None, False, 0.0, "fewer than two sizes with a speed-up")
    n = np.asarray([params[i] for i in sizes], dtype=float)
    s = np.asarray([values[i] for i in sizes], dtype=float)
    slope, intercept = _fit(np.log(n), np.log(s))
    point = _cross_between(list(n), list(s))
    draws = min((len(replicates[i]) for i in sizes), default=0)
    slopes, crosses, fitted_cross = [], [], []
    for b in range(draws):
        sb = np.asarray([replicates[i][b] for i in sizes], dtype=float)
        if not np.all(np.isfinite(sb)) or np.any(sb <= 0):
            continue
        sl, ic = _fit(np.log(n), np.log(sb))
        slopes.append(sl)
        c = _cross_between(list(n), list(sb))
        if c is not None:
            crosses.append(c)
        if sl != 0:
            fitted_cross.append(math.exp(-ic / sl))
    q = (0.5 - level / 2, 0.5 + level / 2)
    slope_lo, slope_hi = (float(v) for v in np.quantile(slopes, q)) if slopes else (None, None)
    share = len(crosses) / len(slopes) if slopes else 0.0
    lo_n, hi_n = float(n.min()), float(n.max())
    if point is not None:
        lo, hi = (float(v) for v in np.quantile(crosses, q)) if crosses else (None, None)
        direction = "falls below" if s[0] > 1 else "rises above"
        verdict = (f"the speed-up {direction} 1 at about {point:,.0f} parameters, within the ladder "
                   f"({share:.0%} of bootstrap replicates cross within it)")
        return Trend(slope, slope_lo, slope_hi, point, lo, hi, True, share, verdict)
    side = "above" if s[0] > 1 else "below"
    heading = (s[0] > 1 and slope < 0) or (s[0] < 1 and slope > 0)
    if not heading:
        verdict = (f"no crossover within the ladder: the speed-up stays {side} 1 and its trend does not head "
                   f"towards 1 (slope {slope:+.3f} in log-log)")
        return Trend(slope, slope_lo, slope_hi, None, None, None, False, share, verdict)
    extrapolated = math.exp(-intercept / slope)
    same_side = [c for c in fitted_cross if (c > hi_n if extrapolated > hi_n else c < lo_n)]
    lo, hi = (float(v) for v in np.quantile(same_side, q)) if same_side else (None, None)
    where = "larger" if extrapolated > hi_n else "smaller"
    verdict = (f"no crossover within the ladder (speed-up {side} 1 at every size); the log-log trend would reach "
               f"1 at about {extrapolated:,.0f} parameters ({where} than the ladder: an extrapolation)")
    return Trend(slope, slope_lo, slope_hi, extrapolated, lo, hi, False, share, verdict)


def at_edge(best: dict[str, Any], space: dict[str, list[Any]]) -> list[str]:
    """The hyper-parameters whose chosen value is the first or last of its search values (of two or more):
    the optimum may lie outside the space searched."""
    out = []
    for key, values in space.items():
        if len(values) >= 2 and key in best:
            try:
                ordered = sorted(values)
            except TypeError:
                ordered = list(values)
            if best[key] in (ordered[0], ordered[-1]):
                side = "lowest" if best[key] == ordered[0] else "highest"
                out.append(f"{key}={best[key]} is the {side} value searched")
    return out
