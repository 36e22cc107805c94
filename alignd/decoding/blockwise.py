"""The blockwise value-guided loop shared by `controlled`, `multi_objective` and `robust`.

From the current prefix draw K blocks of B tokens from pi_ref (the prefix's KV cache is copied to
the K rows, never re-encoded), estimate each block's value vector (each objective from its value
source: the heads read the hidden states the extension already computed, prefix scoring reads the
partial texts), let the strategy choose a block, keep it, and repeat until EOS or max_tokens. The
strategies differ only in how they choose: `WeightedBlockwise` (controlled's blockwise mode and
multi_objective) keeps argmax_k w^T V_k with the request's weights; robust solves for w* per block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from alignd.backends.base import Capability, Completion, FinishReason, PartialResponses, Policy
from alignd.decoding.base import (
    Decode,
    DecodeContext,
    DecodeRequest,
    DecodeResult,
    KLEstimate,
    ScoredCandidate,
    Strategy,
)
from alignd.decoding.kl import best_of_n_kl_bound, best_of_n_kl_estimate
from alignd.decoding.value_estimates import ValueEstimator
from alignd.rewardmodels.base import Scorer


@dataclass
class BlockChoice:
    pick: int
    scores: np.ndarray  # [K]: what the blocks were ranked by (w^T V on the common scale)
    weights: np.ndarray  # [G]: the weights that ranked them (robust: this block's w*)


# (values on the common scale [K, G], NaN where not estimated) -> the block to keep.
Chooser = Callable[[np.ndarray], BlockChoice]


@dataclass
class BlockwiseRun:
    partial: PartialResponses
    kl: list[KLEstimate]
    blocks: int
    weights: list[np.ndarray] = field(default_factory=list)  # per block


class BlockParams(Protocol):
    """What every blockwise strategy's parameters hold."""

    @property
    def num_candidates(self) -> int: ...
    @property
    def block_tokens(self) -> int: ...
    @property
    def value_source(self) -> str: ...


B = TypeVar("B", bound=BlockParams)


class WeightedBlockwise(Strategy[B]):
    """Blockwise decoding by the request's fixed weights: keep argmax_k w^T V_k. Both
    `multi_objective` and `controlled` (mode blockwise) are this."""

    requires = frozenset({Capability.SAMPLE, Capability.EXTEND})
    refuses_greedy = True  # K greedy blocks are K copies of one block

    def rows(self, params: B) -> int:
        return 1 + params.num_candidates  # the chosen prefix plus its K continuations

    def plan(self, request: DecodeRequest, params: B, policy: Policy, scorer: Scorer) -> Decode:
        values = ValueEstimator.for_weighted(self.name, request.weights, policy, scorer, params.value_source)
        choose = weighted_argmax(request.weights.vector)

        def decode(ctx: DecodeContext) -> DecodeResult:
            return decode_blockwise(ctx, params, values, choose)

        return decode


def weighted_argmax(weights: np.ndarray) -> Chooser:
    """The fixed-weights rule of controlled decoding and MOD: keep argmax_k w^T V_k."""

    def choose(standardised: np.ndarray) -> BlockChoice:
        scores = np.nan_to_num(standardised, nan=0.0) @ weights  # NaN only where w = 0
        return BlockChoice(int(np.argmax(scores)), scores, weights)

    return choose


def decode_blockwise(
    ctx: DecodeContext,
    params: BlockParams,
    values: ValueEstimator,
    choose: Chooser,
    details: Callable[[BlockwiseRun, np.ndarray], dict[str, float]] | None = None,
) -> DecodeResult:
    """A whole blockwise decode: prefill, the block loop, the final text scored by the objectives.
    `details(run, final_rewards)` adds strategy-specific figures to the result."""
    run = decode_blocks(
        ctx,
        ctx.prefill(),
        num_candidates=params.num_candidates,
        block_tokens=params.block_tokens,
        values=values,
        choose=choose,
    )
    result, scored = ctx.finish_decoded(run.partial, run.kl, {"blocks": float(run.blocks)})
    if details is not None:
        result.details.update(details(run, scored.rewards))
    return result


def decode_blocks(
    ctx: DecodeContext,
    partial: PartialResponses,
    *,
    num_candidates: int,
    block_tokens: int,
    values: ValueEstimator,
    choose: Chooser,
) -> BlockwiseRun:
    """Run the loop from `partial` (one row). The estimator's objectives are estimated for every
    block; the stream reports the chosen block's worst among them on the common scale."""
    names = ctx.request.weights.names
    objectives = list(values.sources)
    k = num_candidates
    run = BlockwiseRun(partial, [], 0)
    estimate = 0.0
    while not run.partial.done:
        before = len(run.partial.token_ids[0])
        blocks = ctx.extend(run.partial, k, block_tokens)
        estimates, standardised = values(ctx, blocks)
        with ctx.phase("choose"):
            choice = choose(standardised)
        run.partial = ctx.policy.select(blocks, [choice.pick])
        run.blocks += 1
        run.weights.append(choice.weights)
        # Per-block estimate: block b is a best-of-K draw from pi_ref(. | prefix), so the chain
        # rule sums Beirami et al.'s estimate at eps_b = pi_ref(block_b | prefix).
        block_logprob = float(sum(blocks.token_logprobs[choice.pick][before:]))
        estimate += best_of_n_kl_estimate(k, min(block_logprob, 0.0))
        if ctx.request.on_progress is not None:
            candidates = [
                ScoredCandidate(
                    block_completion(ctx.policy, blocks, row, before),
                    estimates[row],
                    float(choice.scores[row]),
                    row == choice.pick,
                )
                for row in range(k)
            ]
            chosen = standardised[choice.pick]
            worst = min((names.index(n) for n in objectives), key=lambda g: chosen[g])
            ctx.report(
                "block",
                run.blocks,
                f"block {run.blocks}: chose {choice.pick + 1}/{k}, w.V {choice.scores[choice.pick]:+.3f}: "
                f"{candidates[choice.pick].completion.text!r}",
                candidates,
                weights={n: float(w) for n, w in zip(names, choice.weights)},
                worst_objective=names[worst],
                worst_value=float(chosen[worst]),
                committed=ctx.policy.completion(run.partial, 0).text,
            )
    run.kl = [
        KLEstimate(
            "blockwise_bound",
            "upper_bound",
            run.blocks * best_of_n_kl_bound(k),
            f"{run.blocks} blocks x (log K - (K-1)/K), K={k}: an upper bound",
        ),
        KLEstimate(
            "blockwise_estimate",
            "estimate",
            estimate,
            "sum over blocks of Beirami et al.'s best-of-K estimate at each chosen block's pi_ref",
        ),
    ]
    return run


def block_completion(policy: Policy, partial: PartialResponses, row: int, start: int) -> Completion:
    """The tokens of `row` from position `start` on, as a Completion (for progress events)."""
    ids = partial.token_ids[row][start:]
    return Completion(
        policy.detokenize(ids), ids, partial.token_logprobs[row][start:], partial.finish[row] or FinishReason.LENGTH
    )
