"""positivity: VADER compound sentiment of the response.

Lexicon and rules (``vaderSentiment``), no model download. Range [-1, 1], higher is more positive.
VADER has no batch API and runs in pure Python at roughly 10k short texts per second, far below
the cost of generating them, so it is called per text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from alignd.rewardmodels.base import Objective, ObjectiveInfo


class PositivityObjective(Objective):
    info = ObjectiveInfo(
        name="positivity",
        description="VADER compound sentiment of the response (-1 very negative, +1 very positive)",
        min_value=-1.0,
        max_value=1.0,
    )

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        return np.array([self.analyzer.polarity_scores(r)["compound"] for r in responses], dtype=np.float64)
