"""The Scorer interface: named objectives scored in batches.

Every objective is oriented so that higher is better and documents its range.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignd.rewardmodels.value_sources import PREFIX, ObjectiveValueSources


@dataclass(frozen=True)
class ObjectiveInfo:
    name: str
    description: str
    min_value: float
    max_value: float
    higher_is_better: bool = True
    # Where the scores come from: "built-in", "reward_head <path>", "sequence_classification
    # <path> output <i>", "python <entry point>".
    source: str = "built-in"


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
    def value_sources(self) -> dict[str, ObjectiveValueSources]:
        """Per objective: the value sources that can estimate it and the one `auto` picks. Without
        value heads every objective is estimated by its own scorer on the partial text."""
        return {n: ObjectiveValueSources(n, (PREFIX,), PREFIX) for n in self.objective_names}

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """Values on a common scale for weighting (identity without normalisation statistics)."""
        return values

    def estimate_values(
        self,
        prompt: str,
        prefixes: Sequence[str] | None,
        hidden: Any | None,
        sources: Mapping[str, str],
    ) -> np.ndarray:
        """Estimated final rewards V_g of R partial responses to one prompt, [R, G] on each
        objective's scale; NaN in the columns of objectives not in `sources` (name -> source).

        `prefixes` are the partial response texts (needed by the `prefix` source), `hidden` the
        policy's final-layer hidden states after each prefix, [R, H] (needed by `heads`). All
        rows go to each scorer in one batched call."""
        values = np.full((_rows(prefixes, hidden), len(self.objective_names)), np.nan)
        other = {s for s in sources.values() if s != PREFIX}
        if other:
            raise ValueError(f"{type(self).__name__} has no value source {sorted(other)}")
        if sources:
            if prefixes is None:
                raise ValueError(f"objectives {list(sources)} are estimated from the prefix text, which was not given")
            values[:, [self.objective_names.index(n) for n in sources]] = self.score_objectives(
                [prompt] * len(prefixes), prefixes, list(sources)
            )
        return values


def _rows(prefixes: Sequence[str] | None, hidden: Any | None) -> int:
    if prefixes is not None:
        return len(prefixes)
    if hidden is not None:
        return int(hidden.shape[0])
    raise ValueError("value estimates need the prefix texts or the hidden states")
