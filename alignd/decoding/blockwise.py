"""The blockwise value-guided loop shared by `controlled`, `multi_objective` and `robust`.

From the current prefix draw K blocks of B tokens from pi_ref (the prefix's KV cache is copied to
the K rows, never re-encoded), estimate each block's value vector (each objective from its value
source: the heads read the hidden states the extension already computed, prefix scoring reads the
partial texts), let the strategy choose a block, keep it, and repeat until EOS or max_tokens. The strategies differ only in how they choose.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from alignd.backends.base import Completion, FinishReason, PartialResponses, Policy
from alignd.decoding.base import (
    DecodeRequest,
    DecodeResult,
    KLEstimate,
    ProgressEvent,
    ScoredCandidate,
    Usage,
    finish,
    score_candidates,
)
from alignd.decoding.kl import best_of_n_kl_bound, best_of_n_kl_estimate
from alignd.decoding.value_estimates import ValueEstimator
from alignd.errors import InvalidArgument
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


def refuse_greedy(request: DecodeRequest, strategy: str) -> None:
    if request.sampling.greedy:
        # K greedy blocks are K copies of one block: there would be nothing to choose from.
        raise InvalidArgument("sampling.temperature", f"{strategy} samples from pi_ref: use a temperature > 0")


def weighted_argmax(weights: np.ndarray) -> Chooser:
    """The fixed-weights rule of controlled decoding and MOD: keep argmax_k w^T V_k."""

    def choose(standardised: np.ndarray) -> BlockChoice:
        scores = np.nan_to_num(standardised, nan=0.0) @ weights  # NaN only where w = 0
        return BlockChoice(int(np.argmax(scores)), scores, weights)

    return choose


def decode_blockwise(
    request: DecodeRequest,
    policy: Policy,
    scorer: Scorer,
    *,
    strategy: str,
    num_candidates: int,
    block_tokens: int,
    values: ValueEstimator,
    choose: Chooser,
    details: Callable[[BlockwiseRun, np.ndarray], dict[str, float]] | None = None,
) -> DecodeResult:
    """A whole blockwise decode: prefill, the block loop, the final text scored by the objectives.
    `details(run, final_rewards)` adds strategy-specific figures to the result."""
    refuse_greedy(request, strategy)
    started = time.perf_counter()
    usage = Usage()
    with usage.phase("prefill"):
        partial = policy.begin(request.prompt, request.sampling, request.cancel)
    usage.prompt_tokens = partial.prompt_tokens
    run = decode_blocks(
        request,
        policy,
        partial,
        usage,
        started,
        num_candidates=num_candidates,
        block_tokens=block_tokens,
        values=values,
        choose=choose,
    )
    usage.lm_forward_tokens = run.partial.forward_tokens
    scored = score_candidates(request, scorer, [policy.completion(run.partial, 0)], usage)
    extra = details(run, scored[0].rewards) if details is not None else {}
    return finish(request, scored[0], scored, run.kl, usage, started, {"blocks": float(run.blocks), **extra})


def decode_blocks(
    request: DecodeRequest,
    policy: Policy,
    partial: PartialResponses,
    usage: Usage,
    started: float,
    *,
    num_candidates: int,
    block_tokens: int,
    values: ValueEstimator,
    choose: Chooser,
) -> BlockwiseRun:
    """Run the loop from `partial` (one row). The estimator's objectives are estimated for every
    block; the stream reports the chosen block's worst among them on the common scale."""
    names = request.weights.names
    objectives = list(values.sources)
    k = num_candidates
    run = BlockwiseRun(partial, [], 0)
    estimate = 0.0
    while not run.partial.done:
        before = len(run.partial.token_ids[0])
        with usage.phase("extend"):
            blocks = policy.extend(run.partial, k, block_tokens, request.cancel)
        usage.generated_tokens += sum(len(ids) - before for ids in blocks.token_ids)
        estimates, standardised = values(blocks, usage)
        with usage.phase("choose"):
            choice = choose(standardised)
        run.partial = policy.select(blocks, [choice.pick])
        run.blocks += 1
        run.weights.append(choice.weights)
        # Per-block estimate: block b is a best-of-K draw from pi_ref(. | prefix), so the chain
        # rule sums Beirami et al.'s estimate at eps_b = pi_ref(block_b | prefix).
        block_logprob = float(sum(blocks.token_logprobs[choice.pick][before:]))
        estimate += best_of_n_kl_estimate(k, min(block_logprob, 0.0))
        if request.on_progress is not None:
            candidates = [
                ScoredCandidate(
                    block_completion(policy, blocks, row, before),
                    estimates[row],
                    float(choice.scores[row]),
                    row == choice.pick,
                )
                for row in range(k)
            ]
            chosen = standardised[choice.pick]
            worst = min((names.index(n) for n in objectives), key=lambda g: chosen[g])
            request.on_progress(
                ProgressEvent(
                    "block",
                    run.blocks,
                    f"block {run.blocks}: chose {choice.pick + 1}/{k}, w.V {choice.scores[choice.pick]:+.3f}: "
                    f"{candidates[choice.pick].completion.text!r}",
                    time.perf_counter() - started,
                    candidates,
                    weights={n: float(w) for n, w in zip(names, choice.weights)},
                    worst_objective=names[worst],
                    worst_value=float(chosen[worst]),
                )
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
