"""Do the shipped preference vectors steer their objectives, monotonically in eta, and at what price?

On the held-out eval prompts (never used to choose training settings), for each vector p and
eta in {-1, -0.5, 0, 0.5, 1}: `--samples` responses per prompt from the model steered by
eta phi_p (T = 0.7, 64 tokens, the same seed for every eta: common random numbers), scored by
every objective. Printed per vector: each objective's mean per eta, whether the steered
objective's mean rises monotonically with eta, and eta = 1 against eta = 0 with a paired 95%
t-interval over prompts (per-prompt means differenced), for every objective (the drift of the
others is the vector's price). The conditions run as concurrent requests, so their decoding steps
share forwards with mixed strengths per row.

    .venv/bin/python benchmarks/preference_vectors_quality.py [--samples 4] [--limit 0]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import mean_ci, prompt_set, shipped_or_given_vectors

from alignd import models
from alignd.backends.transformers_policy import TransformersPolicy
from alignd.rewardmodels.builtin import BUILTIN_OBJECTIVES, build_scorer
from alignd.training.vector_trainer import per_prompt_rewards

STRENGTHS = (-1.0, -0.5, 0.0, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=4, help="responses per prompt and strength")
    parser.add_argument("--limit", type=int, default=0, help="first N eval prompts (0: all 50)")
    parser.add_argument("--batch", type=int, default=5, help="prompts per sample call")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--vectors", default="", help="a vectors file (default: the shipped ones)")
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args()

    vectors = shipped_or_given_vectors(args.vectors)
    policy = TransformersPolicy(models.resolve(models.DEFAULT_MODEL), model_name=models.DEFAULT_MODEL, vectors=vectors)
    scorer = build_scorer(BUILTIN_OBJECTIVES)
    objectives = list(scorer.objective_names)
    prompts = prompt_set("eval", args.limit)

    conditions = [()] + [((name, eta),) for name in vectors.names for eta in STRENGTHS if eta != 0.0]

    def run(steering) -> np.ndarray:
        return per_prompt_rewards(policy, scorer, prompts, steering, args.samples, 64, batch=args.batch, seed=args.seed)

    with ThreadPoolExecutor(len(conditions)) as pool:
        results = dict(zip(conditions, pool.map(run, conditions)))

    figures: dict = {"prompts": len(prompts), "samples": args.samples, "objectives": objectives, "vectors": {}}
    print(f"{len(prompts)} eval prompts x {args.samples} samples per strength, T=0.7, 64 tokens")
    for name in vectors.names:
        steered = objectives.index(vectors.infos[name].objective)
        table = {eta: results[((name, eta),) if eta != 0.0 else ()] for eta in STRENGTHS}
        means = {eta: table[eta].mean(axis=0) for eta in STRENGTHS}
        monotone = all(means[a][steered] < means[b][steered] for a, b in itertools.pairwise(STRENGTHS))
        print(f"\nvector {name!r} (objective {objectives[steered]}): mean per eta")
        print("eta".rjust(6) + "".join(o.rjust(14) for o in objectives))
        for eta in STRENGTHS:
            print(f"{eta:+6.1f}" + "".join(f"{m:14.4f}" for m in means[eta]))
        shift = {}
        row = "1 - 0".rjust(6)
        for g, objective in enumerate(objectives):
            mean, half = mean_ci(list(table[1.0][:, g] - table[0.0][:, g]))
            shift[objective] = {"mean": mean, "low": mean - half, "high": mean + half}
            row += f"{mean:+8.4f}±{half:.3f}".rjust(14)
        print(row + "   (paired 95% interval over prompts)")
        above = shift[objectives[steered]]["low"] > 0
        print(f"monotone in eta: {monotone}; eta=1 beats eta=0 on {objectives[steered]}: {above}")
        figures["vectors"][name] = {
            "objective": objectives[steered],
            "means": {f"{eta:+.1f}": dict(zip(objectives, means[eta].tolist())) for eta in STRENGTHS},
            "monotone": monotone,
            "eta1_vs_eta0": shift,
        }
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
