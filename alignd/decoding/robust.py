"""robust: robust multi-objective controlled decoding (RMOD; Son et al., "Robust Multi-Objective
Controlled Decoding of Large Language Models").

Instead of a fixed weighted sum, each block maximises the worst case over weights: with K
candidate blocks from pi_ref and their value vectors V_k (each objective from its value source,
on the common scale), the adversary's weights are

    w* = argmin_{w in W} log (1/K) sum_k exp(lambda w^T V_k)

(`worst_case.solve`), and the block kept is argmax_k w*^T V_k (the practical variant of the
best response pi_ref exp(lambda w*^T V) / Z). W is the simplex, optionally restricted to some
objectives and bounded below per objective. Small lambda puts w* on the objective that is worst
on average over the blocks; large lambda gives the minimax weights.

The request's `weights` do not steer `robust`; they only define the reported weighted score, so
results compare with other strategies under the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from alignd.backends.base import Capability, Policy
from alignd.decoding.base import Decode, DecodeContext, DecodeRequest, DecodeResult, Strategy, register
from alignd.decoding.blockwise import BlockChoice, BlockwiseRun, decode_blockwise
from alignd.decoding.params import param
from alignd.decoding.value_estimates import ValueEstimator, value_source_param
from alignd.decoding.worst_case import WeightSet, solve
from alignd.errors import InvalidArgument
from alignd.rewardmodels.base import Scorer


@dataclass(frozen=True)
class RobustParams:
    num_candidates: int = param(8, "K: candidate blocks drawn per step", min=2, limit="max_candidates")
    block_tokens: int = param(8, "B: tokens per block", min=1, limit="max_tokens")
    strength: float = param(
        1.0,
        "lambda: small puts w* on the worst objective on average, large gives minimax weights",
        above=0.0,
        max=1e4,
    )
    solver: str = param(
        "fast", "worst-case weight solver: fast (projected Newton) or cvxpy (Clarabel)", choices=("fast", "cvxpy")
    )
    objectives: tuple[str, ...] = param((), "objectives the adversary may weight; empty: all")
    min_weights: dict[str, float] = param(
        {}, "lower bounds on the adversary's weights per objective, summing to at most 1", min=0.0, max=1.0
    )
    value_source: str = value_source_param()


@register
class RobustStrategy(Strategy[RobustParams]):
    name = "robust"
    description = (
        "Robust multi-objective decoding (RMOD): per block, worst-case weights w* from a convex program "
        "over the value estimates of K blocks, keep argmax_k w*.V_k."
    )
    Params = RobustParams
    requires = frozenset({Capability.SAMPLE, Capability.EXTEND})
    refuses_greedy = True

    def rows(self, params: RobustParams) -> int:
        return 1 + params.num_candidates

    def plan(self, request: DecodeRequest, params: RobustParams, policy: Policy, scorer: Scorer) -> Decode:
        names = scorer.objective_names
        feasible = weight_set(params, names)
        # Estimates for every objective the adversary may weight.
        adversary = [n for n, allowed in zip(names, feasible.allowed) if allowed]
        values = ValueEstimator.resolve(self.name, policy, scorer, adversary, params.value_source)

        def decode(ctx: DecodeContext) -> DecodeResult:
            chooser = WorstCaseChooser(params, feasible, scorer)
            return decode_blockwise(ctx, params, values, chooser, chooser.details)

        return decode


def weight_set(params: RobustParams, names: tuple[str, ...]) -> WeightSet:
    """The adversary's feasible weights from the request; errors name the parameter."""
    for i, name in enumerate(params.objectives):
        if name not in names:
            raise InvalidArgument(
                f"robust.objectives[{i}]", f"unknown objective {name!r}; this server scores {list(names)}"
            )
    allowed = np.array([not params.objectives or n in params.objectives for n in names])
    lower = np.zeros(len(names))
    for name, bound in params.min_weights.items():
        field = f"robust.min_weights[{name}]"
        if name not in names:
            raise InvalidArgument(field, f"unknown objective; this server scores {list(names)}")
        if not allowed[names.index(name)]:
            raise InvalidArgument(field, f"{name!r} is not among robust.objectives {list(params.objectives)}")
        lower[names.index(name)] = bound
    if lower.sum() > 1 + 1e-9:
        raise InvalidArgument("robust.min_weights", f"lower bounds sum to {lower.sum():g}; they must sum to at most 1")
    return WeightSet(lower, allowed)


class WorstCaseChooser:
    """Per block: solve for w* (warm-started at the previous block's w*), keep argmax_k w*^T V_k."""

    def __init__(self, params: RobustParams, feasible: WeightSet, scorer: Scorer) -> None:
        self.params = params
        self.feasible = feasible
        self.scorer = scorer
        self.previous: np.ndarray | None = None
        self.fallbacks = 0

    def __call__(self, standardised: np.ndarray) -> BlockChoice:
        values = np.nan_to_num(standardised, nan=0.0)  # NaN only outside the adversary's objectives
        solution = solve(values, self.params.strength, self.feasible, self.params.solver, self.previous)
        self.fallbacks += solution.solver != self.params.solver
        self.previous = solution.weights
        scores = values @ solution.weights
        return BlockChoice(int(np.argmax(scores)), scores, solution.weights)

    def details(self, run: BlockwiseRun, rewards: np.ndarray) -> dict[str, float]:
        """Mean w* over the blocks, and the final text's worst objective on the common scale."""
        names = self.scorer.objective_names
        mean = np.mean(run.weights, axis=0) if run.weights else np.zeros(len(names))
        final = self.scorer.standardise(rewards[None, :])[0]
        worst = min((g for g in range(len(names)) if self.feasible.allowed[g]), key=lambda g: final[g])
        return {
            **{f"mean_w*[{name}]": float(w) for name, w in zip(names, mean)},
            "worst_standardised_reward": float(final[worst]),
            "solver_fallbacks": float(self.fallbacks),
        }
