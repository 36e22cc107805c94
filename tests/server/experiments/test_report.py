"""Reports from rows: who won which preference, and comparisons with the subject as the unit."""

from __future__ import annotations

import math

import pytest

from alignd.server.experiments.definitions import ArmSpec, ExperimentSpec
from alignd.server.experiments.report import build_report
from alignd.server.experiments.statistics import two_proportion_test, welch_test
from alignd.server.experiments.store import ExperimentRows
from alignd.v1 import alignd_pb2 as pb

SPEC = ExperimentSpec(
    "exp",
    "",
    (
        ArmSpec("base", 0.5, pb.GenerateRequest(strategy="sample")),
        ArmSpec("new", 0.5, pb.GenerateRequest(strategy="best_of_n")),
    ),
    "rpc",
)


def _request(arm, subject, score):
    return (arm, subject, {"r": score}, score, 0.1, 8)


def _comparison(report, metric):
    return next(c for c in report.comparisons if c.metric == metric)


def test_preferences_count_for_the_winning_arm_whichever_side_of_the_pair_it_is():
    rows = ExperimentRows(
        requests=[_request("base", "s1", 0.1), _request("new", "s2", 0.9)],
        # value 1: the row's request (first arm named) won; 0: the other request won.
        feedback=[
            ("base", "s1", "preference", 0.0, "new"),
            ("new", "s2", "preference", 1.0, "base"),
            ("new", "s2", "preference", 0.0, "base"),
            ("base", "s1", "preference", 1.0, "base"),
        ],
    )
    report = build_report(SPEC, rows)
    arms = {a.name: a for a in report.arms}
    assert (arms["new"].preference_wins.successes, arms["new"].preference_wins.trials) == (2, 3)
    assert (arms["base"].preference_wins.successes, arms["base"].preference_wins.trials) == (
        1,
        3,
    )  # same-arm pair skipped
    preference = _comparison(report, "preference")
    assert preference.test == "binomial_exact" and preference.difference == pytest.approx(2 / 3 - 0.5)


def test_comparisons_use_per_subject_means_not_requests():
    requests = (
        [_request("base", "b1", x) for x in (0.1, 0.2, 0.3, 0.4)]
        + [_request("base", "b2", 0.5)]
        + [_request("base", "b3", 0.2)]
        + [_request("new", "n1", x) for x in (0.6, 0.8)]
        + [_request("new", "n2", 0.4), _request("new", "n3", 0.9)]
    )
    report = build_report(SPEC, ExperimentRows(requests, []))
    expected = welch_test([0.7, 0.4, 0.9], [0.25, 0.5, 0.2])
    got = _comparison(report, "weighted_score")
    assert got.difference == pytest.approx(expected.difference) and got.p_value == pytest.approx(expected.p_value)
    # Per-arm figures stay over requests: the mean a recomputation from the rows gives.
    assert {a.name: a.weighted_score.count for a in report.arms} == {"base": 6, "new": 4}


def test_thumbs_use_the_proportion_test_only_when_subjects_are_independent_trials():
    requests = [_request("base", f"b{i}", 0.5) for i in range(4)] + [_request("new", f"n{i}", 0.5) for i in range(4)]
    one_each = [("base", f"b{i}", "thumbs", float(i < 1), None) for i in range(4)] + [
        ("new", f"n{i}", "thumbs", float(i < 3), None) for i in range(4)
    ]
    got = _comparison(build_report(SPEC, ExperimentRows(requests, one_each)), "thumbs_up")
    assert got.test == "two_proportion_z" and got.p_value == pytest.approx(two_proportion_test(3, 4, 1, 4).p_value)
    repeated = [*one_each, ("new", "n0", "thumbs", 1.0, None)]
    assert _comparison(build_report(SPEC, ExperimentRows(requests, repeated)), "thumbs_up").test == "welch_t"


def test_values_that_are_not_finite_are_left_out():
    requests = [_request("base", "b1", 0.2), _request("base", "b2", math.nan), _request("new", "n1", 0.4)]
    report = build_report(SPEC, ExperimentRows(requests, []))
    base = next(a for a in report.arms if a.name == "base")
    assert base.requests == 2 and base.weighted_score.count == 1 and base.weighted_score.mean == pytest.approx(0.2)
