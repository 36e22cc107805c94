"""SmallBatchLinear: the same products as nn.Linear, switched on for CPU policies only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from alignd.backends import cpu_matmul
from alignd.backends.cpu_matmul import ROWS_LIMIT, SmallBatchLinear, use_small_batch_linears
from alignd.backends.transformers_policy import TransformersPolicy
from tests.tiny import tiny_model, tiny_tokenizer


def linear(bias: bool, dtype=torch.float32) -> SmallBatchLinear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(48, 80, bias=bias).to(dtype)
    use_small_batch_linears(layer)
    return layer


@pytest.mark.parametrize("shape", [(48,), (1, 48), (1, 1, 48), (2, 1, 48), (3, 5, 48), (ROWS_LIMIT + 3, 48)])
@pytest.mark.parametrize("bias", [False, True])
def test_small_batch_products_equal_torchs_linear(shape, bias):
    layer = linear(bias)
    x = torch.randn(*shape)
    out = layer(x)
    assert out.shape == (*shape[:-1], 80) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_few_rows_take_the_w_x_product_and_many_rows_torchs(monkeypatch):
    layer = linear(True)

    def refuse(*args, **kwargs):
        raise AssertionError("F.linear called")

    monkeypatch.setattr(cpu_matmul.F, "linear", refuse)
    layer(torch.randn(1, 48))
    layer(torch.randn(ROWS_LIMIT, 48))
    with pytest.raises(AssertionError, match=r"F\.linear called"):
        layer(torch.randn(ROWS_LIMIT + 1, 48))


def test_non_contiguous_inputs():
    layer = linear(True)
    x = torch.randn(3, 5, 48)
    for view in (x[:, -1:, :], x.transpose(0, 1), torch.randn(48, 4).t()):
        torch.testing.assert_close(layer(view), F.linear(view, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)


def test_a_row_depends_on_its_batch_mates_by_float_rounding_only():
    # The doubled single row and the kernels MKL picks per batch shape round differently (so do
    # torch's own), but never by more than float32 rounding.
    layer = linear(True)
    x = torch.randn(4, 48)
    alone = layer(x[:1])
    for rows in (2, 3, 4):
        torch.testing.assert_close(layer(x[:rows])[:1], alone, rtol=1e-6, atol=1e-6)


def test_non_float32_and_empty_inputs_use_torchs_linear_unchanged():
    layer = linear(True, torch.bfloat16)
    x = torch.randn(2, 48, dtype=torch.bfloat16)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    empty = linear(False)(torch.randn(0, 48))
    assert empty.shape == (0, 80)


def test_gradients_flow_like_nn_linear():
    layer = linear(True)
    x = torch.randn(3, 48, requires_grad=True)
    layer(x).square().sum().backward()
    grads = [x.grad, layer.weight.grad.clone(), layer.bias.grad.clone()]
    layer.zero_grad()
    expected = x.detach().clone().requires_grad_(True)
    F.linear(expected, layer.weight, layer.bias).square().sum().backward()
    for got, want in zip(grads, [expected.grad, layer.weight.grad, layer.bias.grad]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_cpu_policies_switch_every_linear_unless_asked_not_to():
    tokenizer = tiny_tokenizer()
    fast = TransformersPolicy(model=tiny_model(len(tokenizer)), tokenizer=tokenizer, device="cpu")
    plain = TransformersPolicy(
        model=tiny_model(len(tokenizer)), tokenizer=tokenizer, device="cpu", small_batch_matmul=False
    )
    kinds = {type(m) for m in fast.model.modules() if isinstance(m, torch.nn.Linear)}
    assert kinds == {SmallBatchLinear}
    assert not any(isinstance(m, SmallBatchLinear) for m in plain.model.modules())
