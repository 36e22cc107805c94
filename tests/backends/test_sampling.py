import math

import numpy as np
import pytest
import torch

from alignd import sampling
from alignd.backends.base import SamplingParams
from alignd.sampling import RowStreams, draw, reference_logprobs, stream_uniforms


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
    tokens, logprobs = draw(logits, SamplingParams(temperature=0.0), RowStreams(0).new(2), np.zeros(2))
    assert tokens.tolist() == [1, 0] and logprobs.tolist() == [0.0, 0.0]


def test_draw_never_picks_masked_tokens_and_reports_their_logprob():
    logits = torch.zeros((512, 6))
    sampling = SamplingParams(temperature=1.0, top_k=2)
    logits[:, 4] = 1.0
    logits[:, 5] = 0.9
    tokens, logprobs = draw(logits, sampling, RowStreams(1).new(512), np.zeros(512))
    assert set(tokens.tolist()) == {4, 5}
    expected = reference_logprobs(logits, sampling).gather(-1, tokens[:, None]).squeeze(-1)
    assert torch.allclose(logprobs, expected)


@pytest.mark.parametrize("vocab", [3, 300, 1000])
def test_draws_follow_the_distribution(vocab):
    # The two-round race over blocks of 256 tokens is exact, whether or not the vocabulary fills
    # its last block.
    torch.manual_seed(vocab)
    probs = torch.softmax(torch.randn(vocab) * 2, dim=-1)
    probs[torch.argsort(probs)[: vocab // 3]] = 0.0  # some tokens never drawn
    probs /= probs.sum()
    rows = 20_000
    logits = torch.log(probs).expand(rows, vocab)
    tokens, _ = draw(logits, SamplingParams(temperature=1.0), RowStreams(7).new(rows), np.zeros(rows))
    freq = torch.bincount(tokens, minlength=vocab).double() / rows
    assert (freq[probs == 0] == 0).all()
    assert torch.allclose(freq, probs.double(), atol=4 * math.sqrt(0.25 / rows))


def test_float_rounding_of_the_logits_rarely_changes_a_draw():
    # Merged steps change a row's logits by float rounding; the draw must stay the same but for
    # near-ties. A flat 50k vocabulary is the hard case: inverting each row's CDF at one uniform
    # changed 6% of these draws.
    rows, vocab = 400, 49152
    torch.manual_seed(0)
    logits = torch.randn(rows, vocab) * 3
    rounded = logits * (1 + 1e-5 * torch.randn(rows, vocab))
    keys, positions = RowStreams(11).new(rows), np.full(rows, 5)
    first, _ = draw(logits, SamplingParams(temperature=1.0), keys, positions)
    second, _ = draw(rounded, SamplingParams(temperature=1.0), keys, positions)
    assert (first != second).sum() <= 1


def test_a_row_draws_the_same_token_whatever_the_other_rows():
    logits = torch.randn(6, 1000)
    keys, positions = RowStreams(3).new(6), np.arange(6)
    together, _ = draw(logits, SamplingParams(temperature=1.0), keys, positions)
    apart, _ = draw(logits[[4, 1]], SamplingParams(temperature=1.0), keys[[4, 1]], positions[[4, 1]])
    assert apart.tolist() == together[[4, 1]].tolist()


def test_streams_are_per_row_and_reproducible():
    keys = RowStreams(3).new(4)
    assert len(set(keys.tolist())) == 4 and np.array_equal(keys, RowStreams(3).new(4))
    assert not np.array_equal(keys, RowStreams(4).new(4))
    # A row's stream does not depend on the other rows: the first rows of a larger batch match.
    assert np.array_equal(RowStreams(3).new(8)[:4], keys)
    positions, indices = np.arange(4), np.tile(np.arange(3), (4, 1))
    u = stream_uniforms(keys, positions, indices)
    assert np.array_equal(stream_uniforms(keys[[2, 0]], positions[[2, 0]], indices[[2, 0]]), u[[2, 0]])
    assert ((u > 0) & (u < 1)).all() and len(set(u.ravel().tolist())) == 12


def test_copied_rows_never_share_a_stream():
    # Rows kept and copied again and again (evolutionary keeps several beams, blockwise copies a
    # block K times): the first copy of a row keeps its key, every other copy gets a key no row
    # of the request has had.
    streams = RowStreams(5)
    keys = streams.new(2)
    first = keys.copy()
    issued = set(keys.tolist())
    for rows in ([0, 1, 0, 1], [0, 0, 2, 2], [1, 1, 1, 3], [0, 3, 0, 3]):
        occurrence = np.array([rows[:i].count(r) for i, r in enumerate(rows)])
        copied = streams.copies(keys, rows)
        fresh = copied[occurrence > 0].tolist()
        assert not issued & set(fresh) and len(set(copied.tolist())) == len(rows)
        assert np.array_equal(copied[occurrence == 0], keys[rows][occurrence == 0])
        issued |= set(fresh)
        keys = copied
    assert RowStreams(5).new(2).tolist() == first.tolist()


@pytest.mark.parametrize("bits", [0, (1 << 64) - 1])
def test_uniforms_stay_strictly_inside_the_unit_interval(monkeypatch, bits):
    # The extreme hash outputs, through stream_uniforms' conversion to float64.
    monkeypatch.setattr(sampling, "_mix64", lambda x: np.full_like(x, bits))
    u = stream_uniforms(RowStreams(0).new(1), np.zeros(1), np.zeros((1, 1)))
    assert 0.0 < u[0, 0] < 1.0
    assert np.isfinite(np.log(-np.log(u))).all()


def test_nan_logits_are_an_error_not_a_token():
    logits = torch.zeros((2, 10))
    logits[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        draw(logits, SamplingParams(temperature=1.0), RowStreams(0).new(2), np.zeros(2))
