"""linear_alignment on the tiny model: lock-step contexts, alpha = 0, support, KL, errors."""

import dataclasses
import itertools
import math

import pytest
import torch

from alignd.backends.base import Capability, ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.linear_alignment import template_system, with_principle
from alignd.decoding.params import Limits, validate_params
from alignd.decoding.weights import parse_weights
from alignd.errors import FailedPrecondition, InvalidArgument
from alignd.sampling import reference_logprobs

PRINCIPLE = "answer kindly and positively"
PROMPT = ChatPrompt("tell me about bread")


def sampling(**overrides):
    strategy = get_strategy("linear_alignment")
    return dataclasses.replace(strategy.default_sampling(SamplingParams(max_tokens=12, seed=7)), **overrides)


def run(policy, scorer, params, sampling_params, events=None):
    strategy = get_strategy("linear_alignment")
    request = DecodeRequest(
        PROMPT,
        sampling_params,
        parse_weights({}, scorer.objective_names),
        on_progress=events.append if events is not None else None,
    )
    return strategy.decode(request, params, policy, scorer)


def params(**values):
    return validate_params("linear_alignment", get_strategy("linear_alignment").Params, values, Limits())


def test_defaults_are_the_authors():
    strategy = get_strategy("linear_alignment")
    defaults = strategy.default_sampling(SamplingParams())
    assert (defaults.temperature, defaults.top_p) == (0.5, 0.8)
    assert 2 <= strategy.Params().alpha <= 5


def test_alpha_zero_reproduces_decoding_under_the_principle_alone(tiny_policy, letter_scorer):
    for seed in (1, 2, 3):
        settings = sampling(seed=seed, max_tokens=16)
        aligned = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=0.0), settings)
        alone = tiny_policy.sample([with_principle(PROMPT, PRINCIPLE)], 1, settings).completions[0][0]
        assert aligned.token_ids == alone.token_ids
    greedy = sampling(temperature=0.0, top_p=1.0, max_tokens=16)
    aligned = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=0.0), greedy)
    alone = tiny_policy.sample([with_principle(PROMPT, PRINCIPLE)], 1, greedy).completions[0][0]
    assert aligned.token_ids == alone.token_ids
    settings = sampling(seed=9, max_tokens=16)
    aligned = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=0.0, placement="user"), settings)
    alone = tiny_policy.sample([with_principle(PROMPT, PRINCIPLE, None, "user")], 1, settings).completions[0][0]
    assert aligned.token_ids == alone.token_ids


def test_each_token_is_drawn_from_the_extrapolated_logits_within_the_principled_support(tiny_policy, letter_scorer):
    alpha = 4.0
    principled, plain = with_principle(PROMPT, PRINCIPLE), PROMPT
    # Greedy on the full support: every token is argmax of z_p + alpha (z_p - z_0), recomputed here
    # from scratch for each prefix.
    greedy = sampling(temperature=0.0, top_p=1.0, max_tokens=10)
    result = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=alpha), greedy)
    for step, token in enumerate(result.token_ids):
        z_p, z_0 = (_logits(tiny_policy, p, result.token_ids[:step]) for p in (principled, plain))
        assert token == int(torch.argmax(z_p + alpha * (z_p - z_0))), step
    # The random tiny model barely reacts to the principle; a large alpha still changes the text.
    alone = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=0.0), greedy)
    pushed = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=100.0), greedy)
    assert alone.token_ids != pushed.token_ids
    # Sampled: every token lies in the top-p support of softmax(z_p / T).
    settings = sampling(temperature=1.0, top_p=0.5, max_tokens=12, seed=11)
    result = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=alpha), settings)
    for step, token in enumerate(result.token_ids):
        z_p = _logits(tiny_policy, principled, result.token_ids[:step])
        assert math.isfinite(reference_logprobs(z_p[None], settings)[0, token]), step


def _logits(policy, prompt, prefix):
    ids = policy.tokenize(policy.render(prompt)) + list(prefix)
    with torch.inference_mode():
        return policy.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def test_details_say_how_much_room_the_extrapolation_had_and_used(tiny_policy, letter_scorer):
    full = sampling(temperature=0.0, top_p=1.0, max_tokens=10)
    vocab = tiny_policy.model.config.vocab_size
    alone = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=0.0), full)
    pushed = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=100.0), full)
    assert alone.details["mean_support_tokens"] == pushed.details["mean_support_tokens"] == vocab
    assert alone.details["overridden_fraction"] == 0.0 < pushed.details["overridden_fraction"] <= 1.0
    # The tiny model's top-0.8 set at T = 0.5 is one token: nothing for alpha to change.
    narrow = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=100.0), sampling(seed=5))
    assert narrow.details["mean_support_tokens"] == 1.0 and narrow.details["overridden_fraction"] == 0.0


def test_both_contexts_share_one_batched_forward_per_token(tiny_policy, letter_scorer):
    result = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE), sampling(max_tokens=12))
    generated = len(result.token_ids)
    principled = tiny_policy.count_tokens(tiny_policy.render(with_principle(PROMPT, PRINCIPLE)))
    plain = tiny_policy.count_tokens(tiny_policy.render(PROMPT))
    assert result.usage.prompt_tokens == principled + plain
    # Each prompt once, then every token into both contexts (the last token fed too).
    assert result.usage.lm_forward_tokens == principled + plain + 2 * generated
    assert result.usage.generated_tokens == generated


def test_kl_estimate_grows_with_alpha(tiny_policy, letter_scorer):
    wide = sampling(seed=3, temperature=1.0, top_p=1.0)  # the tiny model's top-0.8 set is one token
    small = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=0.5), wide)
    large = run(tiny_policy, letter_scorer, params(principle=PRINCIPLE, alpha=8.0), wide)
    (a,), (b,) = small.kl, large.kl
    assert a.kind == b.kind == "estimate" and 0 <= a.nats < b.nats and math.isfinite(b.nats)
    assert small.rewards == {"e_count": small.text.count("e"), "o_count": small.text.count("o")}


def test_stream_reports_each_token_with_the_text_so_far(tiny_policy, letter_scorer):
    events = []
    result = run(tiny_policy, letter_scorer, params(), sampling(max_tokens=32, seed=4), events)
    assert [e.step for e in events] == list(range(1, len(result.token_ids) + 1))
    assert events[-1].committed == result.text
    assert all(a.committed is not None and b.committed.startswith(a.committed) for a, b in itertools.pairwise(events))


def test_raw_and_system_prompts_keep_the_principle():
    assert with_principle(ChatPrompt("x", "be brief"), "p") == ChatPrompt("x", "be brief\n\np")
    assert with_principle(ChatPrompt("x", raw=True), "p") == ChatPrompt("p\n\nx", None, True)
    # A template's default system prompt stays in the principled context: the contexts differ by
    # the principle alone.
    assert with_principle(ChatPrompt("x"), "p", "You are SmolLM.") == ChatPrompt("x", "You are SmolLM.\n\np")
    # Placement "user": after the user's message; the system prompt (or the template's) is untouched.
    assert with_principle(ChatPrompt("x", "sys"), "p", None, "user") == ChatPrompt("x\n\np", "sys")
    assert with_principle(ChatPrompt("x"), "p", None, "user") == ChatPrompt("x\n\np")
    assert with_principle(ChatPrompt("x", None, True), "p", None, "user") == ChatPrompt("p\n\nx", None, True)


def test_the_chat_templates_default_system_prompt_is_found(tiny_policy):
    assert template_system(tiny_policy, PROMPT) is None  # the tiny template adds none
    tokenizer = tiny_policy.tokenizer
    original = tokenizer.chat_template
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are Tiny.<|im_end|>\n{% endif %}" + original
    )
    try:
        assert template_system(tiny_policy, PROMPT) == "You are Tiny."
        assert template_system(tiny_policy, ChatPrompt("x", "own")) is None
    finally:
        tokenizer.chat_template = original


@pytest.mark.parametrize(
    "values, field",
    [
        ({"principle": ""}, "linear_alignment.principle"),
        ({"principle": "   "}, "linear_alignment.principle"),
        ({"principle": "x" * 2001}, "linear_alignment.principle"),
        ({"alpha": math.nan}, "linear_alignment.alpha"),
        ({"alpha": math.inf}, "linear_alignment.alpha"),
        ({"alpha": -1.0}, "linear_alignment.alpha"),
        ({"alpha": 101.0}, "linear_alignment.alpha"),
        ({"placement": "assistant"}, "linear_alignment.placement"),
    ],
)
def test_bad_linear_alignment_params_are_invalid_argument(values, field):
    with pytest.raises(InvalidArgument) as error:
        params(**values)
    assert error.value.field == field


def test_a_backend_without_tokenwise_steps_is_refused(tiny_policy):
    class SampleOnly:
        capabilities = frozenset({Capability.SAMPLE})

    with pytest.raises(FailedPrecondition, match=r"needs backend capabilities \['extend', 'tokenwise'\]"):
        strategy = get_strategy("linear_alignment")
        request = DecodeRequest(PROMPT, sampling(), parse_weights({}, ("a",)))
        strategy.prepare(request, strategy.Params(), SampleOnly(), None)
