"""Within-prompt ranking figures: how well a value estimate orders responses *to the same prompt*.

Blockwise steering only compares continuations of one prompt, so these are the figures that say
whether a value source can steer; an overall correlation can be high just by telling prompts
apart. Groups are lists of row indices that share a prompt.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.stats import spearmanr


def prompt_groups(prompts: Sequence[str]) -> list[list[int]]:
    """Row indices grouped by prompt, in first-seen order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, prompt in enumerate(prompts):
        groups[prompt].append(index)
    return list(groups.values())


def pair_accuracy(groups: Sequence[Sequence[int]], truth: np.ndarray, guess: np.ndarray) -> tuple[float, int]:
    """(share of same-prompt pairs with different final rewards that `guess` orders like `truth`,
    ties in `guess` counting one half; the number of such pairs)."""
    agree, pairs = 0.0, 0
    for indices in groups:
        t, g = truth[indices], guess[indices]
        upper = np.triu_indices(len(indices), k=1)
        dt = (t[:, None] - t[None, :])[upper]
        dg = (g[:, None] - g[None, :])[upper]
        decided = dt != 0
        signs = np.sign(dt[decided]) * np.sign(dg[decided])
        agree += float((signs > 0).sum() + 0.5 * (signs == 0).sum())
        pairs += int(decided.sum())
    return (agree / pairs if pairs else float("nan")), pairs


def within_prompt_spearman(groups: Sequence[Sequence[int]], truth: np.ndarray, guess: np.ndarray) -> float:
    """Mean over prompts of the Spearman correlation between guess and truth (prompts where
    either is constant are left out)."""
    rhos = []
    for indices in groups:
        t, g = truth[indices], guess[indices]
        if len(indices) > 2 and np.ptp(t) > 0 and np.ptp(g) > 0:
            rhos.append(float(spearmanr(t, g).statistic))
    return float(np.mean(rhos)) if rhos else float("nan")


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def centred(groups: Sequence[Sequence[int]], values: np.ndarray) -> np.ndarray:
    """`values` ([N] or [N, G]) minus each prompt's mean."""
    out = np.array(values, dtype=np.float64)
    for indices in groups:
        out[indices] -= out[indices].mean(axis=0)
    return out


def objective_conflicts(groups: Sequence[Sequence[int]], rewards: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(within-prompt correlation matrix of the objectives' final rewards [G, G]: negative where
    raising one lowers the other among responses to the same prompt; each objective's within-prompt
    standard deviation [G], ~0 for one that is constant given the prompt)."""
    within = centred(groups, rewards)
    spread = np.sqrt((within**2).mean(axis=0))
    g = rewards.shape[1]
    matrix = np.array([[pearson(within[:, a], within[:, b]) for b in range(g)] for a in range(g)])
    return matrix, spread
