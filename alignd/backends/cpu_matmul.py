"""Linear layers that multiply few rows fast on CPU.

A decoding step multiplies every weight matrix W [out, in] by 1 to a few dozen token rows x.
torch computes x @ W^T; on this machine's MKL that is slower for few rows than the same product
written W @ x^T (`benchmarks/cpu_matmul.py` on SmolLM2: a step of 1 row 1.9x, 2 rows 2.8x, 8 rows
1.2x, 32 rows 1.06x). A single row is doubled, because MKL's matrix-vector path is the slow one
(the 49152-row LM head alone: 10.5 ms as a matrix-vector product, 3.4 ms with two columns).
Above ROWS_LIMIT rows (long prefills) torch's own product is as fast, so it is used.

Only float32 CPU tensors take this path; other devices and dtypes call torch's linear unchanged.
The switch changes the class of the model's own modules in place (a model passed in is changed;
exact-type checks such as dynamic quantisation's no longer see nn.Linear).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROWS_LIMIT = 128


class SmallBatchLinear(torch.nn.Linear):
    """nn.Linear whose forward computes (W @ x^T)^T for at most ROWS_LIMIT float32 CPU rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if (
            not 0 < rows <= ROWS_LIMIT
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or self.weight.dtype != torch.float32
        ):
            return F.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, x.shape[-1])
        # W @ flat^T takes MKL's fast path only when flat is row-major (flat^T a transposed view).
        flat = flat.expand(2, -1).contiguous() if rows == 1 else flat.contiguous()
        out = torch.mm(self.weight, flat.t()).t()[:rows].contiguous()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def use_small_batch_linears(model: torch.nn.Module) -> int:
    """Switch every plain nn.Linear of `model` to SmallBatchLinear in place (same parameters,
    same results up to float rounding); returns how many were switched."""
    switched = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = SmallBatchLinear
            switched += 1
    return switched
