import math

import torch

from alignd.backends.base import SamplingParams
from alignd.sampling import draw, make_generator, reference_logprobs


def test_reference_logprobs_normalise_over_the_kept_support():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    logprobs = reference_logprobs(logits, SamplingParams(temperature=0.7, top_k=3))
    assert math.isclose(logprobs.exp().sum().item(), 1.0, rel_tol=1e-6)
    assert torch.isinf(logprobs[0, 3:]).all() and torch.isfinite(logprobs[0, :3]).all()


def test_top_p_keeps_the_smallest_prefix_reaching_p_and_always_the_top_token():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logprobs = reference_logprobs(probs.log(), SamplingParams(temperature=1.0, top_p=0.8))
    kept = torch.isfinite(logprobs[0])
    assert kept.tolist() == [True, True, False, False]
    only_top = reference_logprobs(probs.log(), SamplingParams(temperature=1.0, top_p=1e-6))
    assert torch.isfinite(only_top[0]).tolist() == [True, False, False, False]


def test_temperature_scales_logits_before_softmax():
    logits = torch.tensor([[1.0, 0.0]])
    got = reference_logprobs(logits, SamplingParams(temperature=0.5))
    expected = torch.log_softmax(logits / 0.5, dim=-1)
    assert torch.allclose(got, expected)


def test_greedy_draw_is_argmax_with_zero_logprob():
    logits = torch.tensor([[0.1, 3.0, 0.2], [5.0, 0.0, 0.0]])
    tokens, logprobs = draw(logits, SamplingParams(temperature=0.0), make_generator(0, "cpu"))
    assert tokens.tolist() == [1, 0] and logprobs.tolist() == [0.0, 0.0]


def test_draw_never_picks_masked_tokens_and_reports_their_logprob():
    logits = torch.zeros((512, 6))
    sampling = SamplingParams(temperature=1.0, top_k=2)
    logits[:, 4] = 1.0
    logits[:, 5] = 0.9
    tokens, logprobs = draw(logits, sampling, make_generator(1, "cpu"))
    assert set(tokens.tolist()) == {4, 5}
    expected = reference_logprobs(logits, sampling).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.allclose(logprobs, expected)
