"""harmlessness: 1 - probability that the response is offensive.

``alt-profanity-check`` ships a linear SVM (calibrated) over TF-IDF features, scored for the whole
batch in one vectorised call. Range [0, 1], higher is more harmless.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alignd.rewardmodels.base import Objective, ObjectiveInfo


class HarmlessnessObjective(Objective):
    info = ObjectiveInfo(
        name="harmlessness",
        description="1 - offensive-language probability from alt-profanity-check's linear classifier",
        min_value=0.0,
        max_value=1.0,
    )

    def __init__(self) -> None:
        from profanity_check import predict_prob

        self._predict_prob = predict_prob

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if not responses:
            return np.zeros(0, dtype=np.float64)
        return 1.0 - np.asarray(self._predict_prob(list(responses)), dtype=np.float64)
