"""Does controlled decoding raise the objective it is steered toward? Held-out prompts.

For each objective given (default: relevance and positivity), with all weight on it, on the
shipped eval prompts: `sample`, `best_of_n` with n=8 (the same generated-token budget as blockwise
K=8, B=8 at 64 tokens) and `controlled` blockwise K=8, B=8 with each value source asked for
(default: auto). Prints mean final reward +- 95% t-interval per method, the paired difference
against `sample` and against best_of_n, and the share of best_of_n's gain over sample that
controlled reaches; writes JSON next to the table.

    .venv/bin/python benchmarks/controlled_quality.py [--objectives relevance positivity] [--limit 50]
        [--sources auto heads prefix] [--split eval]

`--split train` runs on training prompts, to investigate without touching the held-out set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import mean_ci, paired, prompt_set, served_policy_and_scorer

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.weights import parse_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objectives", nargs="+", default=["relevance", "positivity"])
    parser.add_argument(
        "--sources",
        nargs="+",
        default=["auto"],
        choices=("auto", "heads", "prefix"),
        help="value sources of controlled decoding to compare",
    )
    parser.add_argument("--split", default="eval", choices=("eval", "train"))
    parser.add_argument("--limit", type=int, default=0, help="first N prompts (0: all)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/controlled_quality.json")
    args = parser.parse_args()
    prompts = prompt_set(args.split, args.limit)
    policy, scorer = served_policy_and_scorer()
    sample, best_of_n, controlled = get_strategy("sample"), get_strategy("best_of_n"), get_strategy("controlled")
    methods = {
        "sample": (sample, sample.Params()),
        "best_of_n n=8": (best_of_n, best_of_n.Params(n=8)),
        **{
            f"controlled K=8 B=8 {source}": (
                controlled,
                controlled.Params(num_candidates=8, block_tokens=8, value_source=source),
            )
            for source in args.sources
        },
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
            print(
                f"\r{objective}: {index + 1}/{len(prompts)} prompts, {time.perf_counter() - started:.0f} s",
                end="",
                file=sys.stderr,
            )
        print(file=sys.stderr)
        print(
            f"\nobjective {objective}: {len(prompts)} {args.split} prompts, {args.tokens} new tokens, "
            f"temperature 0.7 ({time.perf_counter() - started:.0f} s)"
        )
        print(
            f"{'method':<28} {'mean reward':>20} {'vs sample (paired)':>22} {'vs best_of_n (paired)':>23} "
            f"{'share of BoN gain':>18} {'gen tokens':>11}"
        )
        rows = {}
        bon_gain = mean_ci(paired(rewards["best_of_n n=8"], rewards["sample"]))[0]
        for name in methods:
            mean, half = mean_ci(rewards[name])
            diff, diff_half = mean_ci(paired(rewards[name], rewards["sample"]))
            over_bon, over_bon_half = mean_ci(paired(rewards[name], rewards["best_of_n n=8"]))
            rows[name] = {
                "mean": mean,
                "ci95": half,
                "diff_vs_sample": diff,
                "diff_ci95": diff_half,
                "diff_vs_best_of_n": over_bon,
                "diff_vs_best_of_n_ci95": over_bon_half,
                "share_of_best_of_n_gain": diff / bon_gain if bon_gain else float("nan"),
                "mean_generated_tokens": sum(budget[name]) / len(budget[name]),
                "rewards": rewards[name],
            }
            versus = "" if name == "sample" else f"{diff:+.4f} +- {diff_half:.4f}"
            versus_bon = "" if not name.startswith("controlled") else f"{over_bon:+.4f} +- {over_bon_half:.4f}"
            share = "" if not name.startswith("controlled") else f"{rows[name]['share_of_best_of_n_gain']:.2f}"
            print(
                f"{name:<28} {mean:>+11.4f} +- {half:.4f} {versus:>22} {versus_bon:>23} {share:>18} "
                f"{rows[name]['mean_generated_tokens']:>11.0f}"
            )
        report[objective] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"split": args.split, "prompts": len(prompts), "tokens": args.tokens, "results": report}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
