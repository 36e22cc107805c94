"""speculative_best_of_n and soft_best_of_n on the tiny model."""

import math

import pytest

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.backends.transformers_policy import TransformersPolicy
from alignd.decoding.base import DecodeContext, DecodeRequest, get_strategy
from alignd.decoding.kl import soft_best_of_n_kl_bound
from alignd.decoding.params import Limits, validate_params
from alignd.decoding.speculative_best_of_n import kept_count
from alignd.decoding.weights import parse_weights
from alignd.errors import InvalidArgument

SAMPLING = SamplingParams(temperature=1.0, max_tokens=16, seed=31)


def run(name, policy, scorer, weights=None, events=None, sampling=SAMPLING, **params):
    strategy = get_strategy(name)
    request = DecodeRequest(
        ChatPrompt("tell me about bread"),
        sampling,
        parse_weights(weights or {"e_count": 1.0}, scorer.objective_names),
        return_candidates=True,
        on_progress=events.append if events is not None else None,
    )
    return strategy.decode(request, strategy.Params(**params), policy, scorer)


# -- speculative_best_of_n ---------------------------------------------------------------------


def speculative(policy, scorer, **params):
    """speculative_best_of_n with 8 candidates valued by prefix scoring, unless `params` say otherwise."""
    return run("speculative_best_of_n", policy, scorer, **{"num_candidates": 8, "value_source": "prefix", **params})


def test_kept_rows_decode_exactly_what_best_of_n_draws_for_them(tiny_policy, letter_scorer):
    events = []
    spec = speculative(
        tiny_policy,
        letter_scorer,
        events=events,
        keep_fraction=0.25,
        rejection_tokens=5,
    )
    full = run("best_of_n", tiny_policy, letter_scorer, n=8)
    (rejection,) = [e for e in events if e.phase == "rejection"]
    kept = [i for i, c in enumerate(rejection.candidates) if c.selected]
    assert len(kept) == 2 and spec.details == {"rejection_rounds": 1.0, "final_candidates": 2.0}
    # Candidate i of the speculative run is response i of best_of_n with the same seed: the kept
    # ones continue with the tokens they would have drawn had no row been rejected.
    assert [c.completion.token_ids for c in spec.candidates] == [full.candidates[i].completion.token_ids for i in kept]
    assert spec.text == max(spec.candidates, key=lambda c: c.weighted_score).completion.text


def test_rejection_keeps_the_rows_with_the_highest_values(tiny_policy, letter_scorer):
    events = []
    speculative(
        tiny_policy,
        letter_scorer,
        events=events,
        keep_fraction=0.5,
        rejection_tokens=6,
    )
    (rejection,) = [e for e in events if e.phase == "rejection"]
    kept = [c.weighted_score for c in rejection.candidates if c.selected]
    dropped = [c.weighted_score for c in rejection.candidates if not c.selected]
    assert len(kept) == 4 and min(kept) >= max(dropped)
    # prefix values of e_count are the partial texts' counts of "e": the one with most is kept.
    counts = [c.completion.text.count("e") for c in rejection.candidates]
    assert rejection.candidates[max(range(8), key=counts.__getitem__)].selected


def test_usage_counts_the_rejected_rows_tokens(tiny_policy, letter_scorer):
    events = []
    spec = speculative(
        tiny_policy,
        letter_scorer,
        events=events,
        keep_fraction=0.25,
        rejection_tokens=4,
        max_rejections=2,
    )
    rejections = [e for e in events if e.phase == "rejection"]
    assert len(rejections) == 2 and spec.details["final_candidates"] == 1
    started = sum(len(c.completion.token_ids) for c in rejections[0].candidates)
    assert spec.usage.generated_tokens >= started + len(spec.token_ids) - 8
    assert spec.usage.generated_tokens > sum(len(c.completion.token_ids) for c in spec.candidates)
    kl = {k.name: k for k in spec.kl}
    assert kl["selection_bound"].kind == "upper_bound" and kl["selection_bound"].nats == pytest.approx(math.log(8))


def test_memory_rejection_keeps_the_live_rows_within_the_budget(tiny_policy, letter_scorer):
    events = []
    prompt_tokens = len(tiny_policy.prompt_ids(ChatPrompt("tell me about bread")))
    # 8 rows fill the budget at 3 tokens, 4 rows at prompt + 6, 2 rows only past max_tokens.
    budget = 8 * (prompt_tokens + 3)
    sampling = SamplingParams(temperature=1.0, max_tokens=prompt_tokens + 16, seed=31)
    spec = speculative(
        tiny_policy,
        letter_scorer,
        events=events,
        sampling=sampling,
        keep_fraction=0.5,
        rejection="memory",
        memory_tokens=budget,
    )
    rejections = [e for e in events if e.phase == "rejection"]
    assert spec.details["rejection_rounds"] == len(rejections) == 2
    assert [len(e.candidates) for e in rejections] == [8, 4]
    for event in rejections:
        generated = max(len(c.completion.token_ids) for c in event.candidates)
        assert len(event.candidates) * (prompt_tokens + generated) <= budget
    assert generated == prompt_tokens + 6


def test_rejected_rows_leave_the_kv_cache(tiny_policy):
    sampling = SamplingParams(temperature=1.0, max_tokens=16, seed=3)
    rows = tiny_policy.extend(tiny_policy.begin(ChatPrompt("hi"), sampling), 8, 4)
    kept = tiny_policy.select(rows, [1, 6])
    assert kept.cache.rows == 2 and kept.cache.buffer.numel() * 4 <= rows.cache.buffer.numel()
    # The kept rows continue as they would have among all eight.
    everyone = tiny_policy.extend(rows, 1, 6)
    survivors = tiny_policy.extend(kept, 1, 6)
    assert survivors.token_ids == [everyone.token_ids[1], everyone.token_ids[6]]


def test_rejected_rows_give_their_memory_back_to_waiting_requests(tiny_policy, letter_scorer):
    policy = TransformersPolicy(model=tiny_policy.model, tokenizer=tiny_policy.tokenizer, max_batch_tokens=100_000)
    strategy = get_strategy("speculative_best_of_n")
    free_when_scored = []
    request = DecodeRequest(
        policy.encode(ChatPrompt("tell me about bread")),
        SAMPLING,
        parse_weights({"e_count": 1.0}, letter_scorer.objective_names),
        on_progress=lambda e: free_when_scored.append(policy.memory.free) if e.phase == "scored" else None,
    )
    per_row = len(request.prompt.token_ids) + SAMPLING.max_tokens
    params = strategy.Params(num_candidates=8, keep_fraction=0.25, rejection_tokens=5, value_source="prefix")
    decode = strategy.prepare(request, params, policy, letter_scorer)
    with policy.reserve(8 * per_row) as memory:
        decode(DecodeContext(request, policy, letter_scorer, memory))
    assert free_when_scored == [100_000 - 2 * per_row]  # the 6 rejected rows' share came back
    assert policy.memory.free == 100_000


def test_kept_count():
    assert [kept_count(32, 0.25), kept_count(8, 0.25), kept_count(2, 0.25), kept_count(3, 1.0)] == [8, 2, 1, 3]
    assert kept_count(100, 0.29) == 29  # 0.29 x 100 is 28.999... in floats
    assert kept_count(2, 0.9999999999) == 1  # below 1 always rejects one: memory rejection ends


def test_memory_rejection_reserves_its_budget_not_n_whole_responses():
    strategy = get_strategy("speculative_best_of_n")
    by_tokens = strategy.Params(num_candidates=32)
    by_memory = strategy.Params(num_candidates=32, rejection="memory", memory_tokens=4096)
    assert strategy.held_tokens(by_tokens, 30, 100) == 32 * 130
    assert strategy.held_tokens(by_memory, 30, 100) == 4096
    assert strategy.held_tokens(by_memory, 30, 5000) == 5030  # one whole response is longer
    assert strategy.held_tokens(by_memory, 30, 10) == 32 * 40  # N whole responses fit anyway


def test_a_cancelled_speculative_request_stops(tiny_policy, letter_scorer):
    import threading

    from alignd.errors import Cancelled

    cancel = threading.Event()
    events = []

    def on_progress(event):
        events.append(event)
        cancel.set()  # the client goes away at the first rejection

    strategy = get_strategy("speculative_best_of_n")
    request = DecodeRequest(
        ChatPrompt("tell me about bread"),
        SAMPLING,
        parse_weights({"e_count": 1.0}, letter_scorer.objective_names),
        on_progress=on_progress,
        cancel=cancel,
    )
    params = strategy.Params(num_candidates=8, rejection_tokens=4, max_rejections=3, value_source="prefix")
    with pytest.raises(Cancelled):
        strategy.decode(request, params, tiny_policy, letter_scorer)
    assert [e.phase for e in events] == ["rejection"]


@pytest.mark.parametrize(
    "values, field",
    [
        ({"keep_fraction": 0.0}, "speculative_best_of_n.keep_fraction"),
        ({"keep_fraction": 1.5}, "speculative_best_of_n.keep_fraction"),
        ({"num_candidates": 1}, "speculative_best_of_n.num_candidates"),
        ({"rejection": "later"}, "speculative_best_of_n.rejection"),
        ({"rejection_tokens": 0}, "speculative_best_of_n.rejection_tokens"),
        ({"value_source": "oracle"}, "speculative_best_of_n.value_source"),
    ],
)
def test_bad_speculative_params_are_invalid_argument(values, field):
    strategy = get_strategy("speculative_best_of_n")
    with pytest.raises(InvalidArgument) as error:
        validate_params(strategy.name, strategy.Params, dict(values), Limits())
    assert error.value.field == field


@pytest.mark.parametrize(
    "params, field",
    [
        (dict(rejection="memory", memory_tokens=40), "speculative_best_of_n.memory_tokens"),
        (dict(rejection="memory", keep_fraction=1.0, memory_tokens=4096), "speculative_best_of_n.keep_fraction"),
    ],
)
def test_a_memory_budget_that_cannot_work_is_refused_before_decoding(tiny_policy, letter_scorer, params, field):
    with pytest.raises(InvalidArgument) as error:
        speculative(tiny_policy, letter_scorer, **params)
    assert error.value.field == field


# -- soft_best_of_n ----------------------------------------------------------------------------


def test_soft_best_of_n_at_low_beta_is_best_of_n(tiny_policy, letter_scorer):
    soft = run("soft_best_of_n", tiny_policy, letter_scorer, n=6, beta=1e-3)
    hard = run("best_of_n", tiny_policy, letter_scorer, n=6)
    assert [c.completion.token_ids for c in soft.candidates] == [c.completion.token_ids for c in hard.candidates]
    assert soft.weighted_score == hard.weighted_score and soft.details["chose_best"] == 1.0


def test_soft_best_of_n_at_high_beta_chooses_nearly_uniformly(tiny_policy, letter_scorer):
    picks = set()
    for seed in range(12):
        sampling = SamplingParams(temperature=1.0, max_tokens=8, seed=seed)
        result = run("soft_best_of_n", tiny_policy, letter_scorer, sampling=sampling, n=4, beta=1e4)
        assert result.details["chosen_probability"] == pytest.approx(0.25, abs=1e-3)
        picks.add(next(i for i, c in enumerate(result.candidates) if c.selected))
    assert len(picks) >= 3


def test_soft_best_of_n_is_reproducible_and_reports_its_kl_bound(tiny_policy, letter_scorer):
    first = run("soft_best_of_n", tiny_policy, letter_scorer, n=5, beta=0.5)
    again = run("soft_best_of_n", tiny_policy, letter_scorer, n=5, beta=0.5)
    assert first.text == again.text and first.details == again.details
    (kl,) = first.kl
    # The letter counts are unbounded: the bound is log n.
    assert kl.kind == "upper_bound" and kl.nats == pytest.approx(soft_best_of_n_kl_bound(5, 0.5, math.inf))


@pytest.mark.parametrize("values", [{"beta": 0.0}, {"beta": -1.0}, {"beta": math.nan}, {"n": 0}])
def test_bad_soft_params_are_invalid_argument(values):
    strategy = get_strategy("soft_best_of_n")
    with pytest.raises(InvalidArgument) as error:
        validate_params(strategy.name, strategy.Params, dict(values), Limits())
    assert error.value.field == f"soft_best_of_n.{next(iter(values))}"
