"""sample: one draw from pi_ref, the baseline every other strategy is measured against."""

from __future__ import annotations

from dataclasses import dataclass

from alignd.backends.base import Capability, Completion, Policy
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
            if ctx.request.on_progress is not None and Capability.EXTEND in ctx.policy.capabilities:
                completions = [stream_sample(ctx)]
            else:
                (completions,) = ctx.sample(1)
                ctx.report("sampled", 0, f"sampled 1 response(s), {ctx.usage.generated_tokens} tokens")
            scored = ctx.score(completions)
            return ctx.finish(
                scored[0], scored, [KLEstimate("sample", "exact", 0.0, "plain sampling is pi_ref itself")]
            )

        return decode


# Tokens per step when a stream watches: each step continues the partial in place (transformers:
# the KV cache grows, nothing is re-encoded or copied), and the text reaches the client a few
# tokens at a time instead of all at the end.
STREAM_BLOCK_TOKENS = 4


def stream_sample(ctx: DecodeContext) -> Completion:
    """One draw from pi_ref, decoded in short steps with the text committed after each: the same
    distribution as `ctx.sample(1)`, for a client that reads the answer while it is written."""
    partial = ctx.prefill()
    step = 0
    while not partial.done:
        partial = ctx.advance(partial, STREAM_BLOCK_TOKENS)
        step += 1
        text = ctx.policy.completion(partial, 0).text
        ctx.report("tokens", step, f"{ctx.usage.generated_tokens} tokens: {text[-40:]!r}", committed=text)
    ctx.done_with(partial)
    return ctx.policy.completion(partial, 0)
