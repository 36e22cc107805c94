"""best_of_n: draw n responses from pi_ref in one batch, return argmax_i w^T r(x, y_i).

The n candidates share one prefill of the prompt (the policy copies its KV cache) and are scored
in one batched scorer call. KL(pi_bon || pi_ref) is reported twice, labelled: the classic upper
bound log n - (n-1)/n, and Beirami et al.'s estimator from the selected response's reference
probability (see `alignd.decoding.kl`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from alignd.backends.base import Policy
from alignd.decoding.base import (
    DecodeRequest,
    DecodeResult,
    KLEstimate,
    Strategy,
    Usage,
    draw_candidates,
    finish,
    register,
    report,
    score_candidates,
)
from alignd.decoding.kl import best_of_n_kl_bound, best_of_n_kl_estimate
from alignd.decoding.params import param
from alignd.rewardmodels.base import Scorer


@register
class BestOfNStrategy(Strategy):
    name = "best_of_n"
    description = "Draw n responses in one batch, score all, return the best under the request's weights."

    @dataclass(frozen=True)
    class Params:
        n: int = param(8, "number of candidate responses drawn from pi_ref", min=1, limit="max_candidates")

    def rows(self, params: Params) -> int:
        return params.n

    def decode(self, request: DecodeRequest, params: Params, policy: Policy, scorer: Scorer) -> DecodeResult:
        started = time.perf_counter()
        usage = Usage()
        scored = score_candidates(request, scorer, draw_candidates(request, policy, params.n, usage, started), usage)
        best = scored[int(np.argmax([c.weighted_score for c in scored]))]
        report(request, "scored", 1, f"best weighted score {best.weighted_score:.4f}", started, scored)

        log_eps = 0.0 if request.sampling.greedy else best.completion.logprob
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
        return finish(request, best, scored, kl, usage, started)
