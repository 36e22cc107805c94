import math

import numpy as np
import torch

from alignd.backends.base import SamplingParams
from alignd.sampling import child_keys, draw, reference_logprobs, stream_keys, stream_uniforms


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
    tokens, logprobs = draw(logits, SamplingParams(temperature=0.0), stream_uniforms(stream_keys(0, 2), np.zeros(2)))
    assert tokens.tolist() == [1, 0] and logprobs.tolist() == [0.0, 0.0]


def test_draw_never_picks_masked_tokens_and_reports_their_logprob():
    logits = torch.zeros((512, 6))
    sampling = SamplingParams(temperature=1.0, top_k=2)
    logits[:, 4] = 1.0
    logits[:, 5] = 0.9
    tokens, logprobs = draw(logits, sampling, stream_uniforms(stream_keys(1, 512), np.zeros(512)))
    assert set(tokens.tolist()) == {4, 5}
    expected = reference_logprobs(logits, sampling).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.allclose(logprobs, expected)


def test_draw_inverts_the_cdf_at_each_rows_uniform():
    logits = torch.log(torch.tensor([[0.2, 0.0, 0.5, 0.3]] * 4))
    tokens, _ = draw(logits, SamplingParams(temperature=1.0), np.array([0.0, 0.19, 0.2, 0.999]))
    # Bins: [0, 0.2) -> 0, token 1 has no mass, [0.2, 0.7) -> 2, [0.7, 1) -> 3.
    assert tokens.tolist() == [0, 0, 2, 3]


def test_draws_follow_the_distribution():
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3]])).expand(20_000, 3)
    uniforms = stream_uniforms(stream_keys(7, 20_000), np.zeros(20_000))
    tokens, _ = draw(logits, SamplingParams(temperature=1.0), uniforms)
    freq = torch.bincount(tokens, minlength=3).double() / 20_000
    assert torch.allclose(freq, torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64), atol=0.015)


def test_streams_are_per_row_and_reproducible():
    keys = stream_keys(3, 4)
    assert len(set(keys.tolist())) == 4 and np.array_equal(keys, stream_keys(3, 4))
    assert not np.array_equal(keys, stream_keys(4, 4))
    # A row's stream does not depend on the other rows: the first rows of a larger batch match.
    assert np.array_equal(stream_keys(3, 8)[:4], keys)
    positions = np.arange(4)
    u = stream_uniforms(keys, positions)
    assert np.array_equal(stream_uniforms(keys[[2, 0]], positions[[2, 0]]), u[[2, 0]])
    assert ((u >= 0) & (u < 1)).all() and len(set(u.tolist())) == 4
    # Copies: the first copy of a row keeps its stream, later copies get new, distinct ones.
    children = child_keys(keys[[1, 1, 1]], np.array([0, 1, 2]))
    assert children[0] == keys[1] and len(set(children.tolist())) == 3
