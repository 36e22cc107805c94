"""sample: one draw from pi_ref, the baseline every other strategy is measured against."""

from __future__ import annotations

import time
from dataclasses import dataclass

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
    score_candidates,
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
        scored = score_candidates(request, scorer, draw_candidates(request, policy, 1, usage, started), usage)
        kl = [KLEstimate("sample", "exact", 0.0, "plain sampling is pi_ref itself")]
        return finish(request, scored[0], scored, kl, usage, started)
