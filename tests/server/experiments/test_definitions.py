"""Experiment definitions: assignment (deterministic, matching the split), validation, and how a
request is merged with its arm."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from alignd.errors import InvalidArgument
from alignd.server.experiments.definitions import (
    ArmSpec,
    ExperimentSpec,
    assign,
    assignment_point,
    experiment_from_config,
    serve_by_arm,
    validate_experiment,
)
from alignd.v1 import alignd_pb2 as pb


def _spec(splits: list[float]) -> ExperimentSpec:
    arms = tuple(ArmSpec(f"arm{i}", s, pb.GenerateRequest(strategy="sample")) for i, s in enumerate(splits))
    return ExperimentSpec("exp", "", arms, "config")


def test_assignment_matches_the_split_within_sampling_error():
    splits = [0.2, 0.3, 0.0, 0.5]
    spec = _spec(splits)
    subjects = 20_000
    counts = {a.name: 0 for a in spec.arms}
    for i in range(subjects):
        counts[spec.arm_for(f"user-{i}").name] += 1
    for arm, share in zip(spec.arms, splits):
        sigma = math.sqrt(subjects * share * (1 - share))
        assert abs(counts[arm.name] - subjects * share) <= 4 * sigma + 1e-9, (arm.name, counts)
    assert counts["arm2"] == 0  # a zero split receives nobody


def test_assignment_differs_between_experiments():
    # Independent hashes per experiment: a subject's arm in one does not fix its arm in another.
    same = sum((assignment_point("a", f"u{i}") < 0.5) == (assignment_point("b", f"u{i}") < 0.5) for i in range(2000))
    assert 850 < same < 1150


def test_assignment_is_the_same_in_another_process_with_another_hash_seed():
    subjects = [f"user-{i}" for i in range(50)]
    here = [round(assignment_point("exp", s), 12) for s in subjects]
    code = (
        "from alignd.server.experiments.definitions import assignment_point as p\n"
        f"print([round(p('exp', s), 12) for s in {subjects!r}])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert eval(out.stdout) == here


def test_points_on_the_boundaries_go_to_an_open_arm():
    spec = _spec([0.5, 0.5, 0.0])
    assert assign(spec.arms, 0.0).name == "arm0"
    assert assign(spec.arms, 0.5).name == "arm1"
    assert assign(spec.arms, 1.0 - 1e-16).name == "arm1"  # never the closed arm2, even after rounding


def _accept_all(request: pb.GenerateRequest) -> None:
    return None


def _experiment(*arms: pb.Arm, name: str = "exp") -> pb.Experiment:
    return pb.Experiment(name=name, arms=list(arms))


def _arm(name: str, split: float, **request) -> pb.Arm:
    return pb.Arm(name=name, split=split, request=pb.GenerateRequest(**request))


@pytest.mark.parametrize(
    "message, field",
    [
        (_experiment(_arm("a", 0.5), _arm("b", 0.5), name="has space"), "name"),
        (_experiment(_arm("a", 1.0)), "arms"),
        (_experiment(_arm("a", 0.5), _arm("a", 0.5)), "arms[1].name"),
        (_experiment(_arm("a", 0.5), _arm("", 0.5)), "arms[1].name"),
        (_experiment(_arm("a", float("nan")), _arm("b", 0.5)), "arms[0].split"),
        (_experiment(_arm("a", -0.1), _arm("b", 1.1)), "arms[0].split"),
        (_experiment(_arm("a", 0.4), _arm("b", 0.4)), "arms"),
        (_experiment(_arm("a", 0.5, prompt="fixed"), _arm("b", 0.5)), "arms[0].request.prompt"),
        (_experiment(_arm("a", 0.5), _arm("b", 0.5, experiment="other")), "arms[1].request.experiment"),
    ],
)
def test_invalid_definitions_name_the_field(message, field):
    with pytest.raises(InvalidArgument) as error:
        validate_experiment(message, _accept_all, "rpc")
    assert error.value.field == field


def test_an_arm_check_failure_names_the_arm_and_its_field():
    def refuse_n(request: pb.GenerateRequest) -> None:
        if request.HasField("best_of_n") and request.best_of_n.n == 0:
            raise InvalidArgument("best_of_n.n", "must be >= 1")

    message = _experiment(_arm("a", 0.5), _arm("bon", 0.5, best_of_n=pb.BestOfNParams(n=0)))
    with pytest.raises(InvalidArgument) as error:
        validate_experiment(message, refuse_n, "rpc")
    assert error.value.field == "arms[1].request.best_of_n.n" and "'bon'" in str(error.value)


def test_config_tables_become_the_same_message_as_the_rpc_form():
    table = {
        "name": "exp",
        "description": "d",
        "arms": [
            {"name": "a", "split": 0.5, "strategy": "sample", "sampling": {"temperature": 0.3}},
            {
                "name": "b",
                "split": 0.5,
                "strategy": "best_of_n",
                "params": {"n": 8},
                "weights": {"x": 1.0},
                "system_prompt": "Be brief.",
            },
        ],
    }
    message = experiment_from_config(table)
    assert message.arms[0].request.sampling.temperature == pytest.approx(0.3)
    assert message.arms[1].request.best_of_n.n == 8 and dict(message.arms[1].request.weights) == {"x": 1.0}
    assert message.arms[1].request.system_prompt == "Be brief."


@pytest.mark.parametrize(
    "table, field",
    [
        ({"name": "e", "arms": [{"name": "a", "split": 1, "colour": "red"}]}, "arms[0].colour"),
        ({"name": "e", "arms": [{"name": "a", "split": "half"}]}, "arms[0].split"),
        (
            {"name": "e", "arms": [{"name": "a", "split": 1, "strategy": "sample", "params": {"n": 2}}]},
            "arms[0].sample.n",
        ),
        (
            {"name": "e", "arms": [{"name": "a", "split": 1, "strategy": "best_of_n", "params": {"m": 2}}]},
            "arms[0].best_of_n.m",
        ),
        ({"name": "e", "arms": "x"}, "arms"),
        ({"name": "e", "owner": "me"}, "owner"),
    ],
)
def test_config_mistakes_name_the_setting_and_arm(table, field):
    with pytest.raises(InvalidArgument) as error:
        experiment_from_config(table)
    assert error.value.field == field


def _served(arm_request: pb.GenerateRequest, request: pb.GenerateRequest) -> pb.GenerateRequest:
    spec = ExperimentSpec("exp", "", (ArmSpec("arm", 1.0, arm_request),), "rpc")
    return serve_by_arm(spec, spec.arms[0], request)


def test_request_fills_what_the_arm_leaves_unset():
    arm = pb.GenerateRequest(
        strategy="best_of_n", best_of_n=pb.BestOfNParams(n=4), sampling=pb.SamplingParams(temperature=0.7)
    )
    merged = _served(
        arm,
        pb.GenerateRequest(
            prompt="hi", weights={"x": 1.0}, request_id="r1", sampling=pb.SamplingParams(max_tokens=5, stop=["\n"])
        ),
    )
    assert merged.prompt == "hi" and merged.request_id == "r1" and merged.best_of_n.n == 4
    assert merged.sampling.temperature == pytest.approx(0.7) and merged.sampling.max_tokens == 5
    assert list(merged.sampling.stop) == ["\n"] and dict(merged.weights) == {"x": 1.0}


@pytest.mark.parametrize(
    "request_fields, field",
    [
        (dict(strategy="sample"), "strategy"),
        (dict(best_of_n=pb.BestOfNParams(n=2)), "strategy"),
        (dict(weights={"x": 1.0}), "weights"),
        (dict(system_prompt="other"), "system_prompt"),
        (dict(sampling=pb.SamplingParams(temperature=0.1)), "sampling.temperature"),
        (dict(sampling=pb.SamplingParams(stop=["."])), "sampling.stop"),
    ],
)
def test_request_cannot_override_what_the_arm_sets(request_fields, field):
    arm = pb.GenerateRequest(
        strategy="sample",
        weights={"x": 1.0},
        system_prompt="arm's",
        sampling=pb.SamplingParams(temperature=0.7, stop=["!"]),
    )
    with pytest.raises(InvalidArgument) as error:
        _served(arm, pb.GenerateRequest(prompt="hi", **request_fields))
    assert error.value.field == field
