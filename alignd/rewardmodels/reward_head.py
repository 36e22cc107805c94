"""A trained Bradley-Terry reward head served as an objective.

It reads the policy's hidden state after the whole response, so scoring costs one batched
teacher-forced forward of the policy per prompt group; `featurize` supplies those states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from alignd.rewardmodels.base import Objective, ObjectiveInfo
from alignd.rewardmodels.heads import Head, HeadError

Featurize = Callable[[Sequence[str], Sequence[str]], torch.Tensor]


class RewardHeadObjective(Objective):
    def __init__(self, head: Head, featurize: Featurize, source: str = "reward_head") -> None:
        if head.metadata.kind != "reward" or len(head.objectives) != 1:
            raise HeadError("a reward head has kind 'reward' and exactly one output")
        self.head = head
        self.featurize = featurize
        accuracy = head.metadata.metrics.get("eval_accuracy")
        trained = f", held-out pairwise accuracy {accuracy:.2f}" if accuracy is not None else ""
        self.info = ObjectiveInfo(
            name=head.objectives[0],
            description=f"Bradley-Terry reward head on {head.metadata.base_model} hidden states{trained}",
            min_value=float("-inf"),
            max_value=float("inf"),
            source=source,
        )

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if not responses:
            return np.zeros(0)
        hidden = self.featurize(prompts, responses)
        return self.head.predict(hidden.to(self.head.mean.device)).squeeze(-1).double().cpu().numpy()
