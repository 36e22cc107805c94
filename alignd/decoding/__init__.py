"""Decoding strategies. Importing this package registers the built-in ones."""

from alignd.decoding import (  # noqa: F401  (registration)
    best_of_n,
    controlled,
    evolutionary,
    linear_alignment,
    multi_objective,
    robust,
    sample,
    soft_best_of_n,
    speculative_best_of_n,
)
from alignd.decoding.base import STRATEGIES, DecodeRequest, DecodeResult, Strategy, get_strategy

__all__ = ["STRATEGIES", "DecodeRequest", "DecodeResult", "Strategy", "get_strategy"]
