"""Per-request preference weights over the server's objectives."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from alignd.errors import InvalidArgument


@dataclass(frozen=True)
class PreferenceWeights:
    """Weights w aligned with the scorer's objective columns, normalised to sum 1."""

    names: tuple[str, ...]
    vector: np.ndarray  # shape [G], w >= 0, sum 1

    def weighted(self, rewards: np.ndarray) -> np.ndarray:
        """w^T r for each row of rewards [N, G]."""
        return rewards @ self.vector

    def as_dict(self) -> dict[str, float]:
        return {n: float(w) for n, w in zip(self.names, self.vector)}


def parse_weights(
    requested: Mapping[str, float], objective_names: Sequence[str], defaults: Mapping[str, float] | None = None
) -> PreferenceWeights:
    """Validate and normalise requested weights; empty means the defaults (uniform if none).

    Objectives the request does not name get weight 0. Errors name the field as `weights[<name>]`.
    """
    names = tuple(objective_names)
    source = requested if requested else (defaults or {n: 1.0 for n in names})
    vector = np.zeros(len(names), dtype=np.float64)
    for name, value in source.items():
        field = f"weights[{name}]"
        if name not in names:
            raise InvalidArgument(field, f"unknown objective; this server scores {list(names)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgument(field, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InvalidArgument(field, f"must be finite, got {value}")
        if value < 0:
            raise InvalidArgument(field, f"must be >= 0, got {value}")
        vector[names.index(name)] = float(value)
    total = vector.sum()
    if total <= 0:
        raise InvalidArgument("weights", "at least one weight must be positive")
    return PreferenceWeights(names, vector / total)
