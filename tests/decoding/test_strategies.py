import math

import pytest

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.kl import best_of_n_kl_bound, best_of_n_kl_estimate
from alignd.decoding.weights import parse_weights

SAMPLING = SamplingParams(temperature=1.0, max_tokens=20, seed=21)


def request(scorer, weights=None, **kwargs):
    return DecodeRequest(
        ChatPrompt("tell me about bread"),
        kwargs.pop("sampling", SAMPLING),
        parse_weights(weights or {}, scorer.objective_names),
        **kwargs,
    )


def test_best_of_n_returns_the_argmax_of_the_weighted_score(tiny_policy, letter_scorer):
    strategy = get_strategy("best_of_n")
    result = strategy.decode(
        request(letter_scorer, {"e_count": 1.0}, return_candidates=True),
        strategy.Params(n=6),
        tiny_policy,
        letter_scorer,
    )
    assert len(result.candidates) == 6
    best = max(result.candidates, key=lambda c: c.weighted_score)
    assert result.text == best.completion.text and best.selected
    assert result.weighted_score == pytest.approx(result.text.count("e"))
    assert result.rewards == {"e_count": result.text.count("e"), "o_count": result.text.count("o")}
    assert sum(c.selected for c in result.candidates) == 1


def test_best_of_n_scores_all_candidates_in_one_batched_call(tiny_policy, letter_scorer):
    strategy = get_strategy("best_of_n")
    result = strategy.decode(request(letter_scorer), strategy.Params(n=5), tiny_policy, letter_scorer)
    for objective in letter_scorer._objectives:
        assert objective.calls == [5]
    assert result.usage.scorer_calls == 1 and result.usage.scored_texts == 5
    assert result.usage.generated_tokens >= 5
    assert set(result.usage.phase_seconds) == {"sample", "score"}


def test_best_of_n_weights_change_the_choice(tiny_policy, letter_scorer):
    strategy = get_strategy("best_of_n")
    by_e = strategy.decode(request(letter_scorer, {"e_count": 1.0}), strategy.Params(n=8), tiny_policy, letter_scorer)
    by_o = strategy.decode(request(letter_scorer, {"o_count": 1.0}), strategy.Params(n=8), tiny_policy, letter_scorer)
    # Same seed, same candidates: each pick is the best under its own weights.
    assert by_e.text.count("e") >= by_o.text.count("e")
    assert by_o.text.count("o") >= by_e.text.count("o")


def test_best_of_n_reports_both_kl_figures_labelled(tiny_policy, letter_scorer):
    strategy = get_strategy("best_of_n")
    result = strategy.decode(
        request(letter_scorer, return_candidates=True), strategy.Params(n=4), tiny_policy, letter_scorer
    )
    kl = {k.name: k for k in result.kl}
    assert kl["best_of_n_bound"].kind == "upper_bound"
    assert kl["best_of_n_bound"].nats == pytest.approx(math.log(4) - 3 / 4)
    chosen = next(c for c in result.candidates if c.selected)
    assert kl["beirami_estimator"].kind == "estimate"
    assert kl["beirami_estimator"].nats == pytest.approx(best_of_n_kl_estimate(4, chosen.completion.logprob))
    assert kl["beirami_estimator"].nats <= best_of_n_kl_bound(4)


def test_greedy_best_of_n_has_zero_estimated_kl(tiny_policy, letter_scorer):
    strategy = get_strategy("best_of_n")
    greedy = SamplingParams(temperature=0.0, max_tokens=8)
    result = strategy.decode(request(letter_scorer, sampling=greedy), strategy.Params(n=3), tiny_policy, letter_scorer)
    assert {k.name: k.nats for k in result.kl}["beirami_estimator"] == 0.0


def test_sample_reports_rewards_and_exact_zero_kl(tiny_policy, letter_scorer):
    strategy = get_strategy("sample")
    events = []
    result = strategy.decode(
        request(letter_scorer, on_progress=events.append), strategy.Params(), tiny_policy, letter_scorer
    )
    assert [(k.kind, k.nats) for k in result.kl] == [("exact", 0.0)]
    assert result.rewards["e_count"] == result.text.count("e")
    assert result.finish_reason in {"stop", "length"}
    # Streamed, it decodes a few tokens at a time, committing the text as it goes.
    assert events and all(e.phase == "tokens" for e in events)
    assert events[-1].committed == result.text
    assert result.usage.generated_tokens == len(result.token_ids)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sample_streamed_or_not_gives_the_same_answer_for_a_seed(tiny_policy, letter_scorer, temperature):
    """Streamed, sample continues its partial in place a few tokens at a time; each row's random
    stream is keyed by seed and position, so the seeded draw is the unstreamed one."""
    strategy = get_strategy("sample")
    sampling = SamplingParams(temperature=temperature, max_tokens=13, seed=7)
    plain = strategy.decode(request(letter_scorer, sampling=sampling), strategy.Params(), tiny_policy, letter_scorer)
    events = []
    streamed = strategy.decode(
        request(letter_scorer, sampling=sampling, on_progress=events.append),
        strategy.Params(),
        tiny_policy,
        letter_scorer,
    )
    assert streamed.token_ids == plain.token_ids and streamed.text == plain.text
    assert len(events) == -(-len(plain.token_ids) // 4)  # one event per 4-token step
    assert streamed.usage.lm_forward_tokens == plain.usage.lm_forward_tokens
