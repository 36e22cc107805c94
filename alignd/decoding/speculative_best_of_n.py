"""speculative_best_of_n: Speculative Rejection (Sun et al., "Fast Best-of-N Decoding via
Speculative Rejection", 2024): best-of-N's choice without decoding all N responses to the end.

Start N responses from one prefill (the prompt's KV cache copied to the N rows). At each rejection
point, estimate every response's value from its partial text or hidden state (the value sources
of the value-guided strategies), keep the best fraction alpha and drop the rest: their rows leave
the KV cache, and its memory is freed. Continue the kept rows; at the end, score the finished
responses with the objectives and return the best under the request's weights.

Rejection points are either every `rejection_tokens` generated tokens (up to `max_rejections`
rounds), or, as in the paper, whenever the decoding rows would outgrow a KV-cache budget
(`memory_tokens` >= rows x (prompt + generated)); the server then reserves that budget rather
than N whole responses, so N may start more responses than could all finish. Each row draws from
its own random stream, so the kept rows decode the tokens best_of_n with the same seed and N draws
for them (up to float rounding of batched logits flipping a near-tie).

KL: the answer is one of N independent draws from pi_ref, chosen by some rule, so its probability
is at most N pi_ref(y): log N bounds KL(answer || pi_ref) whatever the rule. No tighter figure is
claimed (Beirami et al.'s estimator assumes the argmax of the final reward over all N).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from alignd.backends.base import Capability, PartialResponses, Policy, check_cancelled
from alignd.decoding.base import (
    Decode,
    DecodeContext,
    DecodeRequest,
    DecodeResult,
    KLEstimate,
    ScoredCandidate,
    Strategy,
    register,
)
from alignd.decoding.blockwise import block_completion
from alignd.decoding.params import param
from alignd.decoding.value_estimates import ValueEstimator, value_source_param
from alignd.errors import InvalidArgument
from alignd.rewardmodels.base import Scorer

TOKENS = "tokens"
MEMORY = "memory"


@dataclass(frozen=True)
class SpeculativeBestOfNParams:
    num_candidates: int = param(32, "N: responses started from the prompt", min=2, limit="max_candidates")
    keep_fraction: float = param(
        0.25, "alpha: fraction of the responses kept at each rejection point (at least one)", above=0.0, max=1.0
    )
    rejection: str = param(
        TOKENS,
        "when to reject: tokens (every rejection_tokens generated tokens) or memory (when the live "
        "rows x (prompt + generated) would pass memory_tokens, as in the paper)",
        choices=(TOKENS, MEMORY),
    )
    rejection_tokens: int = param(
        8, "generated tokens between rejection points (rejection=tokens)", min=1, limit="max_tokens"
    )
    max_rejections: int = param(1, "rejection rounds at most (rejection=tokens)", min=1, max=64)
    memory_tokens: int = param(
        8192,
        "key/value tokens the decoding rows may hold, rows x (prompt + generated); the server reserves "
        "this (or one whole response, if longer) instead of N whole responses (rejection=memory)",
        min=1,
        limit="max_batch_tokens",
    )
    value_source: str = value_source_param()


def kept_count(rows: int, keep_fraction: float) -> int:
    """Rows kept out of `rows`: floor(alpha x rows), at least one, and fewer than `rows` when
    alpha < 1 (the 1e-9 absorbs float error such as 0.29 x 100 = 28.999...)."""
    kept = max(1, math.floor(keep_fraction * rows + 1e-9))
    return min(kept, rows - 1) if keep_fraction < 1.0 and rows > 1 else kept


@register
class SpeculativeBestOfNStrategy(Strategy[SpeculativeBestOfNParams]):
    name = "speculative_best_of_n"
    description = (
        "Speculative rejection: start N responses, drop all but the best fraction alpha by value "
        "estimates at rejection points, finish the rest and return the best (best_of_n at a fraction "
        "of its decoding)."
    )
    Params = SpeculativeBestOfNParams
    requires = frozenset({Capability.SAMPLE, Capability.EXTEND})

    def rows(self, params: SpeculativeBestOfNParams) -> int:
        return params.num_candidates  # the first segment decodes all N

    def held_tokens(self, params: SpeculativeBestOfNParams, prompt_tokens: int, max_tokens: int) -> int:
        """With memory rejection the decoding rows never hold more than `memory_tokens` (or one
        whole response, if that is longer), so N may start more responses than could all finish."""
        full = super().held_tokens(params, prompt_tokens, max_tokens)
        if params.rejection == TOKENS:
            return full
        return min(full, max(params.memory_tokens, prompt_tokens + max_tokens))

    def plan(self, request: DecodeRequest, params: SpeculativeBestOfNParams, policy: Policy, scorer: Scorer) -> Decode:
        if params.rejection == MEMORY:
            prompt_tokens = len(policy.prompt_ids(request.prompt))
            needed = params.num_candidates * (prompt_tokens + 1)
            if params.memory_tokens < needed:
                raise InvalidArgument(
                    f"{self.name}.memory_tokens",
                    f"{params.memory_tokens} cannot hold N={params.num_candidates} rows of this "
                    f"{prompt_tokens}-token prompt plus one token each: needs at least {needed}",
                )
            if params.keep_fraction >= 1.0:
                raise InvalidArgument(
                    f"{self.name}.keep_fraction", "must be < 1 with rejection=memory (rejecting must free memory)"
                )
        values = ValueEstimator.for_weighted(self.name, request.weights, policy, scorer, params.value_source)

        def decode(ctx: DecodeContext) -> DecodeResult:
            return SpeculativeRun(ctx, params, values).decode()

        return decode


class SpeculativeRun:
    """One request: the segments between rejection points, the rejections, the final choice."""

    def __init__(self, ctx: DecodeContext, params: SpeculativeBestOfNParams, values: ValueEstimator) -> None:
        self.ctx, self.params, self.values = ctx, params, values
        self.max_tokens = ctx.request.sampling.max_tokens
        self.origin = list(range(params.num_candidates))  # each row's index among the N started
        self.rounds = 0

    def decode(self) -> DecodeResult:
        ctx, params = self.ctx, self.params
        partial, k, generated = ctx.prefill(), params.num_candidates, 0
        while True:
            check_cancelled(ctx.request.cancel)
            live = params.num_candidates if k > 1 else sum(f is None for f in partial.finish)
            rejecting = live > 1 and (params.rejection == MEMORY or self.rounds < params.max_rejections)
            until = min(self._next_point(live), self.max_tokens) if rejecting else self.max_tokens
            if until > generated:
                # The prefix is copied, never re-encoded; the first segment starts the N rows.
                partial = ctx.extend(partial, k, until - generated)
                k, generated = 1, until
                if partial.done:
                    break
            if rejecting:
                partial = self._reject(partial, generated)
        ctx.done_with(partial)
        scored = ctx.score([ctx.policy.completion(partial, row) for row in range(partial.rows)])
        best = scored[int(np.argmax([c.weighted_score for c in scored]))]
        ctx.report("scored", self.rounds + 1, f"best weighted score {best.weighted_score:.4f}", scored)
        kl = [
            KLEstimate(
                "selection_bound",
                "upper_bound",
                math.log(params.num_candidates),
                f"log N, N={params.num_candidates}: the answer is one of N independent draws from pi_ref, so "
                "pi(y) <= N pi_ref(y); an upper bound, not an estimate",
            )
        ]
        details = {"rejection_rounds": float(self.rounds), "final_candidates": float(partial.rows)}
        return ctx.finish(best, scored, kl, details)

    def _next_point(self, live: int) -> int:
        """Generated tokens at the next rejection point for `live` decoding rows."""
        params = self.params
        if params.rejection == TOKENS:
            return (self.rounds + 1) * params.rejection_tokens
        return params.memory_tokens // live - self.ctx.usage.prompt_tokens

    def _reject(self, partial: PartialResponses, generated: int) -> PartialResponses:
        """Keep the best fraction of the rows by w^T V on the common scale; the others leave the
        KV cache when `partial` is dropped."""
        ctx = self.ctx
        estimates, standardised = self.values(ctx, partial)
        with ctx.phase("choose"):
            scores = np.nan_to_num(standardised, nan=0.0) @ ctx.request.weights.vector  # NaN only where w = 0
            keep = kept_count(partial.rows, self.params.keep_fraction)
            if self.params.rejection == MEMORY:
                # As many as still fit for one more token: no second round at the same point.
                fits = self.params.memory_tokens // (ctx.usage.prompt_tokens + generated + 1)
                keep = max(1, min(keep, fits))
            kept = np.argsort(-scores, kind="stable")[:keep]
            kept = np.sort(kept).tolist()  # rows keep their order
        self.rounds += 1
        if ctx.request.on_progress is not None:
            chosen = set(kept)
            candidates = [
                ScoredCandidate(
                    block_completion(ctx.policy, partial, row, 0), estimates[row], float(scores[row]), row in chosen
                )
                for row in range(partial.rows)
            ]
            ctx.report(
                "rejection",
                self.rounds,
                f"rejection {self.rounds} at {generated} tokens: kept {len(kept)}/{partial.rows} "
                f"(responses {[self.origin[row] + 1 for row in kept]}), w.V from "
                f"{scores[kept].min():+.3f} to {scores[kept].max():+.3f}",
                candidates,
            )
        self.origin = [self.origin[row] for row in kept]
        dropped = partial.rows - len(kept)
        partial = ctx.policy.select(partial, kept)
        if self.params.rejection == TOKENS:
            # The dropped rows' share of the request's reservation (N whole responses) is free
            # now: requests waiting for memory may start. With memory rejection the reservation
            # is the budget itself, which the kept rows grow back into.
            ctx.release_rows(dropped)
        return partial
