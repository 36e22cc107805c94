"""Does controlled decoding raise the objective it is steered toward? Held-out prompts.

For each objective given (default: positivity), with all weight on it, on the shipped eval
prompts: `sample`, `best_of_n` with n=8 (the same generated-token budget as blockwise K=8, B=8 at
64 tokens) and `controlled` blockwise K=8, B=8. Prints mean final reward +- 95% t-interval per
method and the paired difference against `sample`; writes JSON next to the table.

    .venv/bin/python benchmarks/controlled_quality.py [--objectives positivity relevance] [--limit 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import mean_ci, prompt_set, served_policy_and_scorer  # noqa: E402

from alignd.backends.base import ChatPrompt, SamplingParams  # noqa: E402
from alignd.decoding.base import DecodeRequest, get_strategy  # noqa: E402
from alignd.decoding.weights import parse_weights  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objectives", nargs="+", default=["positivity"])
    parser.add_argument("--limit", type=int, default=0, help="first N eval prompts (0: all)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/controlled_quality.json")
    args = parser.parse_args()
    prompts = prompt_set("eval", args.limit)
    policy, scorer = served_policy_and_scorer()
    sample, best_of_n, controlled = get_strategy("sample"), get_strategy("best_of_n"), get_strategy("controlled")
    methods = {
        "sample": (sample, sample.Params()),
        "best_of_n n=8": (best_of_n, best_of_n.Params(n=8)),
        "controlled K=8 B=8": (controlled, controlled.Params(num_candidates=8, block_tokens=8)),
    }
    report = {}
    for objective in args.objectives:
        weights = parse_weights({objective: 1.0}, scorer.objective_names)
        rewards = {name: [] for name in methods}
        budget = {name: [] for name in methods}
        started = time.perf_counter()
        for index, text in enumerate(prompts):
            sampling = SamplingParams(temperature=0.7, max_tokens=args.tokens, seed=10_000 + index)
            request = DecodeRequest(ChatPrompt(text), sampling, weights)
            for name, (strategy, params) in methods.items():
                result = strategy.decode(request, params, policy, scorer)
                rewards[name].append(result.rewards[objective])
                budget[name].append(result.usage.generated_tokens)
        print(f"\nobjective {objective}: {len(prompts)} held-out prompts, {args.tokens} new tokens, "
              f"temperature 0.7 ({time.perf_counter() - started:.0f} s)")
        print(f"{'method':<22} {'mean reward':>20} {'vs sample (paired)':>24} {'gen tokens':>11}")
        rows = {}
        for name in methods:
            mean, half = mean_ci(rewards[name])
            diff, diff_half = mean_ci([a - b for a, b in zip(rewards[name], rewards["sample"])])
            rows[name] = {"mean": mean, "ci95": half, "diff_vs_sample": diff, "diff_ci95": diff_half,
                          "mean_generated_tokens": sum(budget[name]) / len(budget[name]), "rewards": rewards[name]}
            versus = "" if name == "sample" else f"{diff:+.4f} +- {diff_half:.4f}"
            print(f"{name:<22} {mean:>+11.4f} +- {half:.4f} {versus:>24} {rows[name]['mean_generated_tokens']:>11.0f}")
        report[objective] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"prompts": len(prompts), "tokens": args.tokens, "results": report}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
