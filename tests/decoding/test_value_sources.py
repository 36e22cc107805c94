"""Value sources on the tiny model: heads, prefix scoring, and `auto` choosing by stored metrics."""

import numpy as np
import pytest
import torch

from alignd.backends.base import Capability, ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeContext, DecodeRequest, get_strategy
from alignd.decoding.value_estimates import ValueEstimator
from alignd.decoding.weights import parse_weights
from alignd.errors import FailedPrecondition
from alignd.rewardmodels.guided_scorer import ValueGuidedScorer
from alignd.rewardmodels.heads import Head, HeadMetadata

SAMPLING = SamplingParams(temperature=1.0, max_tokens=20, seed=22)
PROMPT = "tell me about bread"


def measured_heads(hidden_size: int, metrics: dict[str, float]) -> Head:
    torch.manual_seed(0)
    return Head(
        HeadMetadata("value", "tiny", hidden_size, ["e_count", "o_count"], [1.0, 1.0], [2.0, 2.0], metrics=metrics)
    ).eval()


def blocks_of(policy, scorer, strategy, weights, **params):
    events = []
    chosen = get_strategy(strategy)
    request = DecodeRequest(
        ChatPrompt(PROMPT), SAMPLING, parse_weights(weights, scorer.objective_names), on_progress=events.append
    )
    result = chosen.decode(request, chosen.Params(**params), policy, scorer)
    return result, [e for e in events if e.phase == "block"]


@pytest.mark.parametrize("strategy", ["controlled", "multi_objective"])
def test_prefix_source_scores_each_candidates_whole_partial_text(tiny_policy, letter_scorer, strategy):
    result, blocks = blocks_of(
        tiny_policy, letter_scorer, strategy, {"e_count": 1.0}, num_candidates=4, block_tokens=5, value_source="prefix"
    )
    assert len(blocks) >= 2
    chosen_ids: list[int] = []
    for event in blocks:
        for candidate in event.candidates:
            partial_text = tiny_policy.detokenize(chosen_ids + candidate.completion.token_ids)
            # The estimate is the objective itself on prefix + block, not on the block alone.
            assert candidate.rewards[0] == partial_text.count("e")
            assert np.isnan(candidate.rewards[1])  # zero weight: not estimated
        best = max(c.rewards[0] for c in event.candidates)
        (selected,) = [c for c in event.candidates if c.selected]
        assert selected.rewards[0] == best
        chosen_ids += selected.completion.token_ids
    assert result.token_ids == chosen_ids


def test_prefix_source_scores_all_candidates_of_a_step_in_one_call(tiny_policy, letter_scorer):
    e_count = letter_scorer._objectives[0]
    e_count.calls.clear()
    result, blocks = blocks_of(
        tiny_policy,
        letter_scorer,
        "controlled",
        {"e_count": 1.0},
        num_candidates=4,
        block_tokens=5,
        value_source="prefix",
    )
    # One batched call of K texts per block, then the final response.
    assert e_count.calls == [4] * len(blocks) + [1]
    assert result.usage.scored_texts == 4 * len(blocks) + 1


def test_heads_source_reads_the_hidden_states(tiny_policy, letter_scorer):
    head = measured_heads(tiny_policy.hidden_size, {})
    guided = ValueGuidedScorer(letter_scorer, head)
    hidden = torch.randn(3, tiny_policy.hidden_size)
    values = guided.estimate_values(PROMPT, None, hidden, {"e_count": "heads"})
    assert values[:, 0] == pytest.approx(head.predict(hidden)[:, 0].double().numpy())
    assert np.isnan(values[:, 1]).all()
    mixed = guided.estimate_values(PROMPT, ["eee", "e", "oo"], hidden, {"e_count": "heads", "o_count": "prefix"})
    assert mixed[:, 0] == pytest.approx(values[:, 0]) and list(mixed[:, 1]) == [0, 0, 2]
    # heads on the tiny model's real decoding: every block's estimate is the head's prediction.
    e_count = letter_scorer._objectives[0]
    e_count.calls.clear()
    result, _ = blocks_of(
        tiny_policy, guided, "controlled", {"e_count": 1.0}, num_candidates=3, block_tokens=5, value_source="heads"
    )
    assert e_count.calls == [1]  # only the final response: no prefix text was scored
    assert result.usage.scored_texts == 1


def test_auto_picks_each_objectives_best_measured_source(tiny_policy, letter_scorer):
    metrics = {
        "e_count@50%_heads_pair_accuracy": 0.81,
        "e_count@50%_prefix_pair_accuracy": 0.62,
        "o_count@50%_heads_pair_accuracy": 0.52,
        "o_count@50%_prefix_pair_accuracy": 0.77,
    }
    guided = ValueGuidedScorer(letter_scorer, measured_heads(tiny_policy.hidden_size, metrics))
    sources = guided.value_sources
    assert (sources["e_count"].auto, sources["o_count"].auto) == ("heads", "prefix")
    assert sources["o_count"].pair_accuracy == {"heads": 0.52, "prefix": 0.77}
    e_count, o_count = letter_scorer._objectives
    e_count.calls.clear()
    o_count.calls.clear()
    _, blocks = blocks_of(tiny_policy, guided, "robust", {}, num_candidates=3, block_tokens=5)
    assert e_count.calls == [1]  # heads: only the final response
    assert o_count.calls == [3] * len(blocks) + [1]  # prefix: K texts per block


def test_auto_without_measurements_scores_the_prefix(tiny_policy, letter_scorer):
    unmeasured = ValueGuidedScorer(letter_scorer, measured_heads(tiny_policy.hidden_size, {}))
    assert {s.auto for s in unmeasured.value_sources.values()} == {"prefix"}
    assert {s.auto for s in letter_scorer.value_sources.values()} == {"prefix"}
    assert all(s.available == ("prefix",) for s in letter_scorer.value_sources.values())


class _NoHiddenStates:
    """A backend that decodes by blocks but gives no hidden states (vLLM without a shadow)."""

    capabilities = frozenset({Capability.SAMPLE, Capability.EXTEND})


def test_heads_on_a_backend_without_hidden_states_is_failed_precondition(tiny_policy, letter_scorer):
    guided = ValueGuidedScorer(letter_scorer, measured_heads(tiny_policy.hidden_size, {}))
    with pytest.raises(
        FailedPrecondition, match=r"^controlled.value_source: value heads for \['e_count'\] read hidden states"
    ):
        ValueEstimator.resolve("controlled", _NoHiddenStates(), guided, ["e_count"], "heads")
    estimator = ValueEstimator.resolve("controlled", _NoHiddenStates(), guided, ["e_count"], "prefix")
    assert estimator.sources == {"e_count": "prefix"}


def test_estimator_counts_its_work_into_usage(tiny_policy, letter_scorer):
    partial = tiny_policy.begin(ChatPrompt(PROMPT), SAMPLING)
    blocks = tiny_policy.extend(partial, 4, 3)
    ctx = DecodeContext(
        DecodeRequest(ChatPrompt(PROMPT), SAMPLING, parse_weights({}, letter_scorer.objective_names)),
        tiny_policy,
        letter_scorer,
    )
    usage = ctx.usage
    estimator = ValueEstimator.resolve("controlled", tiny_policy, letter_scorer, ["o_count"], "auto")
    values, standardised = estimator(ctx, blocks)
    texts = [tiny_policy.detokenize(ids) for ids in blocks.token_ids]
    assert list(values[:, 1]) == [t.count("o") for t in texts]
    assert np.array_equal(standardised, values, equal_nan=True)  # no statistics: identity
    assert (usage.scorer_calls, usage.scored_texts) == (1, 4) and usage.phase_seconds["value"] >= 0


def test_prefix_texts_are_cut_like_the_final_response(tiny_policy, letter_scorer):
    sampling = SamplingParams(temperature=1.0, max_tokens=12, seed=4, stop=("e",))
    blocks = tiny_policy.extend(tiny_policy.begin(ChatPrompt(PROMPT), sampling), 6, 6)
    texts = tiny_policy.partial_texts(blocks)
    assert texts == [tiny_policy.completion(blocks, row).text for row in range(blocks.rows)]
    assert not any("e" in t for t in texts)
    ctx = DecodeContext(
        DecodeRequest(ChatPrompt(PROMPT), sampling, parse_weights({}, letter_scorer.objective_names)),
        tiny_policy,
        letter_scorer,
    )
    values, _ = ValueEstimator.resolve("controlled", tiny_policy, letter_scorer, ["e_count"], "prefix")(ctx, blocks)
    assert list(values[:, 0]) == [0] * blocks.rows
