"""controlled: Controlled Decoding with value heads (Mudgal et al., "Controlled Decoding from
Language Models", 2023), with per-request weights w over objectives.

Blockwise (the paper's blockwise best-of-K): from the current prefix draw K blocks of B tokens
from pi_ref (the prefix's KV cache is copied to the K rows, never re-encoded), keep the block
with the highest w^T V(prefix + block), repeat until EOS or max_tokens.

Tokenwise: sample the next token z from pi_ref(z) exp(lambda w^T V(prefix + z)) / Z restricted to
pi_ref's top-k; the k candidate tokens are appended in one batched forward, whose hidden states
give V.

V are the value heads' predictions put on a common scale (z-scores with the heads' training
statistics) so that weights compare objectives alike. Final rewards are the objectives' own
scores of the finished text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from alignd.backends.base import Capability, Completion, FinishReason, PartialResponses, Policy
from alignd.backends.sampling import make_generator
from alignd.decoding.base import (
    DecodeRequest, DecodeResult, KLEstimate, ScoredCandidate, Strategy, Usage, finish, register, report,
    score_candidates,
)
from alignd.decoding.kl import best_of_n_kl_bound, best_of_n_kl_estimate
from alignd.decoding.params import param
from alignd.errors import FailedPrecondition, InvalidArgument
from alignd.rewardmodels.base import Scorer


@register
class ControlledStrategy(Strategy):
    name = "controlled"
    description = ("Controlled decoding with value heads: blockwise best-of-K blocks by w^T V, or tokenwise "
                   "pi_ref * exp(lambda w^T V) over the top-k tokens.")
    requires = frozenset({Capability.SAMPLE, Capability.EXTEND, Capability.HIDDEN_STATES})

    @dataclass(frozen=True)
    class Params:
        mode: str = param("blockwise", "blockwise or tokenwise", choices=("blockwise", "tokenwise"))
        num_candidates: int = param(8, "K: candidate blocks drawn per step (blockwise)", min=2,
                                    limit="max_candidates")
        block_tokens: int = param(8, "B: tokens per block (blockwise)", min=1, limit="max_tokens")
        strength: float = param(1.0, "lambda: tilt exp(lambda w^T V) of pi_ref (tokenwise)", above=0.0, max=1e4)
        token_candidates: int = param(10, "k: candidate tokens from pi_ref's top-k (tokenwise)", min=2,
                                      limit="max_candidates")

    def rows(self, params: Params) -> int:
        # The chosen prefix plus its K (or k) candidate continuations.
        return 1 + (params.num_candidates if params.mode == "blockwise" else params.token_candidates)

    def decode(self, request: DecodeRequest, params: Params, policy: Policy, scorer: Scorer) -> DecodeResult:
        if request.sampling.greedy:
            # K greedy blocks are K copies of one block, and the tilt needs a sampling pi_ref.
            raise InvalidArgument("sampling.temperature", "controlled decoding samples from pi_ref: use a temperature > 0")
        self._check_heads(request, scorer)
        if params.mode == "tokenwise" and Capability.TOKENWISE not in policy.capabilities:
            raise FailedPrecondition(f"tokenwise controlled decoding needs the backend capability 'tokenwise', "
                                     f"which {type(policy).__name__} lacks")
        started = time.perf_counter()
        usage = Usage()
        with usage.phase("prefill"):
            partial = policy.begin(request.prompt, request.sampling, request.cancel)
        usage.prompt_tokens = partial.prompt_tokens
        if params.mode == "blockwise":
            partial, kl = self._blockwise(request, params, policy, scorer, partial, usage, started)
        else:
            partial, kl = self._tokenwise(request, params, policy, scorer, partial, usage, started)
        usage.lm_forward_tokens = partial.forward_tokens
        scored = score_candidates(request, scorer, [policy.completion(partial, 0)], usage)
        return finish(request, scored[0], scored, kl, usage, started)

    def _check_heads(self, request: DecodeRequest, scorer: Scorer) -> None:
        wanted = [n for n, w in request.weights.as_dict().items() if w > 0]
        missing = [n for n in wanted if n not in scorer.value_objectives]
        if missing:
            loaded = sorted(scorer.value_objectives) or "none"
            raise FailedPrecondition(f"controlled decoding needs value heads for {missing}; loaded value heads: {loaded}")

    def _values(self, request: DecodeRequest, scorer: Scorer, partial: PartialResponses,
                usage: Usage) -> tuple[np.ndarray, np.ndarray]:
        """(value estimates on each objective's scale [R, G], weighted standardised scores [R]).

        Only objectives with positive weight are estimated (the rest are NaN); `_check_heads`
        made sure value heads cover them, so no prefix text is decoded or re-encoded."""
        weights = request.weights.as_dict()
        needed = [name for name, w in weights.items() if w > 0]
        with usage.phase("value"):
            values = scorer.score_prefix([request.prompt.user] * partial.rows, None, partial.hidden, needed)
        usage.scorer_calls += 1
        usage.scored_texts += partial.rows
        standardised = np.nan_to_num(scorer.standardise(values), nan=0.0)  # NaN only where w = 0
        return values, request.weights.weighted(standardised)

    def _blockwise(self, request, params, policy, scorer, partial, usage, started):
        k = params.num_candidates
        blocks_taken, estimate = 0, 0.0
        while not partial.done:
            before = len(partial.token_ids[0])
            with usage.phase("extend"):
                blocks = policy.extend(partial, k, params.block_tokens, request.cancel)
            usage.generated_tokens += sum(len(ids) - before for ids in blocks.token_ids)
            values, scores = self._values(request, scorer, blocks, usage)
            pick = int(np.argmax(scores))
            partial = policy.select(blocks, [pick])
            blocks_taken += 1
            # Per-block estimate: block b is a best-of-K draw from pi_ref(. | prefix), so the chain
            # rule sums Beirami et al.'s estimate at eps_b = pi_ref(block_b | prefix).
            block_logprob = float(sum(blocks.token_logprobs[pick][before:]))
            estimate += best_of_n_kl_estimate(k, min(block_logprob, 0.0))
            if request.on_progress is not None:
                candidates = [
                    ScoredCandidate(_block(policy, blocks, row, before), values[row], float(scores[row]), row == pick)
                    for row in range(k)
                ]
                report(request, "block", blocks_taken, f"block {blocks_taken}: chose {pick + 1}/{k}, "
                       f"w.V {scores[pick]:+.3f}: {candidates[pick].completion.text!r}", started, candidates)
        kl = [
            KLEstimate("blockwise_bound", "upper_bound", blocks_taken * best_of_n_kl_bound(k),
                       f"{blocks_taken} blocks x (log K - (K-1)/K), K={k}: an upper bound"),
            KLEstimate("blockwise_estimate", "estimate", estimate,
                       "sum over blocks of Beirami et al.'s best-of-K estimate at each chosen block's pi_ref"),
        ]
        return partial, kl

    def _tokenwise(self, request, params, policy, scorer, partial, usage, started):
        generator = make_generator(request.sampling.seed, "cpu")
        kl_sum, step = 0.0, 0
        while not partial.done:
            logprobs = policy.next_token_logprobs(partial)[0].float().cpu()
            support = int(torch.isfinite(logprobs).sum())
            top = torch.topk(logprobs, min(params.token_candidates, support))
            with usage.phase("extend"):
                children = policy.branch(partial, [top.indices.tolist()], request.cancel)
            usage.generated_tokens += children.rows
            values, scores = self._values(request, scorer, children, usage)
            tilted = torch.log_softmax(top.values.double() + params.strength * torch.from_numpy(scores), dim=0)
            pick = int(torch.multinomial(tilted.exp().float(), 1, generator=generator))
            # KL(q_t || pi_ref,t) with q_t on the top-k; summed along the path it is an unbiased
            # one-sample estimate of the sequence-level KL (chain rule).
            kl_sum += float((tilted.exp() * (tilted - top.values.double())).sum())
            partial = policy.select(children, [pick])
            step += 1
            if request.on_progress is not None:
                candidates = [ScoredCandidate(_block(policy, children, row, len(children.token_ids[row]) - 1),
                                              values[row], float(scores[row]), row == pick)
                              for row in range(children.rows)]
                report(request, "token", step, f"token {step}: {candidates[pick].completion.text!r}", started,
                       candidates)
        kl = [KLEstimate("tokenwise_estimate", "estimate", max(kl_sum, 0.0),
                         "sum over steps of KL(tilted top-k || pi_ref) along the decoded path")]
        return partial, kl


def _block(policy: Policy, partial: PartialResponses, row: int, start: int) -> Completion:
    """The tokens of `row` from position `start` on, as a Completion (for progress events)."""
    ids = partial.token_ids[row][start:]
    return Completion(policy.detokenize(ids), ids, partial.token_logprobs[row][start:],
                      partial.finish[row] or FinishReason.LENGTH)
