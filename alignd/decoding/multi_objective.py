"""multi_objective: multi-objective decoding with the request's fixed weights (MOD).

Blockwise value-guided decoding: K candidate blocks of B tokens from pi_ref, keep
argmax_k w^T V_k with V the value estimates (per objective from its `value_source`) on the common
scale (z-scores with the final-reward statistics stored with the value heads, so a weight means
the same on every objective). This is the baseline that
RMOD (`robust`) is compared to. Logit fusion of several policies (Shi et al. 2024) needs
preference-vector adapters sharing the tokenizer; this server has one policy, so it is not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignd.backends.base import Capability, Policy
from alignd.decoding.base import DecodeRequest, DecodeResult, Strategy, register
from alignd.decoding.blockwise import decode_blockwise, refuse_greedy, weighted_argmax
from alignd.decoding.params import param
from alignd.decoding.value_estimates import ValueEstimator, value_source_param
from alignd.rewardmodels.base import Scorer


@register
class MultiObjectiveStrategy(Strategy):
    name = "multi_objective"
    description = (
        "Multi-objective decoding (MOD): K blocks of B tokens per step, keep the best by the request's "
        "weights over standardised value estimates."
    )
    requires = frozenset({Capability.SAMPLE, Capability.EXTEND})

    @dataclass(frozen=True)
    class Params:
        num_candidates: int = param(8, "K: candidate blocks drawn per step", min=2, limit="max_candidates")
        block_tokens: int = param(8, "B: tokens per block", min=1, limit="max_tokens")
        value_source: str = value_source_param()

    def rows(self, params: Params) -> int:
        return 1 + params.num_candidates

    def check(self, request: DecodeRequest, params: Params, policy: Policy, scorer: Scorer) -> None:
        super().check(request, params, policy, scorer)
        refuse_greedy(request, self.name)
        self._values(request, params, policy, scorer)

    def decode(self, request: DecodeRequest, params: Params, policy: Policy, scorer: Scorer) -> DecodeResult:
        self.check(request, params, policy, scorer)
        return decode_blockwise(
            request,
            policy,
            scorer,
            strategy=self.name,
            num_candidates=params.num_candidates,
            block_tokens=params.block_tokens,
            values=self._values(request, params, policy, scorer),
            choose=weighted_argmax(request.weights.vector),
        )

    def _values(self, request: DecodeRequest, params: Params, policy: Policy, scorer: Scorer) -> ValueEstimator:
        return ValueEstimator.for_weighted(self.name, request, policy, scorer, params.value_source)
