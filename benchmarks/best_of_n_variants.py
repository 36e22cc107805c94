"""Best-of-n at a fraction of the cost: speculative_best_of_n and soft_best_of_n against best_of_n,
on the shipped prompts, side by side in one run (same prompts, same seeds).

Per prompt (seed 20000 + index, temperature 0.7, --tokens new tokens, the request's weights):
  - best_of_n n=8 and best_of_n n=N (N = the speculative runs' N), decoded for real;
  - each speculative configuration N:alpha:rejection_tokens (value_source auto), decoded for real;
  - soft_best_of_n n=8 at each beta, over the very candidates best_of_n n=8 drew (the strategy runs
    for real; its sampling call is answered with best_of_n's batch, which the same seed would
    draw again), so the beta sweep costs no decoding.
Prints mean weighted reward +- 95% t-interval, paired differences, generated tokens and wall time;
for soft_best_of_n its KL bound and how often it chose best_of_n's answer. Writes JSON.

    .venv/bin/python benchmarks/best_of_n_variants.py --split train --limit 20 --speculative 32:0.125:8 16:0.25:16
    .venv/bin/python benchmarks/best_of_n_variants.py --split eval --speculative 16:0.25:16

Choose the speculative settings on --split train; run the eval split once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import mean_ci, paired, prompt_set, served_policy_and_scorer

from alignd.backends.base import ChatPrompt, SampleBatch, SamplingParams
from alignd.decoding.base import DecodeRequest, DecodeResult, get_strategy
from alignd.decoding.weights import parse_weights

BON_N = 8


class Replay:
    """A policy whose `sample` answers with a batch drawn before (same prompt, n and sampling);
    everything else goes to the real policy."""

    def __init__(self, policy: Any, batch: Any) -> None:
        self._policy, self._batch = policy, batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self._policy, name)

    def sample(self, prompts, n, sampling, cancel=None):
        return self._batch


def selected(result: DecodeResult) -> int:
    return next(i for i, c in enumerate(result.candidates) if c.selected)


def parse_speculative(spec: str) -> dict[str, Any]:
    """N:alpha:rejection_tokens[:max_rejections]"""
    n, alpha, tokens, *rounds = spec.split(":")
    params = {"num_candidates": int(n), "keep_fraction": float(alpha), "rejection_tokens": int(tokens)}
    return params | ({"max_rejections": int(rounds[0])} if rounds else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="train", choices=("eval", "train"))
    parser.add_argument("--limit", type=int, default=0, help="first N prompts (0: all)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--speculative", nargs="+", default=["32:0.125:8"], help="N:alpha:rejection_tokens[:max_rejections]"
    )
    parser.add_argument(
        "--no-full", action="store_true", help="skip best_of_n at the speculative runs' N (no wall-time comparison)"
    )
    parser.add_argument("--betas", nargs="+", type=float, default=[0.01, 0.1, 1.0, 10.0])
    parser.add_argument("--weights", default="", help="name=w,... (default: uniform, the server's default)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    prompts = prompt_set(args.split, args.limit)
    policy, scorer = served_policy_and_scorer()
    given = dict((k, float(v)) for k, v in (item.split("=") for item in args.weights.split(",") if item))
    weights = parse_weights(given, scorer.objective_names)
    best_of_n, speculative, soft = (
        get_strategy("best_of_n"),
        get_strategy("speculative_best_of_n"),
        get_strategy("soft_best_of_n"),
    )
    spec_params = {f"speculative {s}": speculative.Params(**parse_speculative(s)) for s in args.speculative}
    big_ns = sorted({p.num_candidates for p in spec_params.values()})
    full = [] if args.no_full else [f"best_of_n n={n}" for n in big_ns if n != BON_N]
    methods = [f"best_of_n n={BON_N}", *full, *spec_params]
    soft_names = [f"soft_best_of_n n={BON_N} beta={b:g}" for b in args.betas]
    runs: dict[str, dict[str, list[float]]] = {
        name: {"reward": [], "tokens": [], "seconds": [], "kl": [], "choice": []} for name in methods + soft_names
    }
    started = time.perf_counter()
    for index, text in enumerate(prompts):
        sampling = SamplingParams(temperature=0.7, max_tokens=args.tokens, seed=20_000 + index)
        request = DecodeRequest(ChatPrompt(text), sampling, weights, return_candidates=True)
        results: dict[str, DecodeResult] = {}
        for name in methods:
            if name in spec_params:
                strategy, params = speculative, spec_params[name]
            else:
                strategy, params = best_of_n, best_of_n.Params(n=int(name.split("=")[1]))
            results[name] = strategy.decode(request, params, policy, scorer)
        bon = results[f"best_of_n n={BON_N}"]
        replayed = Replay(policy, _batch_of(bon))
        for beta, name in zip(args.betas, soft_names):
            results[name] = soft.decode(request, soft.Params(n=BON_N, beta=beta), replayed, scorer)
        for name, result in results.items():
            run = runs[name]
            run["reward"].append(result.weighted_score)
            run["tokens"].append(result.usage.generated_tokens)
            run["seconds"].append(result.usage.wall_seconds)
            run["kl"].append(result.kl[0].nats)
            run["choice"].append(selected(result))
            for phase, seconds in result.usage.phase_seconds.items():
                run.setdefault(f"{phase}_seconds", []).append(seconds)
        print(f"\r{index + 1}/{len(prompts)} prompts, {time.perf_counter() - started:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    report = summarise(runs, methods, soft_names, big_ns)
    print(
        f"\n{len(prompts)} {args.split} prompts, {args.tokens} new tokens, temperature 0.7, weights "
        f"{ {n: round(w, 3) for n, w in weights.as_dict().items()} } ({time.perf_counter() - started:.0f} s)"
    )
    print(
        f"{'method':<34} {'weighted reward':>18} {f'vs best_of_n n={BON_N}':>20} {'gen tokens':>11} "
        f"{'wall s':>8} {'KL nats':>8}"
    )
    for name, row in report["methods"].items():
        print(
            f"{name:<34} {row['mean']:>+9.4f} +- {row['ci95']:.4f} "
            f"{row['vs_bon8']:>+11.4f} +- {row['vs_bon8_ci95']:.4f}"
            f" {row['mean_generated_tokens']:>11.0f} {row['mean_wall_seconds']:>8.2f} {row['mean_kl']:>8.3f}"
            + (f"  chose best_of_n's answer on {row['matches_best_of_n']:.0%}" if "matches_best_of_n" in row else "")
        )
    for name, row in report["speculative_vs_full"].items():
        print(
            f"{name} vs best_of_n n={row['n']}: reward {row['diff']:+.4f} +- {row['diff_ci95']:.4f} (paired), "
            f"wall time ratio {row['wall_ratio']:.2f} "
            f"(total {row['wall_seconds']:.0f} s vs {row['full_wall_seconds']:.0f} s), "
            f"generated tokens ratio {row['token_ratio']:.2f}"
        )
    out = Path(args.out or f"benchmarks/results/best_of_n_variants_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"split": args.split, "prompts": len(prompts), "tokens": args.tokens, **report, "runs": runs}
    out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {out}")


def _batch_of(result: DecodeResult) -> Any:
    """best_of_n's candidates as the SampleBatch its sampling call returned."""
    return SampleBatch([[c.completion for c in result.candidates]], [0], 0)


def summarise(
    runs: dict[str, dict[str, list[float]]], methods: list[str], soft_names: list[str], big_ns: list[int]
) -> dict[str, Any]:
    bon = runs[f"best_of_n n={BON_N}"]
    table = {}
    for name in methods + soft_names:
        run = runs[name]
        mean, half = mean_ci(run["reward"])
        diff, diff_half = mean_ci(paired(run["reward"], bon["reward"]))
        row = {
            "mean": mean,
            "ci95": half,
            "vs_bon8": diff,
            "vs_bon8_ci95": diff_half,
            "mean_generated_tokens": statistics.mean(run["tokens"]),
            "mean_wall_seconds": statistics.mean(run["seconds"]),
            "mean_kl": statistics.mean(run["kl"]),
        }
        if name in soft_names:
            row["matches_best_of_n"] = statistics.mean(float(a == b) for a, b in zip(run["choice"], bon["choice"]))
        table[name] = row
    versus = {}
    for name in methods:
        if not name.startswith("speculative"):
            continue
        n = int(name.split()[1].split(":")[0])
        if f"best_of_n n={n}" not in runs:
            continue
        full = runs[f"best_of_n n={n}"]
        diff, diff_half = mean_ci(paired(runs[name]["reward"], full["reward"]))
        versus[name] = {
            "n": n,
            "diff": diff,
            "diff_ci95": diff_half,
            "wall_seconds": sum(runs[name]["seconds"]),
            "full_wall_seconds": sum(full["seconds"]),
            "wall_ratio": sum(runs[name]["seconds"]) / sum(full["seconds"]),
            "token_ratio": sum(runs[name]["tokens"]) / sum(full["tokens"]),
        }
    return {"methods": table, "speculative_vs_full": versus}


if __name__ == "__main__":
    main()
