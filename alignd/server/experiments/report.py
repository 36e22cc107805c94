"""An experiment's report from its stored rows: per-arm figures and each arm against the baseline.

Means carry 95% Student t intervals, rates 95% Wilson intervals. Comparisons against the first
arm: Welch's t-test for weighted score, each reward and ratings; the two-proportion z-test for
thumbs-up rates; the exact binomial test for head-to-head preferences. p-values are two-sided and
not corrected for the number of comparisons (say so when reading many of them).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from alignd.server.experiments.definitions import ExperimentSpec
from alignd.server.experiments.statistics import (
    Difference, MeanInterval, Proportion, binomial_test, mean_interval, percentile, two_proportion_test, welch_test,
    wilson_interval,
)
from alignd.server.experiments.store import ExperimentRows
from alignd.v1 import alignd_pb2 as pb

SIGNIFICANCE = 0.05


class _ArmData:
    """One arm's rows, column by column."""

    def __init__(self) -> None:
        self.subjects: set[str] = set()
        self.rewards: dict[str, list[float]] = defaultdict(list)
        self.weighted: list[float] = []
        self.latency: list[float] = []
        self.tokens: list[float] = []
        self.thumbs: list[float] = []
        self.ratings: list[float] = []
        self.preference_wins = 0
        self.preference_trials = 0
        # Preferences against each other arm: other arm -> [wins, trials].
        self.against: dict[str, list[int]] = defaultdict(lambda: [0, 0])


def _collect(rows: ExperimentRows, arm_names: Sequence[str]) -> dict[str, _ArmData]:
    arms = {name: _ArmData() for name in arm_names}
    for arm, subject, rewards, weighted, latency, tokens in rows.requests:
        data = arms.setdefault(arm, _ArmData())  # an arm since removed from the definition still reports
        data.subjects.add(subject)
        for objective, value in rewards.items():
            data.rewards[objective].append(value)
        data.weighted.append(weighted)
        data.latency.append(latency)
        data.tokens.append(tokens)
    for arm, kind, value, other_arm in rows.feedback:
        if kind == "thumbs":
            arms[arm].thumbs.append(value)
        elif kind == "rating":
            arms[arm].ratings.append(value)
        elif kind == "preference" and other_arm is not None and other_arm != arm:
            # `value` is 1 when the row's request (in `arm`) won against the other one.
            for this, that, won in ((arm, other_arm, value == 1.0), (other_arm, arm, value != 1.0)):
                arms[this].preference_trials += 1
                arms[this].preference_wins += int(won)
                arms[this].against[that][0] += int(won)
                arms[this].against[that][1] += 1
    return arms


def _mean(interval: MeanInterval) -> pb.MeanEstimate:
    return pb.MeanEstimate(mean=interval.mean, low=interval.low, high=interval.high, count=interval.count)


def _rate(proportion: Proportion) -> pb.RateEstimate:
    return pb.RateEstimate(successes=proportion.successes, trials=proportion.trials, rate=proportion.rate,
                           low=proportion.low, high=proportion.high)


def _comparison(arm: str, baseline: str, metric: str, result: Difference) -> pb.ArmComparison:
    return pb.ArmComparison(
        arm=arm, baseline=baseline, metric=metric, test=result.test, difference=result.difference,
        low=result.low, high=result.high, p_value=result.p_value,
        significant=bool(not math.isnan(result.p_value) and result.p_value < SIGNIFICANCE),
    )


def build_report(experiment: ExperimentSpec, rows: ExperimentRows) -> pb.ExperimentReport:
    arms = _collect(rows, [a.name for a in experiment.arms])
    objectives = sorted({o for data in arms.values() for o in data.rewards})
    report = pb.ExperimentReport(experiment=experiment.to_message(), requests=len(rows.requests),
                                 feedback=len(rows.feedback), generated_unix=time.time())
    for name, data in arms.items():
        spec = experiment.arm(name)
        ups = int(np.sum(data.thumbs)) if data.thumbs else 0
        report.arms.append(pb.ArmReport(
            name=name, strategy=spec.strategy if spec else "(no longer in the experiment)",
            split=spec.split if spec else 0.0, requests=len(data.weighted), subjects=len(data.subjects),
            rewards={o: _mean(mean_interval(data.rewards[o])) for o in objectives},
            weighted_score=_mean(mean_interval(data.weighted)),
            latency_p50_seconds=percentile(data.latency, 50), latency_p95_seconds=percentile(data.latency, 95),
            generated_tokens=_mean(mean_interval(data.tokens)),
            thumbs_up=_rate(wilson_interval(ups, len(data.thumbs))),
            rating=_mean(mean_interval(data.ratings)),
            preference_wins=_rate(wilson_interval(data.preference_wins, data.preference_trials)),
        ))
    baseline_name = experiment.arms[0].name
    base = arms[baseline_name]
    for name, data in arms.items():
        if name == baseline_name:
            continue
        compare = report.comparisons.append
        compare(_comparison(name, baseline_name, "weighted_score", welch_test(data.weighted, base.weighted)))
        for objective in objectives:
            compare(_comparison(name, baseline_name, f"reward[{objective}]",
                                welch_test(data.rewards[objective], base.rewards[objective])))
        # Feedback comparisons only where some feedback exists: a wall of NaN rows helps nobody.
        if data.ratings or base.ratings:
            compare(_comparison(name, baseline_name, "rating", welch_test(data.ratings, base.ratings)))
        if data.thumbs or base.thumbs:
            compare(_comparison(name, baseline_name, "thumbs_up", two_proportion_test(
                int(np.sum(data.thumbs)) if data.thumbs else 0, len(data.thumbs),
                int(np.sum(base.thumbs)) if base.thumbs else 0, len(base.thumbs))))
        wins, trials = data.against.get(baseline_name, (0, 0))
        if trials:
            compare(_comparison(name, baseline_name, "preference", binomial_test(wins, trials)))
    return report
