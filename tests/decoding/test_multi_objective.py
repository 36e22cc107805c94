"""multi_objective (MOD) and robust (RMOD) on the tiny model with value heads built in-process."""

import math

import numpy as np
import pytest

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.params import Limits, validate_params
from alignd.decoding.weights import parse_weights
from alignd.decoding.worst_case import WeightSet, solve_cvxpy
from alignd.errors import FailedPrecondition, InvalidArgument
from alignd.rewardmodels.guided_scorer import ValueGuidedScorer
from alignd.rewardmodels.objective_scorer import ObjectiveScorer
from tests.conftest import CountingObjective
from tests.decoding.test_controlled import value_heads

SAMPLING = SamplingParams(temperature=1.0, max_tokens=24, seed=5)
NAMES = ("e_count", "o_count", "a_count")


@pytest.fixture
def three(tiny_policy):
    """Three letter-count objectives, all covered by (random) value heads."""
    base = ObjectiveScorer([CountingObjective(n, n[0]) for n in NAMES])
    return ValueGuidedScorer(base, value_heads(tiny_policy.hidden_size, NAMES, seed=3))


def run(policy, scorer, strategy, params=None, weights=None, sampling=SAMPLING):
    events = []
    chosen = get_strategy(strategy)
    request = DecodeRequest(
        ChatPrompt("tell me about bread"),
        sampling,
        parse_weights(weights or {}, scorer.objective_names),
        on_progress=events.append,
    )
    result = chosen.decode(request, params or chosen.Params(), policy, scorer)
    return result, [e for e in events if e.phase == "block"]


def robust_params(**values):
    """Robust's params, with the (random) heads as the value source unless the test says otherwise."""
    return validate_params("robust", get_strategy("robust").Params, {"value_source": "heads", **values}, Limits())


def standardised(scorer, event):
    """The chosen step's K value vectors on the common scale, from the event's candidates."""
    return scorer.standardise(np.array([c.rewards for c in event.candidates]))


def test_multi_objective_keeps_the_block_with_the_best_weighted_value(tiny_policy, three):
    weights = {"e_count": 0.5, "o_count": 0.3, "a_count": 0.2}
    params = get_strategy("multi_objective").Params(num_candidates=4, block_tokens=6)
    result, blocks = run(tiny_policy, three, "multi_objective", params, weights)
    assert blocks and result.details["blocks"] == len(blocks)
    w = np.array([weights[n] for n in NAMES])
    for event in blocks:
        assert event.weights == pytest.approx(weights)
        scores = standardised(three, event) @ w
        assert [c.weighted_score for c in event.candidates] == pytest.approx(list(scores))
        assert event.candidates[int(np.argmax(scores))].selected
    assert result.rewards == {n: result.text.count(n[0]) for n in NAMES}
    assert result.weighted_score == pytest.approx(sum(weights[n] * result.rewards[n] for n in NAMES))
    assert result.usage.lm_forward_tokens <= result.usage.prompt_tokens + result.usage.generated_tokens


def test_robust_chooses_by_the_worst_case_weights_of_each_block(tiny_policy, three):
    params = robust_params(num_candidates=5, block_tokens=6, strength=2.0)
    result, blocks = run(tiny_policy, three, "robust", params)
    assert len(blocks) == result.details["blocks"] >= 2
    for event in blocks:
        values = standardised(three, event)
        w = np.array([event.weights[n] for n in NAMES])
        assert WeightSet.simplex(3).contains(w, 1e-9)
        # w* solves the block's program: cvxpy from scratch reaches the same value.
        reference = solve_cvxpy(values, 2.0, WeightSet.simplex(3))
        value = math.log(np.mean(np.exp(2.0 * values @ w))) / 2.0
        assert value == pytest.approx(reference.value, abs=1e-4)
        assert event.candidates[int(np.argmax(values @ w))].selected
        chosen = values[int(np.argmax(values @ w))]
        assert event.worst_objective == NAMES[int(np.argmin(chosen))]
        assert event.worst_value == pytest.approx(chosen.min())
    mean = np.mean([[e.weights[n] for n in NAMES] for e in blocks], axis=0)
    assert [result.details[f"mean_w*[{n}]"] for n in NAMES] == pytest.approx(list(mean))
    final = three.standardise(np.array([[result.rewards[n] for n in NAMES]]))[0]
    assert result.details["worst_standardised_reward"] == pytest.approx(final.min())
    assert result.details["solver_fallbacks"] == 0
    # The request's weights only define the reported score (uniform by default here).
    assert result.weighted_score == pytest.approx(np.mean([result.rewards[n] for n in NAMES]))


def test_robust_with_the_cvxpy_solver_decodes_the_same_text(tiny_policy, three):
    fast, _ = run(tiny_policy, three, "robust", robust_params(num_candidates=4, block_tokens=6))
    exact, _ = run(tiny_policy, three, "robust", robust_params(num_candidates=4, block_tokens=6, solver="cvxpy"))
    assert exact.details["solver_fallbacks"] == 0
    assert exact.token_ids == fast.token_ids


def test_robust_tiny_lambda_weights_the_worst_objective_on_average(tiny_policy, three):
    _, blocks = run(tiny_policy, three, "robust", robust_params(num_candidates=6, block_tokens=4, strength=1e-5))
    for event in blocks:
        worst = NAMES[int(np.argmin(standardised(three, event).mean(axis=0)))]
        assert event.weights[worst] == pytest.approx(1.0, abs=1e-6)


def test_robust_huge_lambda_plays_the_minimax_weights(tiny_policy, three):
    _, blocks = run(tiny_policy, three, "robust", robust_params(num_candidates=6, block_tokens=4, strength=1e4))
    for event in blocks:
        values = standardised(three, event)
        w = np.array([event.weights[n] for n in NAMES])
        # No other weights make the best block's score lower: w* is a minimax strategy.
        grid = [np.array([a, b, 1 - a - b]) for a in np.linspace(0, 1, 21) for b in np.linspace(0, 1 - a, 21)]
        assert (values @ w).max() <= min((values @ v).max() for v in grid) + 1e-3


def test_robust_respects_lower_bounds_and_the_allowed_objectives(tiny_policy, three):
    params = robust_params(
        num_candidates=4, block_tokens=6, objectives=["e_count", "o_count"], min_weights={"o_count": 0.4}
    )
    result, blocks = run(tiny_policy, three, "robust", params)
    for event in blocks:
        assert event.weights["a_count"] == 0.0
        assert event.weights["o_count"] >= 0.4 - 1e-9
        assert event.weights["e_count"] + event.weights["o_count"] == pytest.approx(1.0)
        assert event.worst_objective in ("e_count", "o_count")
    assert result.details["mean_w*[a_count]"] == 0.0


def test_robust_with_heads_needs_a_head_for_every_objective_the_adversary_weights(tiny_policy, letter_scorer):
    partial = ValueGuidedScorer(letter_scorer, value_heads(tiny_policy.hidden_size, ("e_count",)))
    with pytest.raises(FailedPrecondition, match=r"^robust.value_source: 'heads' cannot estimate 'o_count'"):
        run(tiny_policy, partial, "robust", robust_params(value_source="heads"))
    # Restricted to the covered objective, it runs.
    result, _ = run(
        tiny_policy,
        partial,
        "robust",
        robust_params(objectives=["e_count"], num_candidates=3, block_tokens=8, value_source="heads"),
    )
    assert result.details["mean_w*[e_count]"] == pytest.approx(1.0)
    mod = get_strategy("multi_objective").Params(value_source="heads")
    with pytest.raises(FailedPrecondition, match=r"^multi_objective.value_source: 'heads' cannot estimate 'o_count'"):
        run(tiny_policy, partial, "multi_objective", mod, weights={"o_count": 1.0})


@pytest.mark.parametrize("strategy", ["robust", "multi_objective"])
def test_greedy_blockwise_decoding_is_refused(tiny_policy, three, strategy):
    with pytest.raises(InvalidArgument, match=r"^sampling\.temperature:"):
        run(tiny_policy, three, strategy, sampling=SamplingParams(temperature=0.0, max_tokens=4))


@pytest.mark.parametrize(
    "values, field",
    [
        ({"num_candidates": 1}, "robust.num_candidates"),
        ({"strength": 0.0}, "robust.strength"),
        ({"strength": -2.0}, "robust.strength"),
        ({"strength": math.inf}, "robust.strength"),
        ({"strength": math.nan}, "robust.strength"),
        ({"solver": "ecos"}, "robust.solver"),
        ({"min_weights": {"e_count": -0.1}}, "robust.min_weights[e_count]"),
        ({"min_weights": {"e_count": 1.5}}, "robust.min_weights[e_count]"),
        ({"min_weights": {"e_count": math.nan}}, "robust.min_weights[e_count]"),
        ({"objectives": ["e_count", "e_count"]}, "robust.objectives[1]"),
        ({"objectives": [""]}, "robust.objectives[0]"),
        ({"objectives": "e_count"}, "robust.objectives"),
    ],
)
def test_bad_robust_params_are_invalid_argument(values, field):
    with pytest.raises(InvalidArgument) as error:
        robust_params(**values)
    assert error.value.field == field


@pytest.mark.parametrize(
    "values, field",
    [
        ({"objectives": ["e_count", "fluency"]}, "robust.objectives[1]"),
        ({"min_weights": {"fluency": 0.1}}, "robust.min_weights[fluency]"),
        ({"objectives": ["e_count"], "min_weights": {"o_count": 0.1}}, "robust.min_weights[o_count]"),
        ({"min_weights": {"e_count": 0.7, "o_count": 0.6}}, "robust.min_weights"),
    ],
)
def test_robust_params_that_need_the_objectives_are_checked_before_decoding(tiny_policy, three, values, field):
    with pytest.raises(InvalidArgument) as error:
        run(tiny_policy, three, "robust", robust_params(**values))
    assert error.value.field == field
