"""The Scorer interface: named objectives scored in batches (DESIGN.md section 2).

Every objective is oriented so that higher is better and documents its range.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ObjectiveInfo:
    name: str
    description: str
    min_value: float
    max_value: float
    higher_is_better: bool = True


class Objective(ABC):
    """One reward r_g(x, y): a batch of (prompt, response) pairs -> float[N]."""

    info: ObjectiveInfo

    @property
    def name(self) -> str:
        return self.info.name

    @abstractmethod
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Rewards for the pairs, one batched call, shape [N], float64."""


class Scorer(ABC):
    """Several objectives scored together: ``score(...) -> float[N, G]``."""

    @property
    @abstractmethod
    def objectives(self) -> tuple[ObjectiveInfo, ...]:
        """The G objectives, in column order."""

    @property
    def objective_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.objectives)

    @abstractmethod
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        """Rewards of complete responses, shape [N, G]."""

    def score_objectives(self, prompts: Sequence[str], responses: Sequence[str], names: Sequence[str]) -> np.ndarray:
        """Rewards for the named objectives only, [N, len(names)]."""
        return self.score(prompts, responses)[:, [self.objective_names.index(n) for n in names]]

    @property
    def value_objectives(self) -> frozenset[str]:
        """Objectives whose prefix values come from trained value heads."""
        return frozenset()

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """Values on a common scale for weighting (identity without normalisation statistics)."""
        return values

    def score_prefix(
        self, prompts: Sequence[str], prefixes: Sequence[str] | None, hidden: Any | None = None,
        objectives: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Estimated final rewards V_g of partial responses, [N, G], on each objective's scale.

        `hidden` holds the policy's final-layer hidden states after each prefix ([N, H]); value
        heads read them. Objectives without a head are applied to the partial text, so
        `prefixes` may be None only when heads cover everything asked for. `objectives` limits
        the work to those names; the other columns are NaN."""
        names = list(objectives) if objectives is not None else list(self.objective_names)
        if prefixes is None:
            raise ValueError(f"objectives {names} need the prefix text (no value heads)")
        values = np.full((len(prompts), len(self.objective_names)), np.nan)
        values[:, [self.objective_names.index(n) for n in names]] = self.score_objectives(prompts, prefixes, names)
        return values
