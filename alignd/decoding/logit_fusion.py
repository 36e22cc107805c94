"""Logit fusion of the base and the preference-vector policies (Shi et al. 2024, "Decoding-Time
Language Model Alignment with Multiple Objectives", the reverse-KL case), multi_objective's
`logit_fusion` mode.

The policies are the base model (pi_0) and the model steered by each preference vector at
strength 1 (pi_p = theta_base + phi_p). They decode the same response in lock-step, one row each
in one batched forward per token (the rows differ only in their strengths, which the backend
applies per row), and the next token is drawn from softmax(sum_i w_i log pi_i) with the request's
temperature, top-k and top-p, then appended to every row. With w = (1, 0, ...) this is the base
policy's own draw, token for token.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING

from alignd.backends.base import Steering
from alignd.backends.preference_vectors import BASE_POLICY as BASE  # the unsteered policy
from alignd.decoding.base import DecodeContext, DecodeResult, KLEstimate
from alignd.decoding.weights import PreferenceWeights
from alignd.errors import InvalidArgument
from alignd.sampling import RowStreams, fused_step

if TYPE_CHECKING:
    from alignd.backends.preference_vectors import VectorInfo


def fusion_weights(
    requested: Mapping[str, float], weights: PreferenceWeights, vectors: Mapping[str, VectorInfo], field: str
) -> dict[str, float]:
    """The policies' weights, normalised to sum 1, those at 0 left out (they change nothing), the
    base first (row 0; kept even at 0: the KL figure and the token log-probabilities are its).
    `requested` names policies ("base" and names in `vectors`); empty: the request's weight on each
    objective goes to the vectors that steer it (shared equally), the rest to the base model."""
    if requested:
        for name in requested:
            if name != BASE and name not in vectors:
                raise InvalidArgument(
                    f"{field}[{name}]", f"not a policy to fuse; available: {[BASE, *sorted(vectors)]}"
                )
        chosen = dict(requested)
    else:
        by_objective = weights.as_dict()
        steering = Counter(info.objective for info in vectors.values())
        chosen = {
            name: by_objective.get(info.objective, 0.0) / steering[info.objective] for name, info in vectors.items()
        }
        chosen[BASE] = max(0.0, 1.0 - sum(chosen.values()))
    largest = max(chosen.values())
    if largest <= 0:
        raise InvalidArgument(field, "at least one policy weight must be positive")
    total = sum(chosen.values())
    if math.isinf(total):  # weights near the float maximum: scale them down first
        chosen = {name: w / largest for name, w in chosen.items()}
        total = sum(chosen.values())
    fused = {name: w / total for name, w in chosen.items() if w > 0}
    return {BASE: fused.pop(BASE, 0.0), **fused}


def decode_fused(ctx: DecodeContext, policy_weights: dict[str, float]) -> DecodeResult:
    """Decode with the fused next-token distribution; `policy_weights` from `fusion_weights`."""
    request, policy = ctx.request, ctx.policy
    names = list(policy_weights)
    steering: list[Steering] = [() if name == BASE else ((name, 1.0),) for name in names]
    partial = ctx.prefill([request.prompt] * len(names), steering=steering)
    keys = RowStreams(request.sampling.seed).new(1)
    weights = [policy_weights[name] for name in names]
    kl = 0.0
    with ctx.phase("decode"):
        while not partial.done:
            logits = policy.next_token_logits(partial)
            step = fused_step(logits, weights, request.sampling, keys, len(partial.token_ids[0]))
            kl += step.kl
            partial = ctx.append(partial, step.token, step.logprob)
            ctx.report_token(partial)
    estimate = KLEstimate(
        "logit_fusion_estimate",
        "estimate",
        kl,
        "sum over steps of KL(fused next-token distribution || the base policy at the same temperature) "
        "along the decoded path",
    )
    details = {f"policy_weight[{name}]": w for name, w in policy_weights.items()}
    result, _ = ctx.finish_decoded(partial, [estimate], details)
    return result
