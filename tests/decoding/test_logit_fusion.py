"""multi_objective's logit_fusion mode on the tiny model with per-row preference vectors."""

from __future__ import annotations

import pytest

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.params import Limits, validate_params
from alignd.decoding.weights import parse_weights
from alignd.errors import FailedPrecondition, InvalidArgument
from tests.backends.test_row_steering import steered  # noqa: F401 (the fixture)

PROMPT = ChatPrompt("how do I bake bread")


def params(**values):
    return validate_params("multi_objective", get_strategy("multi_objective").Params, values, Limits())


def run(policy, scorer, values, sampling, weights=None):
    request = DecodeRequest(PROMPT, sampling, parse_weights(weights or {}, scorer.objective_names))
    return get_strategy(values.get("strategy", "multi_objective")).decode(
        request, params(**values) if values else get_strategy("sample").Params(), policy, scorer
    )


def sample(policy, scorer, sampling):
    request = DecodeRequest(PROMPT, sampling, parse_weights({}, scorer.objective_names))
    return get_strategy("sample").decode(request, get_strategy("sample").Params(), policy, scorer)


SAMPLING = SamplingParams(temperature=1.0, max_tokens=16, seed=21)


@pytest.mark.parametrize("fused", [{"base": 1.0}, {"base": 1.0, "warm": 0.0}])
def test_weights_on_the_base_alone_reproduce_the_base_policy_token_for_token(steered, letter_scorer, fused):  # noqa: F811
    policy = steered[0]
    result = run(policy, letter_scorer, {"mode": "logit_fusion", "policy_weights": fused}, SAMPLING)
    assert result.token_ids == sample(policy, letter_scorer, SAMPLING).token_ids
    assert result.kl[0].nats == pytest.approx(0.0, abs=1e-6)
    assert result.details["policy_weight[base]"] == 1.0


def test_weight_on_one_vector_alone_is_that_vectors_policy(steered, letter_scorer):  # noqa: F811
    policy = steered[0]
    result = run(policy, letter_scorer, {"mode": "logit_fusion", "policy_weights": {"short": 2.0}}, SAMPLING)
    steered_sampling = SamplingParams(temperature=1.0, max_tokens=16, seed=21, steering=(("short", 1.0),))
    assert result.token_ids == sample(policy, letter_scorer, steered_sampling).token_ids
    assert result.token_ids != sample(policy, letter_scorer, SAMPLING).token_ids
    assert result.kl[0].nats > 0.01  # measured against the base policy


def test_a_mixture_differs_from_each_policy_and_is_reproducible(steered, letter_scorer):  # noqa: F811
    policy = steered[0]
    mixed = {"mode": "logit_fusion", "policy_weights": {"base": 0.4, "warm": 0.3, "short": 0.3}}
    first, again = (run(policy, letter_scorer, mixed, SAMPLING) for _ in range(2))
    assert first.token_ids == again.token_ids
    assert first.kl[0].nats > 0
    assert first.token_ids != sample(policy, letter_scorer, SAMPLING).token_ids
    assert first.details == {"policy_weight[base]": 0.4, "policy_weight[warm]": 0.3, "policy_weight[short]": 0.3}


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(temperature=0.0, max_tokens=12),
        SamplingParams(temperature=0.8, top_p=0.7, top_k=20, max_tokens=12, seed=5),
    ],
)
def test_base_alone_reproduces_greedy_and_truncated_sampling_too(steered, letter_scorer, sampling):  # noqa: F811
    policy = steered[0]
    result = run(policy, letter_scorer, {"mode": "logit_fusion", "policy_weights": {"base": 1.0}}, sampling)
    assert result.token_ids == sample(policy, letter_scorer, sampling).token_ids


def test_default_policy_weights_follow_the_request_weights_on_the_vectors_objectives(steered, letter_scorer):  # noqa: F811
    from alignd.decoding.logit_fusion import fusion_weights

    policy = steered[0]
    names = letter_scorer.objective_names
    weights = parse_weights({names[0]: 1.0}, names)
    # The tiny vectors steer objectives named "warm" and "short", which this scorer lacks.
    assert fusion_weights({}, weights, policy.vectors, "f") == {"base": 1.0}


def test_fusion_is_refused_where_it_cannot_run(steered, tiny_policy, letter_scorer):  # noqa: F811
    with pytest.raises(FailedPrecondition, match="row_steering"):
        run(tiny_policy, letter_scorer, {"mode": "logit_fusion"}, SAMPLING)
    with pytest.raises(InvalidArgument, match=r"policy_weights\[kind\]"):
        run(steered[0], letter_scorer, {"mode": "logit_fusion", "policy_weights": {"kind": 1.0}}, SAMPLING)
    with pytest.raises(InvalidArgument, match="preference_vectors"):
        run(steered[0], letter_scorer, {"mode": "logit_fusion"}, SamplingParams(steering=(("warm", 1.0),)))
    with pytest.raises(InvalidArgument, match="policy_weights"):
        params(mode="logit_fusion", policy_weights={"base": -1.0})


def test_weights_near_the_float_maximum_still_fuse(steered):  # noqa: F811
    from alignd.decoding.logit_fusion import fusion_weights

    policy = steered[0]
    weights = parse_weights({}, ("warm", "short"))
    huge = {"base": 1e308, "warm": 1e308, "short": 0.0}
    assert fusion_weights(huge, weights, policy.vectors, "f") == {"base": 0.5, "warm": 0.5}


@pytest.mark.parametrize(
    ("policy_weights", "weights", "rows"),
    [
        ({}, {"warm": 0.5, "other": 0.5}, 2),  # base and warm; short's objective has no weight
        ({}, {"warm": 0.5, "short": 0.5}, 3),
        ({}, {"other": 1.0}, 1),
        ({"short": 2.0}, {}, 2),
        ({"base": 1.0, "warm": 0.0}, {}, 1),
    ],
)
def test_the_server_holds_one_row_per_fused_policy(steered, policy_weights, weights, rows):  # noqa: F811
    """Rows count against the memory budget and quotas before decoding: the defaults are
    resolved from the request's weights and the policy's vectors when the request is parsed."""
    from alignd.server.convert import parse_generate
    from alignd.v1 import alignd_pb2 as pb

    policy = steered[0]
    request = pb.GenerateRequest(prompt="hi", strategy="multi_objective", weights=weights)
    request.multi_objective.mode = "logit_fusion"
    request.multi_objective.policy_weights.update(policy_weights)
    objectives = ("warm", "short", "other")
    parsed = parse_generate(request, objectives, {}, SamplingParams(), Limits(), vectors=policy.vectors)
    assert parsed.strategy.rows(parsed.params) == rows
    fused = [name for name, w in parsed.params.policy_weights.items() if w > 0]
    assert len(fused) + ("base" not in fused) == rows
