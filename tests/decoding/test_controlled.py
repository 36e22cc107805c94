"""Controlled decoding on the tiny model with value heads built in-process."""

import math

import numpy as np
import pytest
import torch

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.params import Limits, validate_params
from alignd.decoding.weights import parse_weights
from alignd.errors import FailedPrecondition, InvalidArgument
from alignd.rewardmodels.guided_scorer import ValueGuidedScorer
from alignd.rewardmodels.heads import Head, HeadMetadata

SAMPLING = SamplingParams(temperature=1.0, max_tokens=20, seed=13)


def value_heads(hidden_size: int, objectives=("e_count", "o_count"), seed: int = 0) -> Head:
    torch.manual_seed(seed)
    head = Head(
        HeadMetadata("value", "tiny", hidden_size, list(objectives), [1.0] * len(objectives), [2.0] * len(objectives))
    )
    return head.eval()


@pytest.fixture
def guided(tiny_policy, letter_scorer):
    return ValueGuidedScorer(letter_scorer, value_heads(tiny_policy.hidden_size))


def run(policy, scorer, weights, params=None, sampling=SAMPLING, events=None):
    strategy = get_strategy("controlled")
    request = DecodeRequest(
        ChatPrompt("tell me about bread"),
        sampling,
        parse_weights(weights, scorer.objective_names),
        on_progress=events.append if events is not None else None,
    )
    return strategy.decode(request, params or strategy.Params(), policy, scorer)


def test_blockwise_keeps_the_block_with_the_highest_weighted_value(tiny_policy, guided):
    events = []
    params = get_strategy("controlled").Params(num_candidates=4, block_tokens=5, value_source="heads")
    result = run(tiny_policy, guided, {"e_count": 1.0}, params, events=events)
    blocks = [e for e in events if e.phase == "block"]
    assert 1 <= len(blocks) <= 4
    for event in blocks:
        assert len(event.candidates) == 4 and sum(c.selected for c in event.candidates) == 1
        best = max(event.candidates, key=lambda c: c.weighted_score)
        assert best.selected
        # The value estimates are the heads' predictions on the objective's scale; the
        # objective with zero weight is not estimated.
        assert np.isfinite(best.rewards[0]) and np.isnan(best.rewards[1])
    assert result.token_ids == [t for e in blocks for c in e.candidates if c.selected for t in c.completion.token_ids]


def test_blockwise_kl_is_blocks_times_the_best_of_k_bound(tiny_policy, guided):
    params = get_strategy("controlled").Params(num_candidates=4, block_tokens=5)
    events = []
    result = run(tiny_policy, guided, {"o_count": 1.0}, params, events=events)
    blocks = sum(e.phase == "block" for e in events)
    kl = {k.name: k for k in result.kl}
    assert kl["blockwise_bound"].kind == "upper_bound"
    assert kl["blockwise_bound"].nats == pytest.approx(blocks * (math.log(4) - 3 / 4))
    assert 0 <= kl["blockwise_estimate"].nats <= kl["blockwise_bound"].nats + 1e-9
    assert result.rewards == {"e_count": result.text.count("e"), "o_count": result.text.count("o")}


def test_blockwise_reuses_the_prefix_cache(tiny_policy, guided):
    params = get_strategy("controlled").Params(num_candidates=3, block_tokens=4)
    result = run(tiny_policy, guided, {"e_count": 1.0}, params)
    # Prompt once plus at most the candidate tokens themselves: no prefix is encoded twice.
    assert result.usage.lm_forward_tokens <= result.usage.prompt_tokens + result.usage.generated_tokens


def test_tokenwise_with_large_strength_follows_the_value_argmax(tiny_policy, guided):
    strategy = get_strategy("controlled")
    events = []
    params = strategy.Params(mode="tokenwise", strength=1e4, token_candidates=5)
    result = run(
        tiny_policy, guided, {"e_count": 1.0}, params, SamplingParams(temperature=1.0, max_tokens=6, seed=1), events
    )
    steps = [e for e in events if e.phase == "token"]
    assert len(steps) == len(result.token_ids)
    for event in steps:
        assert max(event.candidates, key=lambda c: c.weighted_score).selected
    (kl,) = result.kl
    # A strong tilt moves far from pi_ref: the estimate is clearly positive.
    assert kl.kind == "estimate" and kl.nats > 0.1


def test_tokenwise_with_tiny_strength_stays_close_to_pi_ref(tiny_policy, guided):
    # top_k above the vocabulary size keeps pi_ref's whole support: with lambda ~ 0 the tilted
    # distribution is pi_ref itself and the KL estimate vanishes.
    params = get_strategy("controlled").Params(mode="tokenwise", strength=1e-6, token_candidates=1000)
    result = run(tiny_policy, guided, {"e_count": 1.0}, params, SamplingParams(temperature=1.0, max_tokens=4, seed=1))
    assert result.kl[0].nats < 1e-4
    truncated = run(
        tiny_policy,
        guided,
        {"e_count": 1.0},
        get_strategy("controlled").Params(mode="tokenwise", strength=1e-6, token_candidates=5),
        SamplingParams(temperature=1.0, max_tokens=4, seed=1),
    )
    assert truncated.kl[0].nats > result.kl[0].nats


def test_heads_source_without_a_head_for_a_weighted_objective_is_failed_precondition(tiny_policy, letter_scorer):
    partial_heads = ValueGuidedScorer(letter_scorer, value_heads(tiny_policy.hidden_size, ("e_count",)))
    heads = get_strategy("controlled").Params(value_source="heads")
    with pytest.raises(FailedPrecondition, match=r"^controlled.value_source: 'heads' cannot estimate 'o_count'"):
        run(tiny_policy, partial_heads, {"o_count": 1.0}, heads)
    with pytest.raises(FailedPrecondition, match=r"^controlled.value_source: 'heads' cannot estimate 'e_count'"):
        run(tiny_policy, letter_scorer, {"e_count": 1.0}, heads)
    # Objectives with zero weight need no head, and are not scored on prefix text either: the
    # only call into the o_count objective is the final scoring of the finished response.
    o_count = letter_scorer._objectives[1]
    o_count.calls.clear()
    assert run(tiny_policy, partial_heads, {"e_count": 1.0, "o_count": 0.0}, heads).text is not None
    assert o_count.calls == [1]


def test_greedy_controlled_decoding_is_refused(tiny_policy, guided):
    with pytest.raises(InvalidArgument, match=r"^sampling\.temperature:"):
        run(tiny_policy, guided, {"e_count": 1.0}, sampling=SamplingParams(temperature=0.0, max_tokens=4))


@pytest.mark.parametrize(
    "values, field",
    [
        ({"num_candidates": 1}, "controlled.num_candidates"),
        ({"block_tokens": 0}, "controlled.block_tokens"),
        ({"strength": 0.0}, "controlled.strength"),
        ({"strength": -1.0}, "controlled.strength"),
        ({"strength": math.inf}, "controlled.strength"),
        ({"token_candidates": 1}, "controlled.token_candidates"),
        ({"mode": "beam"}, "controlled.mode"),
        ({"num_candidates": 65}, "controlled.num_candidates"),
        ({"value_source": "oracle"}, "controlled.value_source"),
        ({"value_source": 1}, "controlled.value_source"),
    ],
)
def test_bad_controlled_params_are_invalid_argument(values, field):
    with pytest.raises(InvalidArgument) as error:
        validate_params("controlled", get_strategy("controlled").Params, dict(values), Limits())
    assert error.value.field == field
