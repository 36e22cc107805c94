"""Robust vs fixed-weight multi-objective decoding on held-out prompts (the RMOD comparison).

For a set of objectives (default: relevance and positivity, the two that vary and conflict among
responses to one prompt on SmolLM2; see benchmarks/value_source_ranking.py), on the shipped eval
prompts: `sample`, `best_of_n` n=8 (uniform weights over the set), `multi_objective` K=8, B=8
(uniform weights, MOD) and `robust` K=8, B=8 (RMOD, the adversary restricted to the set) at the
same generated-token budget (8 x 64 tokens), both with the value source `auto` (or --value-source).
Per method: mean final reward per objective, the mean of each response's worst objective of the
set on the common scale (z-scores with the final-reward statistics stored with the value heads),
95% t-intervals, the paired difference in worst objective against MOD, and time per request.
Writes JSON next to the table.

    .venv/bin/python benchmarks/multi_objective_quality.py [--limit 50] [--strength 1.0] [--split eval]
        [--objectives relevance positivity] [--value-source auto]

`--split train` runs on training prompts: use it to investigate (lambda, value scale) without
tuning on the held-out set.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import mean_ci, prompt_set, served_policy_and_scorer

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.weights import parse_weights


def methods(strength: float, k: int, b: int, objectives: tuple[str, ...], source: str) -> dict:
    sample, best_of_n = get_strategy("sample"), get_strategy("best_of_n")
    mod, robust = get_strategy("multi_objective"), get_strategy("robust")
    return {
        "sample": (sample, sample.Params()),
        f"best_of_n n={k}": (best_of_n, best_of_n.Params(n=k)),
        f"multi_objective K={k} B={b}": (mod, mod.Params(num_candidates=k, block_tokens=b, value_source=source)),
        f"robust K={k} B={b} lambda={strength:g}": (
            robust,
            robust.Params(
                num_candidates=k, block_tokens=b, strength=strength, objectives=objectives, value_source=source
            ),
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="first N prompts (0: all)")
    parser.add_argument("--split", default="eval", choices=("eval", "train"))
    parser.add_argument("--strength", type=float, default=1.0, help="robust's lambda")
    parser.add_argument("--candidates", type=int, default=8, help="K for the blockwise methods, n for best_of_n")
    parser.add_argument("--block-tokens", type=int, default=8)
    parser.add_argument(
        "--objectives",
        nargs="+",
        default=["relevance", "positivity"],
        help="the objectives weighted uniformly (MOD, best_of_n) and open to the adversary (robust)",
    )
    parser.add_argument("--value-source", default="auto", choices=("auto", "heads", "prefix"))
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="STRATEGY",
        help="run only these strategies (multi_objective is always run: the reference)",
    )
    parser.add_argument("--out", default="benchmarks/results/multi_objective_quality.json")
    args = parser.parse_args()
    prompts = prompt_set(args.split, args.limit)
    policy, scorer = served_policy_and_scorer()
    names = scorer.objective_names
    unknown = [o for o in args.objectives if o not in names]
    if unknown:
        parser.error(f"unknown objectives {unknown}; the server scores {list(names)}")
    weights = parse_weights({o: 1.0 for o in args.objectives}, names)  # uniform over the set
    columns = [names.index(o) for o in args.objectives]
    chosen = methods(args.strength, args.candidates, args.block_tokens, tuple(args.objectives), args.value_source)
    if args.only:
        chosen = {m: v for m, v in chosen.items() if v[0].name in {*args.only, "multi_objective"}}
    rewards = {m: [] for m in chosen}
    seconds = {m: [] for m in chosen}
    tokens = {m: [] for m in chosen}
    choose_seconds, blocks = [], 0
    started = time.perf_counter()
    for index, text in enumerate(prompts):
        sampling = SamplingParams(temperature=0.7, max_tokens=args.tokens, seed=20_000 + index)
        request = DecodeRequest(ChatPrompt(text), sampling, weights)
        for name, (strategy, params) in chosen.items():
            result = strategy.decode(request, params, policy, scorer)
            rewards[name].append([result.rewards[n] for n in names])
            seconds[name].append(result.usage.wall_seconds)
            tokens[name].append(result.usage.generated_tokens)
            if strategy.name == "robust":
                choose_seconds.append(result.usage.phase_seconds.get("choose", 0.0))
                blocks += int(result.details["blocks"])
        print(f"\r{index + 1}/{len(prompts)} prompts, {time.perf_counter() - started:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)

    print(
        f"\n{len(prompts)} {args.split} prompts, {args.tokens} new tokens, temperature 0.7, uniform weights over "
        f"{args.objectives}, value source {args.value_source}; worst = min over {args.objectives} of the z-score "
        f"(final-reward statistics stored with the value heads)"
    )
    header = "".join(f"{n[:12]:>18}" for n in names)
    print(f"{'method':<32}{header}{'worst z':>18}{'worst vs MOD':>18}{'s/request':>10}{'tokens':>8}")
    mod_name = next(m for m in chosen if m.startswith("multi_objective"))
    mod_worst = scorer.standardise(np.array(rewards[mod_name]))[:, columns].min(axis=1)
    table = {}
    for name in chosen:
        raw = np.array(rewards[name])
        worst = scorer.standardise(raw)[:, columns].min(axis=1)
        per_objective = {n: mean_ci(list(raw[:, g])) for g, n in enumerate(names)}
        worst_mean, worst_half = mean_ci(list(worst))
        diff, diff_half = mean_ci(list(worst - mod_worst))
        table[name] = {
            "objectives": {n: {"mean": m, "ci95": h} for n, (m, h) in per_objective.items()},
            "worst_z": {"mean": worst_mean, "ci95": worst_half},
            "worst_z_vs_mod": {"mean": diff, "ci95": diff_half},
            "seconds_per_request": float(np.mean(seconds[name])),
            "generated_tokens": float(np.mean(tokens[name])),
            "rewards": rewards[name],
        }
        cells = "".join(f"{m:>+9.3f} +-{h:.3f}" for m, h in per_objective.values())
        versus = "" if name == mod_name else f"{diff:+.3f} +-{diff_half:.3f}"
        print(
            f"{name:<32}{cells}{worst_mean:>+10.3f} +-{worst_half:.3f}{versus:>18}"
            f"{table[name]['seconds_per_request']:>10.2f}{table[name]['generated_tokens']:>8.0f}"
        )
    robust_name = next(m for m in chosen if m.startswith("robust"))
    ratio = table[robust_name]["seconds_per_request"] / table[mod_name]["seconds_per_request"]
    per_block_ms = 1e3 * sum(choose_seconds) / max(blocks, 1)
    print(f"\nrobust / multi_objective time per request = {ratio:.3f}   (target <= 1.2)")
    print(f"robust weight solve + choice per block     = {per_block_ms:.3f} ms over {blocks} blocks")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "split": args.split,
                "prompts": len(prompts),
                "tokens": args.tokens,
                "strength": args.strength,
                "objectives": args.objectives,
                "value_source": args.value_source,
                "methods": table,
                "robust_over_mod_time": ratio,
                "choose_ms_per_block": per_block_ms,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
