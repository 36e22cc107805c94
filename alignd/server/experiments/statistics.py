"""Statistics for A/B experiment reports, in plain numpy and scipy.stats.

Each function takes raw counts or samples and returns a frozen dataclass a report can render
as is. Means get a Student t interval and rates a Wilson score interval; a difference of means
is tested by Welch's unequal-variance t-test, a difference of rates by the pooled
two-proportion z-test with Newcombe's hybrid score interval, and head-to-head win rates by the
exact two-sided binomial test against 0.5. Small or degenerate inputs give NaN fields rather
than exceptions, so a report on an experiment that has only just started still renders. NaN
values in the samples are not dropped: they propagate into the result.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
NAN = float("nan")


@dataclass(frozen=True)
class MeanInterval:
    mean: float
    low: float
    high: float
    count: int


@dataclass(frozen=True)
class Proportion:
    successes: int
    trials: int
    rate: float
    low: float
    high: float


@dataclass(frozen=True)
class Difference:
    """An arm minus a baseline: estimate, interval (95% unless asked otherwise), two-sided
    p-value, and the test's name."""

    difference: float
    low: float
    high: float
    p_value: float
    test: str


def _as_array(values: Sequence[float] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).ravel()


def _quantile(confidence: float, dof: float | None = None) -> float:
    """The upper (1 + confidence) / 2 quantile: of Student t with `dof` degrees of freedom, or
    of the standard normal when `dof` is None."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    level = 0.5 + confidence / 2.0
    return float(stats.norm.ppf(level) if dof is None else stats.t.ppf(level, dof))


def _check_counts(successes: int, trials: int) -> None:
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes} of {trials}")


def mean_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> MeanInterval:
    """Sample mean with the Student t interval mean ± t_{n-1} · s / √n (s with ddof=1).

    No values: everything NaN. One value: the mean is that value, the interval NaN (there is
    no spread to estimate). Zero variance: the interval collapses onto the mean."""
    x = _as_array(values)
    _quantile(confidence)  # reject a bad level even when there is nothing to compute
    if x.size == 0:
        return MeanInterval(NAN, NAN, NAN, 0)
    mean = float(x.mean())
    if x.size == 1:
        return MeanInterval(mean, NAN, NAN, 1)
    half = _quantile(confidence, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return MeanInterval(mean, mean - half, mean + half, int(x.size))


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> Proportion:
    """Rate with the Wilson score interval
    (p + z²/2n ± z·√(p(1-p)/n + z²/4n²)) / (1 + z²/n).

    No trials: the rate is NaN and the interval is all of [0, 1]."""
    _check_counts(successes, trials)
    z = _quantile(confidence)
    if trials == 0:
        return Proportion(successes, trials, NAN, 0.0, 1.0)
    n, p = float(trials), successes / trials
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    # At 0/n and n/n the bound is exactly 0 or 1; the formula leaves rounding noise there.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Proportion(successes, trials, p, low, high)


def welch_test(
    arm: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE
) -> Difference:
    """mean(arm) - mean(baseline) by Welch's t-test.

    se² = s₁²/n₁ + s₂²/n₂; Welch–Satterthwaite dof = se⁴ / Σ (sᵢ²/nᵢ)² / (nᵢ - 1); interval
    d ± t_dof · se; p = 2 · P(T_dof > |d| / se). Fewer than two values on either side: NaN.
    Both sides constant: the interval is d itself and p is 1 if the means agree, else 0
    (t would be 0/0 or ±∞)."""
    a, b = _as_array(arm), _as_array(baseline)
    _quantile(confidence)
    if a.size < 2 or b.size < 2:
        return Difference(NAN, NAN, NAN, NAN, "welch_t")
    diff = float(a.mean() - b.mean())
    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    if va == 0.0 and vb == 0.0:
        return Difference(diff, diff, diff, 1.0 if diff == 0.0 else 0.0, "welch_t")
    se = math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va * va / (a.size - 1) + vb * vb / (b.size - 1))
    half = _quantile(confidence, dof) * se
    p = float(2.0 * stats.t.sf(abs(diff) / se, dof))
    return Difference(diff, diff - half, diff + half, p, "welch_t")


def two_proportion_test(
    successes_arm: int,
    trials_arm: int,
    successes_baseline: int,
    trials_baseline: int,
    confidence: float = CONFIDENCE,
) -> Difference:
    """rate(arm) - rate(baseline).

    p-value: pooled z-test, z = d / √(p̄(1-p̄)(1/n₁ + 1/n₂)) with p̄ the pooled rate.
    Interval: Newcombe's hybrid score interval (1998, method 10), built from the two Wilson
    intervals (l₁, u₁), (l₂, u₂): [d - √((p₁-l₁)² + (u₂-p₂)²), d + √((u₁-p₁)² + (p₂-l₂)²)].
    No trials on either side: NaN. Pooled rate 0 or 1: no evidence of a difference, p = 1."""
    one = wilson_interval(successes_arm, trials_arm, confidence)
    two = wilson_interval(successes_baseline, trials_baseline, confidence)
    if trials_arm == 0 or trials_baseline == 0:
        return Difference(NAN, NAN, NAN, NAN, "two_proportion_z")
    diff = one.rate - two.rate
    low = diff - math.hypot(one.rate - one.low, two.high - two.rate)
    high = diff + math.hypot(one.high - one.rate, two.rate - two.low)
    pooled = (successes_arm + successes_baseline) / (trials_arm + trials_baseline)
    if pooled in (0.0, 1.0):
        p = 1.0  # both arms all-fail or all-succeed: the z statistic would be 0/0
    else:
        se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / trials_arm + 1.0 / trials_baseline))
        p = float(2.0 * stats.norm.sf(abs(diff) / se))
    return Difference(diff, low, high, p, "two_proportion_z")


def binomial_test(wins: int, trials: int, confidence: float = CONFIDENCE) -> Difference:
    """Head-to-head preferences: win rate minus 0.5.

    The interval is the Wilson interval of the win rate shifted by -0.5; p is the exact
    two-sided binomial test against 0.5 (scipy.stats.binomtest). No trials: NaN."""
    rate = wilson_interval(wins, trials, confidence)
    if trials == 0:
        return Difference(NAN, NAN, NAN, NAN, "binomial_exact")
    p = float(stats.binomtest(wins, trials, 0.5, alternative="two-sided").pvalue)
    return Difference(rate.rate - 0.5, rate.low - 0.5, rate.high - 0.5, p, "binomial_exact")


def percentile(values: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile (q in [0, 100]) by linear interpolation between order statistics.
    No values: NaN."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must lie in [0, 100], got {q}")
    x = _as_array(values)
    return NAN if x.size == 0 else float(np.percentile(x, q, method="linear"))
