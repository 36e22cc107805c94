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

import time
from dataclasses import dataclass

import numpy as np
import torch

from alignd.backends.base import Capability, Policy
from alignd.backends.sampling import make_generator
from alignd.decoding.base import (
    DecodeRequest,
    DecodeResult,
    KLEstimate,
    ScoredCandidate,
    Strategy,
    Usage,
    finish,
    register,
    report,
    score_candidates,
)
from alignd.decoding.blockwise import block_completion, decode_blockwise, refuse_greedy, weighted_argmax
from alignd.decoding.params import param
from alignd.decoding.value_estimates import ValueEstimator, value_source_param
from alignd.errors import FailedPrecondition
from alignd.rewardmodels.base import Scorer


@register
class ControlledStrategy(Strategy):
    name = "controlled"
    description = (
        "Controlled decoding with value estimates: blockwise best-of-K blocks by w^T V, or tokenwise "
        "pi_ref * exp(lambda w^T V) over the top-k tokens."
    )
    requires = frozenset({Capability.SAMPLE, Capability.EXTEND})

    @dataclass(frozen=True)
    class Params:
        mode: str = param("blockwise", "blockwise or tokenwise", choices=("blockwise", "tokenwise"))
        num_candidates: int = param(8, "K: candidate blocks drawn per step (blockwise)", min=2, limit="max_candidates")
        block_tokens: int = param(8, "B: tokens per block (blockwise)", min=1, limit="max_tokens")
        strength: float = param(1.0, "lambda: tilt exp(lambda w^T V) of pi_ref (tokenwise)", above=0.0, max=1e4)
        token_candidates: int = param(
            10, "k: candidate tokens from pi_ref's top-k (tokenwise)", min=2, limit="max_candidates"
        )
        value_source: str = value_source_param()

    def rows(self, params: Params) -> int:
        # The chosen prefix plus its K (or k) candidate continuations.
        return 1 + (params.num_candidates if params.mode == "blockwise" else params.token_candidates)

    def check(self, request: DecodeRequest, params: Params, policy: Policy, scorer: Scorer) -> None:
        super().check(request, params, policy, scorer)
        # K greedy blocks are K copies of one block, and the tokenwise tilt needs a sampling pi_ref.
        refuse_greedy(request, "controlled decoding")
        self._values(request, params, policy, scorer)
        if params.mode == "tokenwise" and Capability.TOKENWISE not in policy.capabilities:
            raise FailedPrecondition(
                f"tokenwise controlled decoding needs the backend capability 'tokenwise', "
                f"which {type(policy).__name__} lacks"
            )

    def decode(self, request: DecodeRequest, params: Params, policy: Policy, scorer: Scorer) -> DecodeResult:
        self.check(request, params, policy, scorer)  # fails before any work when a value source cannot serve
        values = self._values(request, params, policy, scorer)
        if params.mode == "blockwise":
            return decode_blockwise(
                request,
                policy,
                scorer,
                strategy="controlled decoding",
                num_candidates=params.num_candidates,
                block_tokens=params.block_tokens,
                values=values,
                choose=weighted_argmax(request.weights.vector),
            )
        started = time.perf_counter()
        usage = Usage()
        with usage.phase("prefill"):
            partial = policy.begin(request.prompt, request.sampling, request.cancel)
        usage.prompt_tokens = partial.prompt_tokens
        partial, kl = self._tokenwise(request, params, policy, partial, usage, started, values)
        usage.lm_forward_tokens = partial.forward_tokens
        scored = score_candidates(request, scorer, [policy.completion(partial, 0)], usage)
        return finish(request, scored[0], scored, kl, usage, started)

    def _values(self, request: DecodeRequest, params: Params, policy: Policy, scorer: Scorer) -> ValueEstimator:
        return ValueEstimator.for_weighted(self.name, request, policy, scorer, params.value_source)

    def _tokenwise(self, request, params, policy, partial, usage, started, values: ValueEstimator):
        generator = make_generator(request.sampling.seed, "cpu")
        kl_sum, step = 0.0, 0
        while not partial.done:
            logprobs = policy.next_token_logprobs(partial)[0].float().cpu()
            support = int(torch.isfinite(logprobs).sum())
            top = torch.topk(logprobs, min(params.token_candidates, support))
            with usage.phase("extend"):
                children = policy.branch(partial, [top.indices.tolist()], request.cancel)
            usage.generated_tokens += children.rows
            estimates, standardised = values(children, usage)
            scores = request.weights.weighted(np.nan_to_num(standardised, nan=0.0))  # NaN only where w = 0
            tilted = torch.log_softmax(top.values.double() + params.strength * torch.from_numpy(scores), dim=0)
            pick = int(torch.multinomial(tilted.exp().float(), 1, generator=generator))
            # KL(q_t || pi_ref,t) with q_t on the top-k; summed along the path it is an unbiased
            # one-sample estimate of the sequence-level KL (chain rule).
            kl_sum += float((tilted.exp() * (tilted - top.values.double())).sum())
            partial = policy.select(children, [pick])
            step += 1
            if request.on_progress is not None:
                candidates = [
                    ScoredCandidate(
                        block_completion(policy, children, row, len(children.token_ids[row]) - 1),
                        estimates[row],
                        float(scores[row]),
                        row == pick,
                    )
                    for row in range(children.rows)
                ]
                report(
                    request, "token", step, f"token {step}: {candidates[pick].completion.text!r}", started, candidates
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
