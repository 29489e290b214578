"""Statistics in one place: does a set of runs meet the target, and is A better than B.

Comparisons are defined once, here:
- t-test rule (wallclock tracks): qualifies when the one-sided p-value of "mean loss < target" is strictly below
  the threshold (`p < 0.01`): the same p as `scipy.stats.ttest_1samp(losses, target, alternative="less")`,
  computed by `speedrun.judge.tdist` (importing scipy.stats takes seconds; verify must not). Repetitions
  with identical losses (sd = 0) are refused, not turned into p = 0: the seed had no effect, so they are one
  observation repeated, not n independent ones.
- margin rule (optimization track): qualifies when `(target - mean) * sqrt(n) >= margin` (inclusive). The rule
  assumes its own sd (0.0013), so n = 1 is allowed and zero variance is not a problem.
- faster (wallclock): one-sided Welch test of "new times < old times", `p < threshold` (strict).
- pairwise (optimization track, steps): modded-nanogpt's rule for a new result against a predecessor,
  `(old_mean - new_mean + (old_steps - new_steps) / 100 * slope) / sqrt(1/n_old + 1/n_new) >= margin`.
  Step counts of a record are all the same by design, so a Welch test on them means nothing; this rule is
  what decides instead.
- judging step: the loss of every repetition at one declared step (`values_at_step`), and the earliest step
  at which the rule holds across all repetitions (`earliest_passing_step`).
- blind gap (`blind_gap`): does a model score the canonical val rows better than it can where it never saw the
  next token (`speedrun.referee.evaluation`)? The referee asks it of each repetition's ranks pooled, the verdict
  of all repetitions pooled.

numpy is imported inside the functions that need it, and scipy nowhere: `speedrun --help` and `speedrun verify`
must not pay for them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Mapping, Sequence

from speedrun.errors import SpeedrunError
from speedrun.judge import tdist
from speedrun.tracks import Rule

# modded-nanogpt track 3: 0.0045 val loss per 100 steps (measured by shortening a record by 200 steps)
PAIRWISE_SLOPE = 0.0045
PAIRWISE_PER_STEPS = 100
PAIRWISE_MARGIN = 0.004
# The seed-to-seed spread of a track's records as measured: the t-test never assumes less (`sd_floor`). A script
# that makes its repetitions nearly deterministic (a fixed seed of its own, with one token of noise to dodge
# the identical-repetitions check) would otherwise buy a tiny sd and a p-value it has not earned. A track file
# may declare `sd_floor`; this table holds the floors of tracks whose file is pinned by its records (editing
# tiny.toml would change the bytes its records pinned).
# tiny: the smaller of its two records' final-loss sds over 3 seeds (records/tiny/*/verdict.json, harness
# 0.2.0): AdamW 0.00291, Muon 0.000405 -> 0.0004.
SD_FLOORS = {"tiny": 0.0004}
# The blind probe's bar: a mean gap above max(BLIND_MIN_GAP, BLIND_SIGMAS standard errors) is a model reading
# its targets (4 sigmas: an honest run is accused about once in 30,000). Fewer positions are reported, not judged.
BLIND_SIGMAS, BLIND_MIN_GAP = 4.0, 0.02
BLIND_MIN_ROWS = 64
# the replica check (speedrun.referee.replica): the scored losses may sit below the replica's by this many
# standard errors of the mean difference, or this many nats, whichever is more; and differ from them by this
# much at most (root mean square): a causal model loaded afresh repeats its logits up to rounding
REPLICA_SIGMAS, REPLICA_MIN_GAP, REPLICA_MAX_RMS = 4.0, 0.002, 0.05
ZERO_SPREAD = "repetitions are identical (sd = 0): the seed has no effect, so they are not independent runs"


def p_passes(p: float, threshold: float) -> bool:
    """The one definition of 'significant': strictly below the threshold."""
    return bool(p < threshold)


def margin_passes(score: float, margin: float) -> bool:
    """The one definition of meeting a margin: at or above it (with float noise of the last digit forgiven)."""
    return bool(score >= margin - 1e-12)


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def _mean(x: list[float]) -> float:
    return math.fsum(x) / len(x) if x else math.nan


def _sd(x: list[float]) -> float:
    """Sample standard deviation (n - 1); 0.0 for fewer than two values."""
    if len(x) < 2:
        return 0.0
    m = _mean(x)
    return math.sqrt(math.fsum((v - m) ** 2 for v in x) / (len(x) - 1))


def _all_equal(x: list[float]) -> bool:
    return len(x) > 1 and all(v == x[0] for v in x)


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


def sd_floor(track) -> float | None:
    """The track's floor on the sd the t-test uses: its own `sd_floor`, else `SD_FLOORS`, else none."""
    own = getattr(track, "sd_floor", None)
    return float(own) if own is not None else SD_FLOORS.get(getattr(track, "name", None))


def target_test(losses: Sequence[float], target: float, rule: Rule, floor: float | None = None) -> TargetResult:
    """Apply the track's rule to the final (or judged-step) val losses of n runs. `floor`: the t-test uses
    max(sd, floor) (see `SD_FLOORS`); the identical-repetitions refusal holds whatever the floor."""
    x = _floats(losses)
    n = len(x)
    finite = all(math.isfinite(v) for v in x)
    mean = _mean(x) if finite else math.nan
    sd = _sd(x) if finite else math.nan

    def refuse(why: str) -> TargetResult:
        return TargetResult(n, mean, sd, target, rule.test, math.nan, None, False, why)

    if n == 0:
        return refuse("no runs to judge")
    if n < rule.min_runs:
        return refuse(f"{n} run(s); the track needs at least {rule.min_runs}")
    if not finite:
        return refuse("a final loss is not finite")
    if rule.test == "margin":
        score = (target - mean) * math.sqrt(n)
        ok = margin_passes(score, rule.margin)
        why = f"(target - mean) * sqrt(n) = {score:.5f} {'>=' if ok else '<'} {rule.margin} (n = {n})"
        return TargetResult(n, mean, sd, target, "margin", score, None, ok, why)
    if n < 2:
        return refuse("a t-test needs at least 2 runs")
    if _all_equal(x):
        return refuse(ZERO_SPREAD)
    if floor is not None and sd < floor:
        t = (mean - target) / (floor / math.sqrt(n))
        p = tdist.t_cdf(t, n - 1)
        floored = f", with the track's sd floor {floor:g} for the measured sd {sd:.3g}"
    else:
        t, p = tdist.one_sample_less(x, target)
        floored = ""
    ok = p_passes(p, rule.p_value)
    why = f"one-sided t-test of mean < {target}: p = {p:.3g} ({'<' if ok else '>='} {rule.p_value}){floored}"
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
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def faster_test(new: Sequence[float], old: Sequence[float], threshold: float = 0.01) -> FasterResult:
    """One-sided Welch test that `new` times are lower than `old` times (wallclock).

    Refused (passed false, p nan, with the reason) when a side has fewer than 2 values, a value is not finite,
    or both sides have zero spread: Welch's statistic is undefined there, and for step counts (where equal
    values are normal) `pairwise_test` is the rule instead.
    """
    a, b = _floats(new), _floats(old)
    mean_a, mean_b = _mean(a), _mean(b)
    ratio = mean_a / mean_b if a and b and mean_b else math.nan

    def refuse(why: str) -> FasterResult:
        return FasterResult(len(a), len(b), mean_a, mean_b, ratio, math.nan, False, threshold, why)

    if len(a) < 2 or len(b) < 2:
        return refuse(f"a Welch test needs at least 2 values on each side (have {len(a)} and {len(b)})")
    if not all(math.isfinite(v) for v in a + b):
        return refuse("a time is not finite")
    if _sd(a) == 0 and _sd(b) == 0:
        return refuse("both sides have zero spread (identical values): a Welch test is undefined; "
                      "compare step counts with the pairwise rule")
    p = tdist.welch_less(a, b)[1]  # one side without spread is fine
    ok = p_passes(p, threshold)
    why = f"one-sided Welch test of new < old: p = {p:.3g} ({'<' if ok else '>='} {threshold})"
    return FasterResult(len(a), len(b), mean_a, mean_b, ratio, p, ok, threshold, why)


@dataclass
class PairwiseResult:
    """modded-nanogpt track 3's test of a new result against a predecessor (steps traded against loss)."""

    n_new: int
    n_old: int
    mean_new: float
    mean_old: float
    steps_new: float
    steps_old: float
    loss_gain: float  # mean_old - mean_new: positive when the new result reaches a lower loss
    step_credit: float  # (steps_old - steps_new) / per_steps * slope: the loss the saved steps are worth
    statistic: float  # (loss_gain + step_credit) / sqrt(1/n_old + 1/n_new)
    margin: float
    slope: float
    per_steps: int
    passed: bool
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def _steps(value, side: str) -> float:
    """A record's step count: one number, or one per run (they must agree: a record is judged at one step)."""
    try:
        values = _floats(value) if hasattr(value, "__iter__") and not isinstance(value, str) else [float(value)]
    except (TypeError, ValueError):
        values = []
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise SpeedrunError(f"{side} step count must be a non-negative number, got {value!r}")
    if any(v != values[0] for v in values):
        raise SpeedrunError(f"{side} runs were judged at different steps ({sorted(set(values))}); "
                            f"judge every run at one declared step")
    return values[0]


def pairwise_test(new_losses: Sequence[float], new_steps, old_losses: Sequence[float], old_steps, *,
                  slope: float = PAIRWISE_SLOPE, per_steps: int = PAIRWISE_PER_STEPS,
                  margin: float = PAIRWISE_MARGIN) -> PairwiseResult:
    """Is the new result (losses of its runs at `new_steps`) better than the old one, trading steps for loss?

    `(mean_old - mean_new + (steps_old - steps_new) / per_steps * slope) / sqrt(1/n_old + 1/n_new) >= margin`.
    Passing is inclusive, like the margin rule. Steps are one number per side (or one per run, all equal).
    """
    a, b = _floats(new_losses), _floats(old_losses)
    if not all(math.isfinite(v) for v in a + b):
        sa, sb = _steps(new_steps, "new"), _steps(old_steps, "old")
        return PairwiseResult(len(a), len(b), math.nan, math.nan, sa, sb, math.nan, math.nan, math.nan, margin,
                              slope, per_steps, False, "a loss is not finite")
    return pairwise_from_summary(_mean(a), len(a), new_steps, _mean(b), len(b), old_steps, slope=slope,
                                 per_steps=per_steps, margin=margin)


def pairwise_from_summary(mean_new: float, n_new: int, steps_new, mean_old: float, n_old: int, steps_old, *,
                          slope: float = PAIRWISE_SLOPE, per_steps: int = PAIRWISE_PER_STEPS,
                          margin: float = PAIRWISE_MARGIN) -> PairwiseResult:
    """`pairwise_test` from each side's mean loss and run count (what a ledger entry keeps)."""
    if not (slope > 0 and math.isfinite(slope)) or not per_steps > 0 or not (margin > 0 and math.isfinite(margin)):
        raise SpeedrunError(f"pairwise test: slope, per_steps and margin must be positive "
                            f"(got {slope}, {per_steps}, {margin})")
    sa, sb = _steps(steps_new, "new"), _steps(steps_old, "old")
    n_new, n_old = int(n_new), int(n_old)
    credit = (sb - sa) / per_steps * slope
    gain = mean_old - mean_new

    def result(stat: float, ok: bool, why: str) -> PairwiseResult:
        return PairwiseResult(n_new, n_old, mean_new, mean_old, sa, sb, gain, credit, stat, margin, slope,
                              per_steps, ok, why)

    if n_new < 1 or n_old < 1:
        return result(math.nan, False, f"both sides need at least one run (have {n_new} new, {n_old} old)")
    if not (math.isfinite(mean_new) and math.isfinite(mean_old)):
        return result(math.nan, False, "a mean loss is not finite")
    stat = (gain + credit) / math.sqrt(1 / n_old + 1 / n_new)
    ok = margin_passes(stat, margin)
    why = (f"(loss gain {gain:+.5f} + {sb - sa:g} steps saved x {slope}/{per_steps} = {credit:+.5f}) "
           f"/ sqrt(1/{n_old} + 1/{n_new}) = {stat:.5f} {'>=' if ok else '<'} {margin}")
    return result(stat, ok, why)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    x = _floats(values)
    if not x:
        return math.nan, math.nan
    return _mean(x), _sd(x)


# --- the judging step ---------------------------------------------------------------------------------------


def _label(key) -> str:
    return f"repetition {key}"


def values_at_step(vals_by_rep: Mapping[object, Sequence[Mapping]], step: int, field: str = "loss") -> list[float]:
    """For every repetition, the `field` of its validation at `step` (the declared judging step), in order.

    `vals_by_rep` maps a repetition's label (its k) to its validation events (dicts with "step" and `field`;
    when a step was validated twice the last one counts). A repetition without a validation at that step, or
    whose value there is missing, is an error naming it: a record is judged at one step for all its runs.
    """
    out = []
    for key, vals in vals_by_rep.items():
        at = [v for v in vals if v.get("step") == step]
        if not at:
            steps = [v.get("step") for v in vals if isinstance(v.get("step"), int)]
            ends = f"its validations end at step {max(steps)}" if steps else "it has no validation at all"
            raise SpeedrunError(f"{_label(key)} has no validation at step {step} ({ends})")
        value = at[-1].get(field)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise SpeedrunError(f"{_label(key)}: its validation at step {step} has no {field!r} value")
        out.append(float(value))
    return out


@dataclass
class EarliestStep:
    """The earliest step every repetition validated at where the rule holds (None when there is none)."""

    step: int | None
    result: TargetResult | None  # the rule's result at `step`
    checked: list[int] = field(default_factory=list)  # the common steps looked at, in order

    def to_dict(self) -> dict:
        return {"step": self.step, "result": self.result.to_dict() if self.result else None,
                "checked": list(self.checked)}


def common_steps(vals_by_rep: Mapping[object, Sequence[Mapping]], field: str = "loss") -> list[int]:
    """The steps at which every repetition has a validation with a `field` value, ascending."""
    sets = [{v["step"] for v in vals if isinstance(v.get("step"), int) and isinstance(v.get(field), (int, float))}
            for vals in vals_by_rep.values()]
    return sorted(set.intersection(*sets)) if sets else []


def earliest_passing_step(vals_by_rep: Mapping[object, Sequence[Mapping]], target: float, rule: Rule,
                          field: str = "loss", not_before: int = 0) -> EarliestStep:
    """What track-3 submitters do: validate often near the end and take the earliest step at which the rule
    holds across *all* runs (the same step for every run; never a per-run choice)."""
    steps = [s for s in common_steps(vals_by_rep, field) if s >= not_before]
    for step in steps:
        result = target_test(values_at_step(vals_by_rep, step, field), target, rule)
        if result.passed:
            return EarliestStep(step, result, steps[:steps.index(step) + 1])
    return EarliestStep(None, None, steps)


@dataclass(frozen=True)
class BlindGap:
    """The pooled blind positions: the mean gap of blind over canonical losses after the control variate, its
    residual spread, the bar it must stay under, and the raw figures before the covariate."""

    positions: int
    gap: float
    sd: float
    bar: float
    raw_gap: float
    raw_sd: float

    @property
    def reads(self) -> bool:
        """The model reads its targets from its inputs (NaN counts as reading: nothing vouches for it)."""
        return not self.gap <= self.bar

    def to_dict(self) -> dict:
        return {**asdict(self), "reads": self.reads}


def blind_sums(gaps, covariates) -> dict:
    """The probe's blind sums (`speedrun.evidence.schema.PROBE`) of `gaps` [n] and `covariates` [n, k]: x the
    first column, y the second (k = 2; without it no y sums are written, as in evidence from before it)."""
    import numpy as np

    g, c = np.asarray(gaps, dtype=np.float64), np.asarray(covariates, dtype=np.float64).reshape(len(gaps), -1)
    out = {"blind_rows": len(g), "blind_gap_sum": float(g.sum()), "blind_gap_sq": float(g @ g),
           "blind_x_sum": float(c[:, 0].sum()), "blind_x_sq": float(c[:, 0] @ c[:, 0]),
           "blind_gx_sum": float(g @ c[:, 0])}
    if c.shape[1] > 1:
        out.update(blind_y_sum=float(c[:, 1].sum()), blind_y_sq=float(c[:, 1] @ c[:, 1]),
                   blind_gy_sum=float(g @ c[:, 1]), blind_xy_sum=float(c[:, 0] @ c[:, 1]))
    return out


def blind_gap(probes: Sequence[Mapping]) -> BlindGap | None:
    """Pool the probes' blind sums (count, sums and squares of the gaps g and of the covariates x and y, their
    cross sums: `speedrun.evidence.schema.PROBE`) and judge the mean gap; None for fewer than BLIND_MIN_ROWS
    positions.

    The covariates (the blind token's unigram and bigram surprisals, each less its mean over the canonical
    targets: `speedrun.referee.surprisal`) depend on the tokens alone, so their expectation is 0 whatever the
    script does: the mean gap less b . (their means), b the regression of the gaps on them, is unbiased, and
    its spread is what the covariates leave. Evidence from before the bigram (no y sums) regresses on x alone;
    a covariate without spread is left out."""
    n = sum(p["blind_rows"] for p in probes)
    if n < BLIND_MIN_ROWS:
        return None

    def pooled(key: str) -> float:
        return math.fsum(p.get(key, 0.0) for p in probes) / n

    g, x, y = pooled("blind_gap_sum"), pooled("blind_x_sum"), pooled("blind_y_sum")
    sgg = pooled("blind_gap_sq") - g * g
    sxx, syy, sxy = pooled("blind_x_sq") - x * x, pooled("blind_y_sq") - y * y, pooled("blind_xy_sum") - x * y
    sgx, sgy = pooled("blind_gx_sum") - g * x, pooled("blind_gy_sum") - g * y
    bx = by = 0.0
    det = sxx * syy - sxy * sxy
    if sxx > 1e-12 and syy > 1e-12 and det > 1e-9 * sxx * syy:
        bx, by = (syy * sgx - sxy * sgy) / det, (sxx * sgy - sxy * sgx) / det
    elif sxx > 1e-12:
        bx = sgx / sxx
    elif syy > 1e-12:
        by = sgy / syy
    sd = math.sqrt(max(0.0, sgg - bx * sgx - by * sgy))
    return BlindGap(n, g - bx * x - by * y, sd, max(BLIND_MIN_GAP, BLIND_SIGMAS * sd / math.sqrt(n)), g,
                    math.sqrt(max(0.0, sgg)))


@dataclass(frozen=True)
class ReplicaGap:
    """The replica check's figures (`speedrun.referee.replica`): over `positions` checked positions, the mean of
    d = replica loss - scored loss, its spread, its root mean square and largest size, and the bar the mean must
    stay under."""

    positions: int
    gap: float
    sd: float
    rms: float
    max: float
    bar: float

    @property
    def reads(self) -> bool:
        """The scored logits beat the same model shown nothing after each position (NaN counts as reading)."""
        return not self.gap <= self.bar

    @property
    def differs(self) -> bool:
        """The scored logits are not the sealed model's (beyond rounding), in either direction."""
        return not self.rms <= REPLICA_MAX_RMS

    def to_dict(self) -> dict:
        return {**asdict(self), "reads": self.reads, "differs": self.differs}


def replica_gap(entries: Sequence[Mapping]) -> ReplicaGap | None:
    """Pool replica sums (positions, d_sum, d_sq, d_max: `speedrun.evidence.schema.REPLICA`); None with no
    position. The mean of d is judged against its standard error: a peek that moves few positions moves the
    mean little, but the positions are drawn in secret from all of them, so a peek worth anything moves many."""
    n = sum(int(e["positions"]) for e in entries)
    if n < 1:
        return None
    mean = math.fsum(e["d_sum"] for e in entries) / n
    sq = math.fsum(e["d_sq"] for e in entries) / n
    sd = math.sqrt(max(0.0, sq - mean * mean))
    return ReplicaGap(n, mean, sd, math.sqrt(max(0.0, sq)), max(float(e["d_max"]) for e in entries),
                      max(REPLICA_MIN_GAP, REPLICA_SIGMAS * sd / math.sqrt(n)))
