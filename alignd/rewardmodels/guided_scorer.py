"""A Scorer that can estimate prefix values with trained value heads.

Final responses are scored by the objectives themselves. A prefix's value comes from the source
each request resolves per objective (`value_sources`): the heads, where they cover the objective,
or the objective applied to the partial text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from alignd.rewardmodels.base import ObjectiveInfo, Scorer
from alignd.rewardmodels.heads import Head, HeadError
from alignd.rewardmodels.value_sources import HEADS, ObjectiveValueSources, pair_accuracy_key, pick_auto


class ValueGuidedScorer(Scorer):
    def __init__(self, base: Scorer, value_heads: Head) -> None:
        if value_heads.metadata.kind != "value":
            raise HeadError(f"expected value heads, got a {value_heads.metadata.kind!r} head")
        names = base.objective_names
        # Heads trained for more objectives than this server scores serve the ones it does.
        self.covered = [o for o in value_heads.objectives if o in names]
        if not self.covered:
            raise HeadError(
                f"value heads predict {value_heads.objectives}, none of which this server scores {list(names)}"
            )
        self.base = base
        self.value_heads = value_heads
        # For each covered objective: its scorer column and its head output.
        self._columns = [names.index(o) for o in self.covered]
        self._outputs = [value_heads.objectives.index(o) for o in self.covered]

    @property
    def objectives(self) -> tuple[ObjectiveInfo, ...]:
        return self.base.objectives

    @property
    def value_sources(self) -> dict[str, ObjectiveValueSources]:
        """Heads and prefix scoring for the objectives the heads cover, `auto` by the within-prompt
        pair accuracy measured at training time (stored in the heads' metadata)."""
        sources = self.base.value_sources
        metrics = self.value_heads.metadata.metrics
        for name in self.covered:
            available = (HEADS, *sources[name].available)
            measured = {
                s: float(metrics[pair_accuracy_key(name, s)])
                for s in available
                if pair_accuracy_key(name, s) in metrics
            }
            sources[name] = ObjectiveValueSources(name, available, pick_auto(name, available, measured), measured)
        return sources

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return self.base.score(prompts, responses)

    def estimate_values(
        self,
        prompt: str,
        prefixes: Sequence[str] | None,
        hidden: Any | None,
        sources: Mapping[str, str],
    ) -> np.ndarray:
        by_heads = [n for n, s in sources.items() if s == HEADS]
        values = self.base.estimate_values(prompt, prefixes, hidden, {n: s for n, s in sources.items() if s != HEADS})
        if by_heads:
            if hidden is None:
                raise HeadError("value heads need the policy's hidden states for the prefixes")
            # One small matmul for every output; only the asked-for columns are kept.
            predicted = self.value_heads.predict(torch.as_tensor(hidden).to(self.value_heads.mean.device))
            columns = [self.objective_names.index(n) for n in by_heads]
            outputs = [self.value_heads.objectives.index(n) for n in by_heads]
            values[:, columns] = predicted[:, outputs].double().cpu().numpy()
        return values

    def standardise(self, values: np.ndarray) -> np.ndarray:
        """z-scores of head-covered columns with the heads' training statistics, so that
        preference weights compare objectives on one scale; other columns unchanged."""
        z = values.copy()
        mean = self.value_heads.mean.cpu().double().numpy()
        std = self.value_heads.std.cpu().double().numpy()
        z[:, self._columns] = (values[:, self._columns] - mean[self._outputs]) / std[self._outputs]
        return z
