"""Decoding strategies. Importing this package registers the built-in ones."""

from alignd.decoding import best_of_n, controlled, multi_objective, robust, sample  # noqa: F401  (registration)
from alignd.decoding.base import STRATEGIES, DecodeRequest, DecodeResult, Strategy, get_strategy

__all__ = ["STRATEGIES", "DecodeRequest", "DecodeResult", "Strategy", "get_strategy"]
