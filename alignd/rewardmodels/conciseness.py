"""conciseness: how well the response keeps within a target length in words.

c = 1 for 1..target words, target / words beyond it (halves at twice the target), and 0 for an
empty response, so saying nothing is not the most concise answer. Range [0, 1], higher is better.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from alignd.rewardmodels.base import Objective, ObjectiveInfo

_WORD = re.compile(r"\S+")


class ConcisenessObjective(Objective):
    def __init__(self, target_words: int = 60) -> None:
        if target_words < 1:
            raise ValueError("target_words must be >= 1")
        self.target_words = target_words
        self.info = ObjectiveInfo(
            name="conciseness",
            description=f"1 up to {target_words} words, target/words beyond, 0 when empty",
            min_value=0.0,
            max_value=1.0,
        )

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        words = np.array([len(_WORD.findall(r)) for r in responses], dtype=np.float64)
        return np.where(words == 0, 0.0, np.minimum(1.0, self.target_words / np.maximum(words, 1.0)))
