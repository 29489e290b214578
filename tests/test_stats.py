"""The statistics module decides qualification; these pin its rules, including the edges."""

import math

import pytest
from scipy import stats as sps

from speedrun import stats
from speedrun.tracks import Rule

TTEST = Rule(test="ttest", p_value=0.01, min_runs=2)
MARGIN = Rule(test="margin", margin=0.004, min_runs=1)


def test_ttest_matches_scipy_and_passes_below_target():
    losses = [3.270, 3.272, 3.275, 3.271, 3.273]
    r = stats.target_test(losses, 3.28, TTEST)
    expected = sps.ttest_1samp(losses, 3.28, alternative="less")
    assert r.p_value == pytest.approx(expected.pvalue)
    assert r.statistic == pytest.approx(expected.statistic)
    assert r.passed and r.n == 5


def test_ttest_fails_when_mean_is_close_to_target():
    r = stats.target_test([3.275, 3.285, 3.279], 3.28, TTEST)
    assert not r.passed and r.p_value > 0.01


def test_p_value_threshold_is_strict():
    assert stats.p_passes(0.0099, 0.01)
    assert not stats.p_passes(0.01, 0.01)


def test_margin_rule_is_inclusive():
    # (3.28 - 3.278) * sqrt(4) = 0.004 exactly: qualifies
    r = stats.target_test([3.278] * 4, 3.28, MARGIN)
    assert r.statistic == pytest.approx(0.004)
    assert r.passed
    r = stats.target_test([3.2785] * 4, 3.28, MARGIN)
    assert not r.passed


def test_too_few_runs_and_non_finite_fail_with_reason():
    r = stats.target_test([3.0], 3.28, TTEST)
    assert not r.passed and "at least 2" in r.reason
    r = stats.target_test([3.0, math.nan], 3.28, TTEST)
    assert not r.passed and "finite" in r.reason


def test_zero_variance_is_decided_plainly():
    assert stats.target_test([3.0, 3.0, 3.0], 3.28, TTEST).passed
    assert not stats.target_test([3.5, 3.5], 3.28, TTEST).passed


def test_faster_welch_one_sided():
    new, old = [10.0, 10.2, 9.9, 10.1], [12.0, 12.3, 11.8, 12.1]
    r = stats.faster_test(new, old)
    expected = sps.ttest_ind(new, old, equal_var=False, alternative="less").pvalue
    assert r.p_value == pytest.approx(expected)
    assert r.passed and r.ratio == pytest.approx(sum(new) / sum(old))
    assert not stats.faster_test(old, new).passed
