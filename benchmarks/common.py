"""Shared set-up for the benchmarks: the embedded model, the served scorer, statistics."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from alignd import models
from alignd.backends.loading import load_policy
from alignd.config import ServerConfig
from alignd.server.app import load_scorer

# Two-sided 95% Student t quantiles by degrees of freedom (normal beyond the table).
_T95 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    15: 2.131,
    20: 2.086,
    25: 2.060,
    30: 2.042,
    40: 2.021,
    60: 2.000,
    120: 1.980,
}


def t95(dof: int) -> float:
    if dof <= 0:
        return math.inf
    key = max(k for k in _T95 if k <= dof)
    return _T95[key] if dof <= 120 else 1.960


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval."""
    if len(values) < 2:
        return (values[0] if values else math.nan), math.inf
    return statistics.mean(values), t95(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def prompt_set(split: str, limit: int = 0) -> list[str]:
    """The shipped prompts of `split` ("eval" is held out), the first `limit` of them (0: all)."""
    from alignd.training.data import load_prompts

    prompts = load_prompts(split)
    return prompts[:limit] if limit else prompts


def served_policy_and_scorer(objectives: Sequence[str] | None = None):
    """The embedded model with the scorer `alignd serve` would build (shipped value heads)."""
    policy = load_policy(models.DEFAULT_MODEL)
    config = ServerConfig(**({"objectives": tuple(objectives)} if objectives else {}))
    scorer, _ = load_scorer(config, policy)
    return policy, scorer


def paired(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-prompt differences a - b (the same prompts and seeds in both runs)."""
    if len(a) != len(b):
        raise ValueError(f"paired runs of {len(a)} and {len(b)} prompts")
    return [x - y for x, y in zip(a, b)]


def shipped_or_given_vectors(path: str):
    """Preference vectors from `path`, or those shipped for the embedded model (the benchmarks'
    --vectors option); exits with a hint when there are none."""
    from alignd.backends.preference_vectors import PreferenceVectors, shipped_vectors

    found = path or shipped_vectors(models.DEFAULT_MODEL)
    if found is None:
        raise SystemExit("no vectors shipped for the embedded model: run `make vectors` or pass --vectors")
    return PreferenceVectors.load(found)
