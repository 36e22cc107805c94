"""How well do the value heads rank responses *to the same prompt*? (What blockwise steering needs.)

On held-out rollouts (several responses per prompt, from `alignd train rollouts`), for each
objective and prefix fraction: the Pearson correlation of the head's prediction with the final
reward over all rollouts (what `alignd train value` reports), the same after removing each
prompt's mean from both (within-prompt), and the fraction of same-prompt pairs the head orders
like the final reward. Steering picks among continuations of one prompt, so the within-prompt
figures are the ones that matter; a head can score well overall by telling prompts apart.

    .venv/bin/python benchmarks/value_head_ranking.py [--rollouts build/heads/eval_rollouts.jsonl]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alignd import models  # noqa: E402
from alignd.backends.features import prefix_features  # noqa: E402
from alignd.backends.loading import load_policy  # noqa: E402
from alignd.rewardmodels.heads import Head  # noqa: E402
from alignd.training.data import read_jsonl  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", default="build/heads/eval_rollouts.jsonl")
    parser.add_argument("--heads", default=None, help="value heads (default: the shipped ones)")
    parser.add_argument("--out", default="benchmarks/results/value_head_ranking.json")
    args = parser.parse_args()
    rows = list(read_jsonl(args.rollouts, {"prompt": str, "token_ids": list, "rewards": dict}))
    policy = load_policy(models.DEFAULT_MODEL)
    heads_path = args.heads or str(Path(__file__).resolve().parents[1] / "alignd" / "data" / "heads"
                                   / policy.model_name / "value_heads.safetensors")
    head = Head.load(heads_path)
    states = prefix_features(policy, rows)
    groups = defaultdict(list)
    for i, row in enumerate(rows):
        groups[row["prompt"]].append(i)
    print(f"{len(rows)} rollouts of {len(groups)} prompts from {args.rollouts}")
    print(f"{'objective':<14}{'prefix':>7}{'overall r':>11}{'within-prompt r':>17}{'pairs ordered':>15}")
    report = []
    for fraction in FRACTIONS:
        at = torch.stack([s[round(fraction * (len(s) - 1))] for s in states])
        predicted = head.predict(at).double().numpy()
        for g, name in enumerate(head.objectives):
            truth = np.array([row["rewards"][name] for row in rows])
            guess = predicted[:, g]
            centred_truth, centred_guess = truth.copy(), guess.copy()
            agree, pairs = 0, 0
            for indices in groups.values():
                centred_truth[indices] -= truth[indices].mean()
                centred_guess[indices] -= guess[indices].mean()
                for i, j in itertools.combinations(indices, 2):
                    if truth[i] != truth[j]:
                        pairs += 1
                        agree += (guess[i] - guess[j]) * (truth[i] - truth[j]) > 0
            entry = {"objective": name, "fraction": fraction, "overall_r": pearson(guess, truth),
                     "within_prompt_r": pearson(centred_guess, centred_truth),
                     "pairs_ordered": agree / pairs if pairs else float("nan"), "pairs": pairs}
            report.append(entry)
            print(f"{name:<14}{fraction:>7.0%}{entry['overall_r']:>11.3f}{entry['within_prompt_r']:>17.3f}"
                  f"{entry['pairs_ordered']:>15.3f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rollouts": args.rollouts, "heads": heads_path, "rows": report}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
