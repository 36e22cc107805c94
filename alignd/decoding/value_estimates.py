"""Value estimates for the value-guided strategies (controlled, multi_objective, robust).

A request resolves once, per objective, which source estimates V_g (value heads on the policy's
hidden states, or the objective's own scorer on the partial text; `auto` picks by measured
within-prompt ranking). Each step then asks for the value vectors of all R partial responses in
one call per source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignd.backends.base import Capability, PartialResponses, Policy
from alignd.decoding.base import DecodeContext
from alignd.decoding.params import param
from alignd.decoding.weights import PreferenceWeights
from alignd.errors import FailedPrecondition
from alignd.rewardmodels.base import Scorer
from alignd.rewardmodels.value_sources import CHOICES, HEADS, PREFIX, resolve


def value_source_param() -> Any:
    """The `value_source` parameter every value-guided strategy declares."""
    return param(
        "auto",
        "where value estimates come from: auto (per objective, the best measured within-prompt "
        "ranking), heads (value heads on hidden states) or prefix (the objective's scorer on the "
        "partial text)",
        choices=CHOICES,
    )


@dataclass(frozen=True)
class ValueEstimator:
    scorer: Scorer
    policy: Policy
    sources: dict[str, str]  # objective -> source

    @classmethod
    def resolve(
        cls, strategy: str, policy: Policy, scorer: Scorer, objectives: Sequence[str], value_source: str
    ) -> ValueEstimator:
        """`strategy` is the strategy's name. FailedPrecondition (naming `<strategy>.value_source`)
        when a named source cannot estimate one of `objectives`, or heads are asked of a backend
        that gives no hidden states."""
        sources = resolve(scorer.value_sources, objectives, value_source, f"{strategy}.value_source")
        if HEADS in sources.values() and Capability.HIDDEN_STATES not in policy.capabilities:
            heads = sorted(n for n, s in sources.items() if s == HEADS)
            raise FailedPrecondition(
                f"{strategy}.value_source: value heads for {heads} read hidden states, which {type(policy).__name__} "
                f"does not give (use 'prefix')"
            )
        return cls(scorer, policy, sources)

    @classmethod
    def for_weighted(
        cls, strategy: str, weights: PreferenceWeights, policy: Policy, scorer: Scorer, value_source: str
    ) -> ValueEstimator:
        """Estimates for the objectives with a positive weight in the request (only those steer)."""
        weighted = [n for n, w in weights.as_dict().items() if w > 0]
        return cls.resolve(strategy, policy, scorer, weighted, value_source)

    def __call__(self, ctx: DecodeContext, partial: PartialResponses) -> tuple[np.ndarray, np.ndarray]:
        """(value estimates on each objective's scale [R, G], the same on the common scale); NaN
        in the columns of objectives not estimated. Rewards are against the user's instruction."""
        scores_text = PREFIX in self.sources.values()
        with ctx.phase("value"):
            texts = self.policy.partial_texts(partial) if scores_text else None
            values = self.scorer.estimate_values(ctx.request.prompt.user, texts, partial.hidden, self.sources)
        ctx.usage.scorer_calls += 1
        if scores_text:
            ctx.usage.scored_texts += partial.rows  # texts the scorers saw; heads read no text
        return values, self.scorer.standardise(values)
