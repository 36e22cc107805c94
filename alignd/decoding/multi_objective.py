"""multi_objective: multi-objective decoding with the request's fixed weights (MOD).

Blockwise value-guided decoding: K candidate blocks of B tokens from pi_ref, keep
argmax_k w^T V_k with V the value estimates (per objective from its `value_source`) on the common
scale (z-scores with the final-reward statistics stored with the value heads, so a weight means
the same on every objective). This is the baseline that RMOD (`robust`) is compared to, and the
same algorithm as `controlled` in blockwise mode (one implementation, `WeightedBlockwise`), offered
under its own name with only the blockwise parameters. Logit fusion of several policies (Shi et al.
2024) needs preference-vector adapters sharing the tokenizer; this server has one policy, so it is
not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignd.decoding.base import register
from alignd.decoding.blockwise import WeightedBlockwise
from alignd.decoding.params import param
from alignd.decoding.value_estimates import value_source_param


@dataclass(frozen=True)
class MultiObjectiveParams:
    num_candidates: int = param(8, "K: candidate blocks drawn per step", min=2, limit="max_candidates")
    block_tokens: int = param(8, "B: tokens per block", min=1, limit="max_tokens")
    value_source: str = value_source_param()


@register
class MultiObjectiveStrategy(WeightedBlockwise[MultiObjectiveParams]):
    name = "multi_objective"
    description = (
        "Multi-objective decoding (MOD): K blocks of B tokens per step, keep the best by the request's "
        "weights over standardised value estimates."
    )
    Params = MultiObjectiveParams
