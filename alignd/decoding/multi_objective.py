"""multi_objective: decoding for several objectives at once with the request's fixed weights.

Two modes:
- `blockwise` (MOD, the default): K candidate blocks of B tokens from pi_ref, keep
  argmax_k w^T V_k with V the value estimates (per objective from its `value_source`) on the
  common scale (z-scores with the final-reward statistics stored with the value heads, so a weight
  means the same on every objective). The baseline that RMOD (`robust`) is compared to, and the
  same algorithm as `controlled` in blockwise mode (one implementation, `WeightedBlockwise`).
- `logit_fusion` (Shi et al. 2024, reverse-KL case): the base model and the model steered by each
  preference vector decode in lock-step, and each token is drawn from sum_i w_i log pi_i
  (logit_fusion.py). It needs a backend that steers per row (the transformers backend).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from alignd.backends.base import Capability, Policy
from alignd.decoding.base import Decode, DecodeRequest, register
from alignd.decoding.blockwise import WeightedBlockwise
from alignd.decoding.logit_fusion import BASE, decode_fused, fusion_weights
from alignd.decoding.params import param
from alignd.decoding.value_estimates import value_source_param
from alignd.decoding.weights import PreferenceWeights
from alignd.errors import FailedPrecondition, InvalidArgument
from alignd.rewardmodels.base import Scorer

if TYPE_CHECKING:
    from alignd.backends.preference_vectors import VectorInfo

BLOCKWISE, LOGIT_FUSION = "blockwise", "logit_fusion"
POLICY_WEIGHTS = "multi_objective.policy_weights"


@dataclass(frozen=True)
class MultiObjectiveParams:
    mode: str = param(
        BLOCKWISE,
        "blockwise: MOD over value estimates; logit_fusion: sample from sum_i w_i log pi_i over the base "
        "and the preference-vector policies",
        choices=(BLOCKWISE, LOGIT_FUSION),
    )
    num_candidates: int = param(8, "K: candidate blocks drawn per step (blockwise)", min=2, limit="max_candidates")
    block_tokens: int = param(8, "B: tokens per block (blockwise)", min=1, limit="max_tokens")
    value_source: str = value_source_param()
    policy_weights: dict[str, float] = param(
        {},
        "logit_fusion: weight per policy ('base' and preference-vector names), normalised to sum 1; empty: "
        "each vector gets the request's weight on its objective and 'base' the rest",
        min=0.0,
    )


@register
class MultiObjectiveStrategy(WeightedBlockwise[MultiObjectiveParams]):
    name = "multi_objective"
    description = (
        "Multi-objective decoding: MOD (K blocks of B tokens per step, keep the best by the request's weights "
        "over standardised value estimates) or logit fusion of the base and preference-vector policies."
    )
    Params = MultiObjectiveParams

    refuses_greedy = False  # blockwise mode refuses it in `plan`; logit fusion can decode greedily

    def resolve_params(
        self, params: MultiObjectiveParams, weights: PreferenceWeights, vectors: Mapping[str, VectorInfo]
    ) -> MultiObjectiveParams:
        if params.mode != LOGIT_FUSION or params.policy_weights:
            return params
        return replace(params, policy_weights=fusion_weights({}, weights, vectors, POLICY_WEIGHTS))

    def rows(self, params: MultiObjectiveParams) -> int:
        if params.mode == LOGIT_FUSION:
            # One row per fused policy with weight, and the base's row always.
            return 1 + sum(1 for name, w in params.policy_weights.items() if name != BASE and w > 0)
        return super().rows(params)

    def plan(self, request: DecodeRequest, params: MultiObjectiveParams, policy: Policy, scorer: Scorer) -> Decode:
        if params.mode == BLOCKWISE:
            if request.sampling.greedy:
                raise InvalidArgument("sampling.temperature", f"{self.name} samples from pi_ref: use a temperature > 0")
            return super().plan(request, params, policy, scorer)
        missing = sorted(c.value for c in {Capability.TOKENWISE, Capability.ROW_STEERING} - policy.capabilities)
        if missing:
            raise FailedPrecondition(
                f"multi_objective mode logit_fusion needs backend capabilities {missing}, which "
                f"{type(policy).__name__} lacks (it steers each row with its own preference vectors)"
            )
        if request.sampling.steering:
            raise InvalidArgument(
                "preference_vectors", "multi_objective logit_fusion chooses the fused policies itself; leave it unset"
            )
        weights = fusion_weights(params.policy_weights, request.weights, policy.vectors, POLICY_WEIGHTS)
        return lambda ctx: decode_fused(ctx, weights)
