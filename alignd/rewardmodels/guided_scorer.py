"""A Scorer that estimates prefix values with trained value heads (DESIGN.md section 2).

Final responses are scored by the objectives themselves; prefixes by the value heads where a
head covers the objective, else by the objective applied to the partial text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from alignd.rewardmodels.base import ObjectiveInfo, Scorer
from alignd.rewardmodels.heads import Head, HeadError


class ValueGuidedScorer(Scorer):
    def __init__(self, base: Scorer, value_heads: Head) -> None:
        if value_heads.metadata.kind != "value":
            raise HeadError(f"expected value heads, got a {value_heads.metadata.kind!r} head")
        names = base.objective_names
        unknown = [o for o in value_heads.objectives if o not in names]
        if unknown:
            raise HeadError(f"value heads predict objectives {unknown} that this server does not score {list(names)}")
        self.base = base
        self.value_heads = value_heads
        # Column of each head output in the scorer's objective order.
        self._columns = [names.index(o) for o in value_heads.objectives]

    @property
    def objectives(self) -> tuple[ObjectiveInfo, ...]:
        return self.base.objectives

    @property
    def value_objectives(self) -> frozenset[str]:
        return frozenset(self.value_heads.objectives)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.base.score(prompts, responses)

    def score_prefix(
        self, prompts: Sequence[str], prefixes: Sequence[str] | None, hidden: Any | None = None,
        objectives: Sequence[str] | None = None,
    ) -> np.ndarray:
        if hidden is None:
            raise HeadError("value heads need the policy's hidden states for the prefixes")
        wanted = list(objectives) if objectives is not None else list(self.objective_names)
        uncovered = [n for n in wanted if n not in self.value_objectives]
        values = np.full((len(prompts), len(self.objectives)), np.nan)
        if uncovered:
            if prefixes is None:
                raise HeadError(f"objectives {uncovered} have no value head and need the prefix text")
            columns = [self.objective_names.index(n) for n in uncovered]
            values[:, columns] = self.base.score_objectives(prompts, prefixes, uncovered)
        # The heads run for every objective they cover: one small matmul, cheaper than slicing.
        predicted = self.value_heads.predict(torch.as_tensor(hidden).to(self.value_heads.mean.device))
        values[:, self._columns] = predicted.double().cpu().numpy()
        return values

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """z-scores of head-covered columns with the heads' training statistics, so that
        preference weights compare objectives on one scale; other columns unchanged."""
        z = values.copy()
        mean = self.value_heads.mean.cpu().double().numpy()
        std = self.value_heads.std.cpu().double().numpy()
        z[:, self._columns] = (values[:, self._columns] - mean) / std
        return z
