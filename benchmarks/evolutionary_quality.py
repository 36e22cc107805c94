"""Evolutionary search (DARWIN) against best-of-n at a matched generated-token budget.

On the shipped eval prompts with uniform weights: `evolutionary` with the authors' defaults
(5 beams, m = 40, top-3, 3 cycles, T = 0.7, top-k 40), then `best_of_n` with n chosen per
prompt so that its generated tokens match what evolutionary generated (mutation replies
included), same sampling settings. Prints mean weighted reward and mean reward per objective
+- 95% t-intervals, the paired difference, and the budgets. Writes JSON.

    .venv/bin/python benchmarks/evolutionary_quality.py [--limit 50] [--tokens 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import mean_ci, prompt_set, served_policy_and_scorer

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.weights import parse_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="first N eval prompts (0: all)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--out", default="benchmarks/results/evolutionary_quality.json")
    args = parser.parse_args()
    prompts = prompt_set("eval", args.limit)
    policy, scorer = served_policy_and_scorer()
    names = scorer.objective_names
    evolutionary, best_of_n = get_strategy("evolutionary"), get_strategy("best_of_n")
    defaults = evolutionary.default_sampling(SamplingParams())
    weights = parse_weights({}, names)
    rows = {"evolutionary": [], "best_of_n (matched)": []}
    details, started = [], time.perf_counter()
    for index, text in enumerate(prompts):
        sampling = dataclasses.replace(defaults, max_tokens=args.tokens, seed=40_000 + index)
        request = DecodeRequest(ChatPrompt(text), sampling, weights)
        evolved = evolutionary.decode(request, evolutionary.Params(), policy, scorer)
        n = min(64, max(2, math.ceil(evolved.usage.generated_tokens / args.tokens)))
        best = best_of_n.decode(request, best_of_n.Params(n=n), policy, scorer)
        for name, result in (("evolutionary", evolved), ("best_of_n (matched)", best)):
            rows[name].append(
                {
                    "weighted": result.weighted_score,
                    "rewards": result.rewards,
                    "tokens": result.usage.generated_tokens,
                    "seconds": result.usage.wall_seconds,
                }
            )
        details.append({"n": n, **evolved.details})
        print(f"\r{index + 1}/{len(prompts)} prompts, {time.perf_counter() - started:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)

    print(
        f"\n{len(prompts)} held-out prompts, {args.tokens} new tokens per response, T={defaults.temperature}, "
        f"top-k={defaults.top_k}, uniform weights over {list(names)} (raw rewards)"
    )
    print(
        f"{'method':<22}{'weighted':>18}"
        + "".join(f"{n[:12]:>18}" for n in names)
        + f"{'gen tokens':>11}{'s/request':>10}"
    )
    table = {}
    for name, results in rows.items():
        weighted = mean_ci([r["weighted"] for r in results])
        cells = {n: mean_ci([r["rewards"][n] for r in results]) for n in names}
        tokens = sum(r["tokens"] for r in results) / len(results)
        seconds = sum(r["seconds"] for r in results) / len(results)
        table[name] = {
            "weighted": {"mean": weighted[0], "ci95": weighted[1]},
            "objectives": {n: {"mean": m, "ci95": h} for n, (m, h) in cells.items()},
            "generated_tokens": tokens,
            "seconds_per_request": seconds,
            "rows": results,
        }
        print(
            f"{name:<22}{weighted[0]:>+9.4f} +-{weighted[1]:.4f}"
            + "".join(f"{m:>+9.3f} +-{h:.3f}" for m, h in cells.values())
            + f"{tokens:>11.0f}{seconds:>10.1f}"
        )
    diff = mean_ci([a["weighted"] - b["weighted"] for a, b in zip(rows["evolutionary"], rows["best_of_n (matched)"])])
    print(f"\nevolutionary - best_of_n, paired weighted reward: {diff[0]:+.4f} +- {diff[1]:.4f} (95% t-interval)")
    fallbacks = sum(d["mutation_fallbacks"] for d in details)
    slots = sum(d["cycles"] * (evolutionary.Params().beams - 1) for d in details)
    original_wins = sum(d["winner_is_original_instruction"] for d in details)
    print(
        f"mutation slots filled from the original instruction: {fallbacks:.0f}/{slots:.0f}; "
        f"winning response decoded under the original instruction: {original_wins:.0f}/{len(details)}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "prompts": len(prompts),
                "tokens": args.tokens,
                "methods": table,
                "paired_difference": {"mean": diff[0], "ci95": diff[1]},
                "details": details,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
