"""How fast are robust's worst-case weights, and what does robust cost over multi_objective?

1. Per-block weight solve, fast solver vs cvxpy (Clarabel), on random standardised value
   vectors for G objectives and K blocks at several lambda: median and 95th percentile.
2. `robust` vs `multi_objective` (uniform weights), K=8, B=8, 64 tokens, on the embedded model:
   the two run back to back on the same prompt and seed, the ratio of their wall times per pair.

    .venv/bin/python benchmarks/robust_speed.py [--solves 200] [--prompts 4] [--skip-decode]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alignd.decoding.worst_case import WeightSet, solve_cvxpy, solve_fast


def solver_table(solves: int) -> float:
    rng = np.random.default_rng(0)
    print(
        f"{'G':>3} {'K':>3} {'lambda':>7} {'fast median ms':>15} {'fast p95 ms':>12} {'iterations p95':>15} "
        f"{'cvxpy median ms':>16}"
    )
    worst_p95 = 0.0
    for g in (2, 4, 6, 8, 10):
        for k in (4, 8, 16):
            for strength in (0.1, 1.0, 10.0):
                instances = [rng.normal(size=(k, g)) for _ in range(solves)]
                feasible = WeightSet.simplex(g)
                times, iterations = [], []
                for values in instances:
                    started = time.perf_counter()
                    solution = solve_fast(values, strength, feasible)
                    times.append(time.perf_counter() - started)
                    iterations.append(solution.iterations)
                cvxpy_times = []
                for values in instances[:10]:
                    started = time.perf_counter()
                    solve_cvxpy(values, strength, feasible)
                    cvxpy_times.append(time.perf_counter() - started)
                p95 = float(np.percentile(times, 95)) * 1e3
                worst_p95 = max(worst_p95, p95)
                print(
                    f"{g:>3} {k:>3} {strength:>7g} {statistics.median(times) * 1e3:>15.3f} {p95:>12.3f} "
                    f"{np.percentile(iterations, 95):>15.0f} {statistics.median(cvxpy_times) * 1e3:>16.2f}"
                )
    print(f"\nworst 95th percentile of the fast solver: {worst_p95:.3f} ms (target < 2 ms for G <= 10, K <= 16)")
    return worst_p95


def decode_ratio(prompts: int) -> None:
    from common import served_policy_and_scorer

    from alignd.backends.base import ChatPrompt, SamplingParams
    from alignd.decoding.base import DecodeRequest, get_strategy
    from alignd.decoding.weights import parse_weights
    from alignd.training.data import load_prompts

    policy, scorer = served_policy_and_scorer()
    mod, robust = get_strategy("multi_objective"), get_strategy("robust")
    weights = parse_weights({}, scorer.objective_names)
    ratios, solve_ms = [], []
    for index, text in enumerate(load_prompts("eval")[:prompts]):
        request = DecodeRequest(ChatPrompt(text), SamplingParams(temperature=0.7, max_tokens=64, seed=index), weights)
        pair = {}
        for name, strategy in (("multi_objective", mod), ("robust", robust)):
            result = strategy.decode(request, strategy.Params(), policy, scorer)
            pair[name] = result.usage.wall_seconds
            if name == "robust":
                solve_ms.append(1e3 * result.usage.phase_seconds["choose"] / result.details["blocks"])
        ratios.append(pair["robust"] / pair["multi_objective"])
        print(
            f"prompt {index}: multi_objective {pair['multi_objective']:.2f} s, robust {pair['robust']:.2f} s, "
            f"ratio {ratios[-1]:.3f}"
        )
    print(
        f"\nrobust / multi_objective, median of {len(ratios)} pairs = {statistics.median(ratios):.3f} "
        f"(target <= 1.2); robust's choice per block {statistics.median(solve_ms):.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--solves", type=int, default=200, help="random instances per (G, K, lambda)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--skip-decode", action="store_true")
    args = parser.parse_args()
    solver_table(args.solves)
    if not args.skip_decode:
        decode_ratio(args.prompts)


if __name__ == "__main__":
    main()
