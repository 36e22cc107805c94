"""Each statistic against an independent reference: scipy's own tests, or the textbook
formula written out here by hand."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from alignd.server.experiments.statistics import (
    CONFIDENCE,
    Difference,
    MeanInterval,
    Proportion,
    binomial_test,
    mean_interval,
    percentile,
    two_proportion_test,
    welch_test,
    wilson_interval,
)

Z95 = 1.959963984540054  # upper 97.5% point of the standard normal


def hand_wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson (1927) score interval, written out term by term."""
    p = k / n
    centre = p + z**2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return (centre - spread) / (1 + z**2 / n), (centre + spread) / (1 + z**2 / n)


def all_nan(d: Difference) -> bool:
    return all(math.isnan(v) for v in (d.difference, d.low, d.high, d.p_value))


# --- mean_interval -------------------------------------------------------------------------


def test_mean_interval_matches_scipy_one_sample_t_interval():
    values = np.random.default_rng(7).normal(3.0, 2.0, size=25)
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    got = mean_interval(values)
    assert got.count == 25
    assert got.mean == pytest.approx(values.mean(), rel=1e-12)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_mean_interval_widens_with_higher_confidence_and_matches_scipy_at_99():
    values = [1.0, 4.0, 2.5, 3.0, 7.0]
    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.99)
    got = mean_interval(values, confidence=0.99)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert got.high - got.low > mean_interval(values).high - mean_interval(values).low


def test_mean_interval_of_nothing_is_nan_with_count_zero():
    got = mean_interval([])
    assert got.count == 0
    assert math.isnan(got.mean) and math.isnan(got.low) and math.isnan(got.high)


def test_mean_interval_of_one_value_has_that_mean_and_no_interval():
    got = mean_interval([4.5])
    assert (got.mean, got.count) == (4.5, 1)
    assert math.isnan(got.low) and math.isnan(got.high)


def test_mean_interval_of_constant_values_collapses_onto_the_mean():
    assert mean_interval([2.0, 2.0, 2.0]) == MeanInterval(2.0, 2.0, 2.0, 3)


def test_mean_interval_propagates_nan_inputs():
    assert math.isnan(mean_interval([1.0, float("nan"), 3.0]).mean)


def test_mean_interval_rejects_confidence_outside_zero_one():
    with pytest.raises(ValueError):
        mean_interval([1.0, 2.0], confidence=1.0)


# --- wilson_interval -----------------------------------------------------------------------


def test_wilson_interval_for_8_of_10_matches_the_formula_by_hand():
    low, high = hand_wilson(8, 10)
    got = wilson_interval(8, 10)
    assert (got.successes, got.trials, got.rate) == (8, 10, 0.8)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
    # The commonly quoted rounded values for 8/10.
    assert (round(got.low, 4), round(got.high, 4)) == (0.4902, 0.9433)


def test_wilson_interval_at_90_percent_uses_the_matching_normal_quantile():
    low, high = hand_wilson(30, 50, z=stats.norm.ppf(0.95))
    got = wilson_interval(30, 50, confidence=0.90)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)


def test_wilson_interval_of_no_trials_is_the_whole_unit_interval_with_nan_rate():
    got = wilson_interval(0, 0)
    assert math.isnan(got.rate)
    assert (got.low, got.high) == (0.0, 1.0)


def test_wilson_interval_touches_zero_and_one_exactly_at_the_extremes():
    for n in range(1, 60):  # the formula leaves rounding noise at some n (e.g. 0/6): never above 0
        assert wilson_interval(0, n).low == 0.0 and wilson_interval(n, n).high == 1.0
    assert 0.0 < wilson_interval(0, 20).high < 0.2


@pytest.mark.parametrize("successes, trials", [(-1, 5), (6, 5), (0, -1)])
def test_wilson_interval_rejects_impossible_counts(successes, trials):
    with pytest.raises(ValueError):
        wilson_interval(successes, trials)


def test_wilson_interval_covers_the_true_rate_about_95_percent_of_the_time():
    n, p = 40, 0.3
    rng = np.random.default_rng(0)
    counts = (rng.random((2000, n)) < p).sum(axis=1)
    intervals = [wilson_interval(int(k), n) for k in counts]
    coverage = np.mean([w.low <= p <= w.high for w in intervals])
    assert 0.93 <= coverage <= 0.97


# --- welch_test ----------------------------------------------------------------------------


def test_welch_test_matches_scipy_unequal_variance_t_test():
    rng = np.random.default_rng(11)
    arm, baseline = rng.normal(1.3, 1.0, size=30), rng.normal(1.0, 3.0, size=12)
    ref = stats.ttest_ind(arm, baseline, equal_var=False)
    ci = ref.confidence_interval(0.95)
    got = welch_test(arm, baseline)
    assert got.test == "welch_t"
    assert got.difference == pytest.approx(arm.mean() - baseline.mean(), rel=1e-12)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


# scipy warns that a constant sample loses precision in its moment; its answer is still exact here.
@pytest.mark.filterwarnings("ignore:Precision loss occurred:RuntimeWarning")
def test_welch_test_with_one_constant_side_still_matches_scipy():
    arm, baseline = [5.0, 5.0, 5.0, 5.0], [1.0, 2.0, 4.0, 3.5, 2.2]
    ref = stats.ttest_ind(arm, baseline, equal_var=False)
    ci = ref.confidence_interval(0.95)
    got = welch_test(arm, baseline)
    assert got.p_value == pytest.approx(ref.pvalue, rel=1e-10)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_welch_test_interval_excludes_zero_exactly_when_p_is_below_005():
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.2, 0.5, 1.0):
        got = welch_test(rng.normal(shift, 1.0, 40), rng.normal(0.0, 1.0, 40))
        assert (got.p_value < 1 - CONFIDENCE) == (not got.low <= 0.0 <= got.high)


@pytest.mark.parametrize("arm, baseline", [([1.0], [1.0, 2.0]), ([1.0, 2.0], []), ([], [])])
def test_welch_test_with_fewer_than_two_values_on_a_side_is_nan(arm, baseline):
    got = welch_test(arm, baseline)
    assert all_nan(got) and got.test == "welch_t"


def test_welch_test_of_two_constant_sides_is_degenerate_at_the_difference():
    assert welch_test([3.0, 3.0], [1.0, 1.0, 1.0]) == Difference(2.0, 2.0, 2.0, 0.0, "welch_t")
    assert welch_test([3.0, 3.0], [3.0, 3.0, 3.0]) == Difference(0.0, 0.0, 0.0, 1.0, "welch_t")


# --- two_proportion_test -------------------------------------------------------------------


def test_two_proportion_p_value_matches_the_pooled_z_test_by_hand():
    k1, n1, k2, n2 = 45, 100, 30, 90
    pooled = (k1 + k2) / (n1 + n2)
    z = (k1 / n1 - k2 / n2) / math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    expected_p = math.erfc(abs(z) / math.sqrt(2))  # = 2 * (1 - Phi(|z|))
    got = two_proportion_test(k1, n1, k2, n2)
    assert got.test == "two_proportion_z"
    assert got.difference == pytest.approx(k1 / n1 - k2 / n2, rel=1e-12)
    assert got.p_value == pytest.approx(expected_p, rel=1e-10)


def test_two_proportion_interval_is_newcombes_hybrid_score_on_his_56_70_vs_48_80_example():
    p1, p2 = 56 / 70, 48 / 80
    l1, u1 = hand_wilson(56, 70)
    l2, u2 = hand_wilson(48, 80)
    low = (p1 - p2) - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = (p1 - p2) + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    got = two_proportion_test(56, 70, 48, 80)
    assert got.difference == pytest.approx(0.2, abs=1e-12)
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-12)
    # The values Newcombe (1998) reports for this example.
    assert (round(got.low, 4), round(got.high, 4)) == (0.0524, 0.3339)


def test_two_proportion_sign_follows_arm_minus_baseline():
    forward, backward = two_proportion_test(30, 50, 20, 50), two_proportion_test(20, 50, 30, 50)
    assert forward.difference == pytest.approx(-backward.difference)
    assert (forward.low, forward.high) == pytest.approx((-backward.high, -backward.low))
    assert forward.p_value == pytest.approx(backward.p_value)


@pytest.mark.parametrize("counts", [(0, 0, 3, 10), (3, 10, 0, 0)])
def test_two_proportion_with_no_trials_on_a_side_is_nan(counts):
    got = two_proportion_test(*counts)
    assert all_nan(got) and got.test == "two_proportion_z"


@pytest.mark.parametrize("counts", [(0, 10, 0, 20), (10, 10, 20, 20)])
def test_two_proportion_with_pooled_rate_zero_or_one_has_p_one(counts):
    got = two_proportion_test(*counts)
    assert got.difference == 0.0 and got.p_value == 1.0
    assert got.low < 0.0 < got.high


def test_two_proportion_rejects_impossible_counts():
    with pytest.raises(ValueError):
        two_proportion_test(11, 10, 3, 10)


# --- binomial_test -------------------------------------------------------------------------


def test_binomial_test_matches_scipy_binomtest_and_the_shifted_wilson_interval():
    low, high = hand_wilson(62, 100)
    got = binomial_test(62, 100)
    assert got.test == "binomial_exact"
    assert got.difference == pytest.approx(0.12, abs=1e-12)
    assert got.p_value == pytest.approx(stats.binomtest(62, 100, 0.5).pvalue, rel=1e-12)
    assert (got.low, got.high) == pytest.approx((low - 0.5, high - 0.5), rel=1e-12)


def test_binomial_test_of_an_even_split_has_p_one():
    got = binomial_test(5, 10)
    assert got.difference == 0.0 and got.p_value == pytest.approx(1.0)


def test_binomial_test_exact_p_for_9_of_10_is_22_over_1024():
    # P(X <= 1) + P(X >= 9) for X ~ Bin(10, 1/2) = 2 * (1 + 10) / 2**10.
    assert binomial_test(9, 10).p_value == pytest.approx(22 / 1024, rel=1e-12)


def test_binomial_test_with_no_trials_is_nan():
    got = binomial_test(0, 0)
    assert all_nan(got) and got.test == "binomial_exact"


# --- percentile and the result types -------------------------------------------------------


def test_percentile_interpolates_linearly_between_order_statistics():
    values = [10.0, 0.0, 30.0, 20.0]  # sorted 0, 10, 20, 30 at ranks 0..3
    assert percentile(values, 0) == 0.0
    assert percentile(values, 100) == 30.0
    assert percentile(values, 50) == pytest.approx(15.0)
    assert percentile(values, 90) == pytest.approx(27.0)  # rank 2.7


def test_percentile_of_nothing_is_nan_and_q_outside_0_100_is_rejected():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_results_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        wilson_interval(1, 2).rate = 0.0  # type: ignore[misc]
    assert isinstance(wilson_interval(1, 2), Proportion)
