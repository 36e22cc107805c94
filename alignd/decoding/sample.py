"""sample: one draw from pi_ref, the baseline every other strategy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from alignd.backends.base import Policy
from alignd.decoding.base import Decode, DecodeContext, DecodeRequest, DecodeResult, KLEstimate, Strategy, register
from alignd.rewardmodels.base import Scorer


@dataclass(frozen=True)
class SampleParams:
    pass


@register
class SampleStrategy(Strategy[SampleParams]):
    name = "sample"
    description = "Plain sampling from the reference policy (the baseline)."
    Params = SampleParams

    def plan(self, request: DecodeRequest, params: SampleParams, policy: Policy, scorer: Scorer) -> Decode:
        def decode(ctx: DecodeContext) -> DecodeResult:
            (completions,) = ctx.sample(1)
            ctx.report("sampled", 0, f"sampled 1 response(s), {ctx.usage.generated_tokens} tokens")
            scored = ctx.score(completions)
            return ctx.finish(
                scored[0], scored, [KLEstimate("sample", "exact", 0.0, "plain sampling is pi_ref itself")]
            )

        return decode
