"""soft_best_of_n: draw n responses from pi_ref, return response i with probability
exp(w^T r_i / beta) / sum_j exp(w^T r_j / beta) (Verdun et al., "Soft Best-of-n Sampling for
Model Alignment", 2025).

beta -> 0 is best_of_n (the argmax); beta -> inf is one sample of pi_ref. In between it trades
reward for KL smoothly and keeps the answers diverse, which best_of_n's argmax does not. The
candidates are those best_of_n draws with the same seed (one batch, one scorer call); the choice
draws from its own stream of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alignd.backends.base import Policy
from alignd.decoding.base import Decode, DecodeContext, DecodeRequest, DecodeResult, KLEstimate, Strategy, register
from alignd.decoding.best_of_n import sample_and_score
from alignd.decoding.kl import soft_best_of_n_kl_bound
from alignd.decoding.params import param
from alignd.rewardmodels.base import Scorer

# Keeps the choice's random stream apart from the sampling's, for the same request seed.
_CHOICE_STREAM = 0x50F7


@dataclass(frozen=True)
class SoftBestOfNParams:
    n: int = param(8, "number of candidate responses drawn from pi_ref", min=1, limit="max_candidates")
    beta: float = param(
        0.1,
        "temperature of the choice: response i with probability proportional to exp(w^T r_i / beta) "
        "(-> 0: best_of_n; large: pi_ref)",
        above=0.0,
        max=1e4,
    )


def choice_probabilities(scores: np.ndarray, beta: float) -> np.ndarray:
    """softmax(scores / beta), stable for small beta (where it tends to the argmax, ties shared)."""
    tilt = np.exp((scores - scores.max()) / beta)
    return tilt / tilt.sum()


def weighted_range(scorer: Scorer, weights: np.ndarray) -> float:
    """Width of the range w^T r can take: sum_g w_g (max_g - min_g) (inf for an unbounded one)."""
    widths = np.array([o.max_value - o.min_value for o in scorer.objectives], dtype=np.float64)
    used = weights > 0
    return float(weights[used] @ widths[used]) if used.any() else 0.0


@register
class SoftBestOfNStrategy(Strategy[SoftBestOfNParams]):
    name = "soft_best_of_n"
    description = (
        "Draw n responses in one batch, score all, return one at random with probability "
        "proportional to exp(w^T r / beta): best_of_n as beta -> 0, pi_ref as beta grows."
    )
    Params = SoftBestOfNParams

    def rows(self, params: SoftBestOfNParams) -> int:
        return params.n

    def plan(self, request: DecodeRequest, params: SoftBestOfNParams, policy: Policy, scorer: Scorer) -> Decode:
        spread = weighted_range(scorer, request.weights.vector)

        def decode(ctx: DecodeContext) -> DecodeResult:
            scored = sample_and_score(ctx, params.n)
            scores = np.array([c.weighted_score for c in scored])
            probabilities = choice_probabilities(scores, params.beta)
            seed = ctx.request.sampling.seed
            rng = np.random.default_rng(None if seed is None else [seed, _CHOICE_STREAM])
            pick = int(rng.choice(params.n, p=probabilities))
            best = int(np.argmax(scores))
            ctx.report(
                "chosen",
                1,
                f"drew response {pick + 1}/{params.n} (probability {probabilities[pick]:.3f}; "
                f"the best is {best + 1}, weighted score {scores[best]:.4f})",
                scored,
            )
            kl = [
                KLEstimate(
                    "soft_best_of_n_bound",
                    "upper_bound",
                    soft_best_of_n_kl_bound(params.n, params.beta, spread),
                    f"log n - log(1 + (n-1) exp(-range/beta)), range {spread:.3g} of w^T r from the objectives' "
                    "documented ranges: an upper bound on KL(soft best-of-n || pi_ref)",
                )
            ]
            details = {
                "chosen_probability": float(probabilities[pick]),
                "chose_best": float(scores[pick] == scores[best]),
            }
            return ctx.finish(scored[pick], scored, kl, details)

        return decode
