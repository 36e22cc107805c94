"""best_of_n: draw n responses from pi_ref in one batch, return argmax_i w^T r(x, y_i).

The n candidates share one prefill of the prompt (the policy copies its KV cache) and are scored
in one batched scorer call. KL(pi_bon || pi_ref) is reported twice, labelled: the classic upper
bound log n - (n-1)/n, and Beirami et al.'s estimator from the selected response's reference
probability (see `alignd.decoding.kl`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alignd.backends.base import Policy
from alignd.decoding.base import (
    Decode,
    DecodeContext,
    DecodeRequest,
    DecodeResult,
    KLEstimate,
    ScoredCandidate,
    Strategy,
    register,
)
from alignd.decoding.kl import best_of_n_kl_bound, best_of_n_kl_estimate
from alignd.decoding.params import param
from alignd.rewardmodels.base import Scorer


@dataclass(frozen=True)
class BestOfNParams:
    n: int = param(8, "number of candidate responses drawn from pi_ref", min=1, limit="max_candidates")


def sample_and_score(ctx: DecodeContext, n: int) -> list[ScoredCandidate]:
    """n responses from pi_ref in one batch, scored in one batched call (progress reported)."""
    (completions,) = ctx.sample(n)
    ctx.report("sampled", 0, f"sampled {n} response(s), {ctx.usage.generated_tokens} tokens")
    return ctx.score(completions)


@register
class BestOfNStrategy(Strategy[BestOfNParams]):
    name = "best_of_n"
    description = "Draw n responses in one batch, score all, return the best under the request's weights."
    Params = BestOfNParams

    def rows(self, params: BestOfNParams) -> int:
        return params.n

    def plan(self, request: DecodeRequest, params: BestOfNParams, policy: Policy, scorer: Scorer) -> Decode:
        def decode(ctx: DecodeContext) -> DecodeResult:
            scored = sample_and_score(ctx, params.n)
            best = scored[int(np.argmax([c.weighted_score for c in scored]))]
            ctx.report("scored", 1, f"best weighted score {best.weighted_score:.4f}", scored)
            log_eps = 0.0 if ctx.request.sampling.greedy else best.completion.logprob
            kl = [
                KLEstimate(
                    "best_of_n_bound",
                    "upper_bound",
                    best_of_n_kl_bound(params.n),
                    "log n - (n-1)/n: an upper bound on KL(best-of-n || pi_ref), not its value",
                ),
                KLEstimate(
                    "beirami_estimator",
                    "estimate",
                    best_of_n_kl_estimate(params.n, min(log_eps, 0.0)),
                    "Beirami et al. (2024) estimator from eps = pi_ref(selected response | prompt)",
                ),
            ]
            return ctx.finish(best, scored, kl)

        return decode
