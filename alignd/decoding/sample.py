"""sample: one draw from pi_ref, the baseline every other strategy is measured against."""

from __future__ import annotations

import time
from dataclasses import dataclass

from alignd.backends.base import Policy
from alignd.decoding.base import (
    DecodeRequest, DecodeResult, KLEstimate, Strategy, Usage, finish, register, report, score_candidates,
)
from alignd.rewardmodels.base import Scorer


@register
class SampleStrategy(Strategy):
    name = "sample"
    description = "Plain sampling from the reference policy (the baseline)."

    @dataclass(frozen=True)
    class Params:
        pass

    def decode(self, request: DecodeRequest, params: Params, policy: Policy, scorer: Scorer) -> DecodeResult:
        started = time.perf_counter()
        usage = Usage()
        with usage.phase("sample"):
            batch = policy.sample([request.prompt], 1, request.sampling, request.cancel)
        completions = batch.completions[0]
        usage.prompt_tokens = batch.prompt_tokens[0]
        usage.generated_tokens = sum(len(c.token_ids) for c in completions)
        usage.lm_forward_tokens = batch.forward_tokens
        report(request, "sampled", 0, f"sampled {usage.generated_tokens} tokens", started)
        scored = score_candidates(request, scorer, completions, usage)
        kl = [KLEstimate("sample", "exact", 0.0, "plain sampling is pi_ref itself")]
        return finish(request, scored[0], scored, kl, usage, started)
