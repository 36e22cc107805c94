"""A decode stopped by a cancel still counts the tokens it generated (they count against the
caller's token quota), as the backend reports them or, where it cannot, at the call's maximum."""

import threading

import pytest

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeContext, DecodeRequest
from alignd.decoding.weights import parse_weights
from alignd.errors import Cancelled

PROMPT = ChatPrompt("Tell me something.")
SAMPLING = SamplingParams(temperature=1.0, max_tokens=10, seed=3)


class CancelAfter(threading.Event):
    """Reads as set from its `checks`-th look on: a cancel that arrives mid-decode, deterministically."""

    def __init__(self, checks: int) -> None:
        super().__init__()
        self.left = checks

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0


def _context(policy, scorer, cancel) -> DecodeContext:
    weights = parse_weights({}, scorer.objective_names)
    return DecodeContext(DecodeRequest(PROMPT, SAMPLING, weights, cancel=cancel), policy, scorer)


def test_a_sample_cut_off_midway_counts_the_tokens_it_generated(tiny_policy, letter_scorer):
    ctx = _context(tiny_policy, letter_scorer, CancelAfter(6))
    with pytest.raises(Cancelled) as stopped:
        ctx.sample(3)
    assert 0 < stopped.value.generated < 3 * SAMPLING.max_tokens
    assert ctx.usage.generated_tokens == stopped.value.generated


def test_an_extension_cut_off_midway_counts_its_tokens_too(tiny_policy, letter_scorer):
    ctx = _context(tiny_policy, letter_scorer, None)
    partial = ctx.extend(ctx.prefill(), 2, 3)
    counted = ctx.usage.generated_tokens
    ctx.request = DecodeRequest(PROMPT, SAMPLING, ctx.request.weights, cancel=CancelAfter(4))
    with pytest.raises(Cancelled) as stopped:
        ctx.extend(partial, 2, 8)
    assert 0 < stopped.value.generated < 2 * 2 * 8
    assert ctx.usage.generated_tokens == counted + stopped.value.generated


class _StoppingBackend:
    """The tiny model, stopping every sample without saying how far it got (as vLLM's aborted
    engine requests)."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def encode(self, prompt):
        return self.policy.encode(prompt)

    def sample(self, prompts, n, sampling, cancel):
        raise Cancelled("request cancelled; aborted in the engine")


def test_a_backend_that_cannot_say_is_charged_the_calls_maximum(tiny_policy, letter_scorer):
    ctx = _context(_StoppingBackend(tiny_policy), letter_scorer, None)
    with pytest.raises(Cancelled):
        ctx.sample(4)
    assert ctx.usage.generated_tokens == 4 * SAMPLING.max_tokens
