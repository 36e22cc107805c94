"""controlled: Controlled Decoding (Mudgal et al., "Controlled Decoding from
Language Models", 2023), with per-request weights w over objectives.

Blockwise (the paper's blockwise best-of-K): from the current prefix draw K blocks of B tokens
from pi_ref (the prefix's KV cache is copied to the K rows, never re-encoded), keep the block
with the highest w^T V(prefix + block), repeat until EOS or max_tokens.

Tokenwise: sample the next token z from pi_ref(z) exp(lambda w^T V(prefix + z)) / Z restricted to
pi_ref's top-k; the k candidate tokens are appended in one batched forward, whose hidden states
give V.

V are value estimates from each objective's value source (value heads on the hidden states, or the
objective's own scorer on the partial text; `value_source`), put on a common scale (z-scores with
the final-reward statistics stored with the heads) so that weights compare objectives alike.
Final rewards are the objectives' own scores of the finished text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alignd.backends.base import Capability, PartialResponses, Policy
from alignd.decoding.base import (
    Decode,
    DecodeContext,
    DecodeRequest,
    DecodeResult,
    KLEstimate,
    ScoredCandidate,
    register,
)
from alignd.decoding.blockwise import WeightedBlockwise, block_completion
from alignd.decoding.params import param
from alignd.decoding.value_estimates import ValueEstimator, value_source_param
from alignd.errors import FailedPrecondition
from alignd.rewardmodels.base import Scorer
from alignd.sampling import make_generator, tilted_draw, top_tokens


@dataclass(frozen=True)
class ControlledParams:
    mode: str = param("blockwise", "blockwise or tokenwise", choices=("blockwise", "tokenwise"))
    num_candidates: int = param(8, "K: candidate blocks drawn per step (blockwise)", min=2, limit="max_candidates")
    block_tokens: int = param(8, "B: tokens per block (blockwise)", min=1, limit="max_tokens")
    strength: float = param(1.0, "lambda: tilt exp(lambda w^T V) of pi_ref (tokenwise)", above=0.0, max=1e4)
    token_candidates: int = param(
        10, "k: candidate tokens from pi_ref's top-k (tokenwise)", min=2, limit="max_candidates"
    )
    value_source: str = value_source_param()


@register
class ControlledStrategy(WeightedBlockwise[ControlledParams]):
    """Blockwise mode is `WeightedBlockwise` (shared with multi_objective); tokenwise is below."""

    name = "controlled"
    description = (
        "Controlled decoding with value estimates: blockwise best-of-K blocks by w^T V, or tokenwise "
        "pi_ref * exp(lambda w^T V) over the top-k tokens."
    )
    Params = ControlledParams

    def rows(self, params: ControlledParams) -> int:
        # The chosen prefix plus its K (or k) candidate continuations.
        return 1 + (params.num_candidates if params.mode == "blockwise" else params.token_candidates)

    def plan(self, request: DecodeRequest, params: ControlledParams, policy: Policy, scorer: Scorer) -> Decode:
        if params.mode == "blockwise":
            return super().plan(request, params, policy, scorer)
        if Capability.TOKENWISE not in policy.capabilities:
            raise FailedPrecondition(
                f"tokenwise controlled decoding needs the backend capability 'tokenwise', "
                f"which {type(policy).__name__} lacks"
            )
        values = ValueEstimator.for_weighted(self.name, request.weights, policy, scorer, params.value_source)

        def decode(ctx: DecodeContext) -> DecodeResult:
            partial, kl = decode_tokenwise(ctx, ctx.prefill(), params, values)
            result, _ = ctx.finish_decoded(partial, kl)
            return result

        return decode


def decode_tokenwise(
    ctx: DecodeContext, partial: PartialResponses, params: ControlledParams, values: ValueEstimator
) -> tuple[PartialResponses, list[KLEstimate]]:
    """Token by token: pi_ref's top-k candidates appended in one batched forward, their values
    estimated, the next token drawn from the tilted distribution over them."""
    policy, weights = ctx.policy, ctx.request.weights
    generator = make_generator(ctx.request.sampling.seed, "cpu")
    kl_sum, step = 0.0, 0
    while not partial.done:
        tokens, top_logprobs = top_tokens(policy.next_token_logprobs(partial)[0], params.token_candidates)
        children = ctx.branch(partial, [tokens])
        estimates, standardised = values(ctx, children)
        scores = weights.weighted(np.nan_to_num(standardised, nan=0.0))  # NaN only where w = 0
        # KL(q_t || pi_ref,t) with q_t on the top-k; summed along the path it is an unbiased
        # one-sample estimate of the sequence-level KL (chain rule).
        pick, step_kl = tilted_draw(top_logprobs, scores, params.strength, generator)
        kl_sum += step_kl
        partial = policy.select(children, [pick])
        step += 1
        if ctx.request.on_progress is not None:
            candidates = [
                ScoredCandidate(
                    block_completion(policy, children, row, len(children.token_ids[row]) - 1),
                    estimates[row],
                    float(scores[row]),
                    row == pick,
                )
                for row in range(children.rows)
            ]
            ctx.report(
                "token",
                step,
                f"token {step}: {candidates[pick].completion.text!r}",
                candidates,
                committed=policy.completion(partial, 0).text,
            )
    kl = [
        KLEstimate(
            "tokenwise_estimate",
            "estimate",
            max(kl_sum, 0.0),
            "sum over steps of KL(tilted top-k || pi_ref) along the decoded path",
        )
    ]
    return partial, kl
