"""Does linear alignment move the text toward its principle, and what does it cost per token?

On the shipped eval prompts, with the principle "Answer kindly and positively." and the
strategy's sampling defaults (T = 0.5, top-p 0.8; --temperature/--top-p change them) for every
arm, the same seeds per prompt: `sample` (no principle), `linear_alignment` with alpha = 0 (the
principle in the prompt only) and with each chosen alpha; --placement puts the principle in the
system prompt (default) or after the user's message. With --seeds S every arm decodes
each prompt S times and a prompt's figure is the mean of its S; the prompt is the unit of the 95%
t-intervals. Prints mean reward per objective, the paired difference in positivity against
`sample`, the linear-alignment diagnostics (mean top-p support size, share of steps where the
extrapolation changed the argmax) and the cost per generated token relative to `sample`, measured
side by side (the arms alternate order per decode). Writes JSON.

    .venv/bin/python benchmarks/linear_alignment_quality.py [--limit 50] [--seeds 1] [--alpha 3] [--split eval]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import mean_ci, prompt_set, served_policy_and_scorer

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.decoding.base import DecodeRequest, get_strategy
from alignd.decoding.weights import parse_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=0, help="first N eval prompts (0: all)")
    parser.add_argument("--principle", default="Answer kindly and positively.")
    parser.add_argument("--alpha", type=float, nargs="+", default=[3.0], help="one arm per alpha")
    parser.add_argument(
        "--split",
        default="eval",
        choices=("eval", "train"),
        help="train: investigate without touching the held-out prompts",
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=1, help="decodes per prompt and arm")
    parser.add_argument("--placement", default="system", choices=("system", "user"), help="where the principle goes")
    parser.add_argument("--temperature", type=float, help="instead of the strategy's default")
    parser.add_argument("--top-p", type=float, help="instead of the strategy's default")
    parser.add_argument("--out", default="benchmarks/results/linear_alignment_quality.json")
    args = parser.parse_args()
    prompts = prompt_set(args.split, args.limit)
    policy, scorer = served_policy_and_scorer()
    names = scorer.objective_names
    sample, linear = get_strategy("sample"), get_strategy("linear_alignment")
    arms = {
        "sample": (sample, sample.Params()),
        "principle only (alpha=0)": (
            linear,
            linear.Params(principle=args.principle, alpha=0.0, placement=args.placement),
        ),
        **{
            f"linear_alignment alpha={a:g}": (
                linear,
                linear.Params(principle=args.principle, alpha=a, placement=args.placement),
            )
            for a in args.alpha
            if a != 0
        },
    }
    defaults = linear.default_sampling(SamplingParams())
    overrides = {k: v for k, v in (("temperature", args.temperature), ("top_p", args.top_p)) if v is not None}
    defaults = dataclasses.replace(defaults, **overrides)
    weights = parse_weights({}, names)
    rewards = {arm: [] for arm in arms}  # per prompt: the mean over its seeds
    per_token = {arm: [] for arm in arms}
    diagnostics = {arm: {"mean_support_tokens": [], "overridden_fraction": []} for arm in arms}
    for index, text in enumerate(prompts):
        draws = {arm: [] for arm in arms}
        for repeat in range(args.seeds):
            sampling = dataclasses.replace(defaults, max_tokens=args.tokens, seed=30_000 + index + 1000 * repeat)
            request = DecodeRequest(ChatPrompt(text), sampling, weights)
            order = list(arms) if (index + repeat) % 2 == 0 else list(reversed(arms))
            for arm in order:
                strategy, params = arms[arm]
                result = strategy.decode(request, params, policy, scorer)
                draws[arm].append(result.rewards)
                per_token[arm].append(result.usage.wall_seconds / max(result.usage.generated_tokens, 1))
                for key, values in diagnostics[arm].items():
                    if key in result.details:
                        values.append(result.details[key])
        for arm in arms:
            rewards[arm].append({n: statistics.mean(d[n] for d in draws[arm]) for n in names})
        print(f"\r{index + 1}/{len(prompts)} prompts", end="", file=sys.stderr)
    print(file=sys.stderr)

    print(
        f"\n{len(prompts)} {args.split} prompts x {args.seeds} seeds, {args.tokens} new tokens, "
        f"T={defaults.temperature}, top-p={defaults.top_p}, principle {args.principle!r} in the {args.placement} turn"
    )
    print(
        f"{'arm':<28}" + "".join(f"{n[:12]:>18}" for n in names) + f"{'positivity vs sample':>24}"
        f"{'support':>9}{'changed':>9}{'s/token ratio':>15}"
    )

    def paired(arm: str, other: str, objective: str) -> tuple[float, float]:
        """Mean per-prompt difference arm - other in one objective, with its 95% half-width."""
        return mean_ci([a[objective] - b[objective] for a, b in zip(rewards[arm], rewards[other])])

    table = {}
    for arm in arms:
        cells = {n: mean_ci([r[n] for r in rewards[arm]]) for n in names}
        diff = paired(arm, "sample", "positivity")
        ratio = statistics.median(a / b for a, b in zip(per_token[arm], per_token["sample"]))
        seen = {k: statistics.mean(v) for k, v in diagnostics[arm].items() if v}
        table[arm] = {
            "objectives": {n: {"mean": m, "ci95": h} for n, (m, h) in cells.items()},
            "positivity_vs_sample": {"mean": diff[0], "ci95": diff[1]},
            "seconds_per_token_ratio_vs_sample": ratio,
            "rewards": rewards[arm],
            **seen,
        }
        versus = "" if arm == "sample" else f"{diff[0]:+.4f} +- {diff[1]:.4f}"
        support = f"{seen['mean_support_tokens']:.2f}" if seen else ""
        changed = f"{seen['overridden_fraction']:.3f}" if seen else ""
        print(
            f"{arm:<28}" + "".join(f"{m:>+9.3f} +-{h:.3f}" for m, h in cells.values()) + f"{versus:>24}"
            f"{support:>9}{changed:>9}{ratio:>15.3f}"
        )
    for arm in list(arms)[2:]:
        over_prompt = paired(arm, "principle only (alpha=0)", "positivity")
        relevance = paired(arm, "sample", "relevance")
        table[arm]["positivity_vs_principle_only"] = {"mean": over_prompt[0], "ci95": over_prompt[1]}
        table[arm]["relevance_vs_sample"] = {"mean": relevance[0], "ci95": relevance[1]}
        print(
            f"{arm}: positivity vs principle only {over_prompt[0]:+.4f} +- {over_prompt[1]:.4f}, "
            f"relevance vs sample {relevance[0]:+.4f} +- {relevance[1]:.4f}"
        )
    print(
        "\nsupport: mean top-p support size per step; changed: share of steps whose argmax the "
        "extrapolation changed.\ns/token ratio: median over decodes of (seconds per generated token) / "
        "(the same for sample), side by side; target <= 1.6"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "split": args.split,
                "prompts": len(prompts),
                "seeds": args.seeds,
                "tokens": args.tokens,
                "temperature": defaults.temperature,
                "top_p": defaults.top_p,
                "principle": args.principle,
                "placement": args.placement,
                "alpha": args.alpha,
                "arms": table,
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
