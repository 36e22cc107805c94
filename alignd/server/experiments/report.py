"""An experiment's report from its stored rows: per-arm figures and each arm against the baseline.

Per arm, over its requests: means with 95% Student t intervals, rates with 95% Wilson intervals.
Comparisons against the first arm treat the *subject* as the unit, since subjects (not requests)
are what is randomised and one subject's requests are correlated: Welch's t-test on per-subject
means of the weighted score, each reward and the rating; for thumbs-up rates the two-proportion
z-test when each subject gave at most one thumbs, else Welch's test on per-subject up-rates; the
exact binomial test for head-to-head preferences. Values that are not finite are left out. p-values
are two-sided and not corrected for the number of comparisons.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from alignd.server.experiments.definitions import ExperimentSpec
from alignd.server.experiments.statistics import (
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
from alignd.server.experiments.store import ExperimentRows
from alignd.v1 import alignd_pb2 as pb

SIGNIFICANCE = 0.05


class _ArmData:
    """One arm's rows, column by column, and the same grouped by subject."""

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
        # metric -> subject -> values: the unit of the comparisons.
        self.by_subject: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def add(self, metric: str, column: list[float], subject: str, value: float) -> None:
        if math.isfinite(value):
            column.append(value)
            self.by_subject[metric][subject].append(value)

    def subject_means(self, metric: str) -> list[float]:
        return [float(np.mean(v)) for v in self.by_subject[metric].values()]

    def most_per_subject(self, metric: str) -> int:
        return max((len(v) for v in self.by_subject[metric].values()), default=0)


def _collect(rows: ExperimentRows, arm_names: Sequence[str]) -> dict[str, _ArmData]:
    arms = {name: _ArmData() for name in arm_names}
    for arm, subject, rewards, weighted, latency, tokens in rows.requests:
        data = arms.setdefault(arm, _ArmData())  # an arm since removed from the definition still reports
        data.subjects.add(subject)
        for objective, value in rewards.items():
            data.add(f"reward[{objective}]", data.rewards[objective], subject, value)
        data.add("weighted_score", data.weighted, subject, weighted)
        data.latency.append(latency)
        data.tokens.append(tokens)
    for arm, subject, kind, value, other_arm in rows.feedback:
        data = arms.setdefault(arm, _ArmData())
        if kind == "thumbs":
            data.add("thumbs_up", data.thumbs, subject, value)
        elif kind == "rating":
            data.add("rating", data.ratings, subject, value)
        elif kind == "preference" and other_arm is not None and other_arm != arm:
            arms.setdefault(other_arm, _ArmData())
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
    return pb.RateEstimate(
        successes=proportion.successes,
        trials=proportion.trials,
        rate=proportion.rate,
        low=proportion.low,
        high=proportion.high,
    )


def _comparison(arm: str, baseline: str, metric: str, result: Difference) -> pb.ArmComparison:
    return pb.ArmComparison(
        arm=arm,
        baseline=baseline,
        metric=metric,
        test=result.test,
        difference=result.difference,
        low=result.low,
        high=result.high,
        p_value=result.p_value,
        significant=bool(not math.isnan(result.p_value) and result.p_value < SIGNIFICANCE),
    )


def build_report(experiment: ExperimentSpec, rows: ExperimentRows) -> pb.ExperimentReport:
    arms = _collect(rows, [a.name for a in experiment.arms])
    objectives = sorted({o for data in arms.values() for o in data.rewards})
    report = pb.ExperimentReport(
        experiment=experiment.to_message(),
        requests=len(rows.requests),
        feedback=len(rows.feedback),
        generated_unix=time.time(),
    )
    for name, data in arms.items():
        spec = experiment.arm(name)
        ups = int(sum(data.thumbs))
        report.arms.append(
            pb.ArmReport(
                name=name,
                strategy=spec.strategy if spec else "(no longer in the experiment)",
                split=spec.split if spec else 0.0,
                requests=len(data.latency),
                subjects=len(data.subjects),
                rewards={o: _mean(mean_interval(data.rewards[o])) for o in objectives},
                weighted_score=_mean(mean_interval(data.weighted)),
                latency_p50_seconds=percentile(data.latency, 50),
                latency_p95_seconds=percentile(data.latency, 95),
                generated_tokens=_mean(mean_interval(data.tokens)),
                thumbs_up=_rate(wilson_interval(ups, len(data.thumbs))),
                rating=_mean(mean_interval(data.ratings)),
                preference_wins=_rate(wilson_interval(data.preference_wins, data.preference_trials)),
            )
        )
    baseline_name = experiment.arms[0].name
    base = arms[baseline_name]
    for name, data in arms.items():
        if name == baseline_name:
            continue
        compare = report.comparisons.append
        metrics = ["weighted_score", *(f"reward[{o}]" for o in objectives)]
        # Feedback comparisons only where some feedback exists: a wall of NaN rows helps nobody.
        if data.ratings or base.ratings:
            metrics.append("rating")
        for metric in metrics:
            compare(
                _comparison(
                    name, baseline_name, metric, welch_test(data.subject_means(metric), base.subject_means(metric))
                )
            )
        if data.thumbs or base.thumbs:
            if max(data.most_per_subject("thumbs_up"), base.most_per_subject("thumbs_up")) <= 1:
                result = two_proportion_test(
                    int(sum(data.thumbs)), len(data.thumbs), int(sum(base.thumbs)), len(base.thumbs)
                )
            else:  # several thumbs per subject are not independent trials
                result = welch_test(data.subject_means("thumbs_up"), base.subject_means("thumbs_up"))
            compare(_comparison(name, baseline_name, "thumbs_up", result))
        wins, trials = data.against.get(baseline_name, (0, 0))
        if trials:
            compare(_comparison(name, baseline_name, "preference", binomial_test(wins, trials)))
    return report
