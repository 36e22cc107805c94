"""Preference vectors applied per row inside the forward pass, without merging weights.

Every adapted linear layer gets, beside its own product, the vectors' low-rank deltas scaled by
each row's strengths: y_row = W x_row + sum_p eta_{row,p} up_p (down_p x_row). The factors of all
vectors are stacked once ([R_total, in] and [out, R_total]), so a layer adds two thin products
and one scaling for the whole batch, whatever the mix of strengths: requests with different
eta decode in one batch, and no copy of the model is ever merged. A row's result equals the
output of a model whose weights are theta_base + sum_p eta_p phi_p (up to float rounding).

The strengths of the forward in progress are set around the model call (`RowSteering.rows`):
forwards run one at a time (the backend's step batcher), and a forward with no steered row skips
the deltas entirely.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from alignd.backends.preference_vectors import PreferenceVectors


class _StackedLayer:
    """One adapted layer's factors for every vector, stacked, and which vector owns each rank."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, owner: tuple[int, ...]) -> None:
        self.down = down  # [R_total, in]
        self.up = up  # [out, R_total]
        self.owner = owner  # the vector index of each rank (layers adapted by the same vectors share it)


class RowSteering:
    """Forward hooks on the adapted layers of `model` that add each row's deltas."""

    def __init__(self, model: torch.nn.Module, vectors: PreferenceVectors) -> None:
        vectors.check_model(model)
        self.names = vectors.names
        self.index = {name: i for i, name in enumerate(self.names)}
        parameter = next(model.parameters())
        dtype, device = parameter.dtype, parameter.device
        self.dtype = dtype
        modules = dict(model.named_modules())
        layers = sorted({layer for deltas in vectors.deltas.values() for layer in deltas})
        # Per forward in progress: each rank's strength per row, [rows, 1, R_total], by owner.
        self._per_rank: dict[tuple[int, ...], torch.Tensor] | None = None
        self._owners: dict[tuple[int, ...], torch.Tensor] = {}  # owner -> its index tensor
        for layer in layers:
            downs, ups, owners = [], [], []
            for name in self.names:
                delta = vectors.deltas[name].get(layer)
                if delta is None:
                    continue
                downs.append(delta.down)
                ups.append(delta.up)
                owners += [self.index[name]] * delta.down.shape[0]
            stacked = _StackedLayer(
                torch.cat(downs).to(device, dtype).contiguous(),
                torch.cat(ups, dim=1).to(device, dtype).contiguous(),
                tuple(owners),
            )
            self._owners.setdefault(stacked.owner, torch.tensor(stacked.owner, device=device))
            modules[layer].register_forward_hook(self._hook(stacked))

    def strengths(self, rows: Sequence[dict[str, float]], device: torch.device) -> torch.Tensor | None:
        """Per-row strengths as a tensor [rows, vectors] (unknown names are the caller's error),
        or None when no row is steered."""
        if not any(any(eta != 0.0 for eta in row.values()) for row in rows):
            return None
        table = torch.zeros((len(rows), len(self.names)), dtype=torch.float32)
        for r, row in enumerate(rows):
            for name, eta in row.items():
                table[r, self.index[name]] = eta
        return table.to(device)

    @contextmanager
    def rows(self, scales: torch.Tensor | None) -> Iterator[None]:
        """Steer the forwards inside with these per-row strengths [rows, vectors] (None: none)."""
        if scales is not None:
            self._per_rank = {
                owner: scales[:, index].to(self.dtype).unsqueeze(1) for owner, index in self._owners.items()
            }
        try:
            yield
        finally:
            self._per_rank = None

    def _hook(self, layer: _StackedLayer) -> Any:
        def add_deltas(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
            if self._per_rank is None:
                return output
            # x [rows, tokens, in] -> [rows, tokens, R_total], each rank scaled by its vector's
            # strength in that row, -> [rows, tokens, out].
            low = torch.nn.functional.linear(inputs[0], layer.down) * self._per_rank[layer.owner]
            return output + torch.nn.functional.linear(low, layer.up)

        return add_deltas
