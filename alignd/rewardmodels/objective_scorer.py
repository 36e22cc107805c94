"""A Scorer over a list of Objectives: one batched call per objective, stacked as columns.

Objectives that read outputs of one shared model (`shared_model`: several outputs of a
multi-attribute reward model) are scored together: one call of the model for the group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from alignd.rewardmodels.base import Objective, ObjectiveInfo, Scorer


class ObjectiveScorer(Scorer):
    def __init__(self, objectives: Sequence[Objective]) -> None:
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate objective names: {names}")
        if not objectives:
            raise ValueError("a scorer needs at least one objective")
        self._objectives = list(objectives)

    @property
    def objectives(self) -> tuple[ObjectiveInfo, ...]:
        return tuple(o.info for o in self._objectives)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.score_objectives(prompts, responses, self.objective_names)

    def score_objectives(self, prompts: Sequence[str], responses: Sequence[str], names: Sequence[str]) -> np.ndarray:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
        if not responses:
            return np.zeros((0, len(names)), dtype=np.float64)
        by_name = {o.name: o for o in self._objectives}
        columns: dict[str, np.ndarray] = {}
        shared: dict[int, list[Any]] = {}
        for name in names:
            model = getattr(by_name[name], "shared_model", None)
            if model is None:
                columns[name] = by_name[name].score(prompts, responses)
            else:
                shared.setdefault(id(model), []).append(by_name[name])
        for group in shared.values():
            raw = group[0].model_scores(prompts, responses)
            for objective in group:
                columns[objective.name] = objective.from_model_scores(raw)
        return np.stack([columns[n] for n in names], axis=1)
