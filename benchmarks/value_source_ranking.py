"""How well does each value source rank responses *to the same prompt*? (What blockwise steering needs.)

On held-out rollouts (many responses per prompt, from `alignd train rollouts`), for each value
source (the shipped value heads on hidden states; each objective's own scorer on the partial
text), objective and prefix fraction: MSE, the overall Pearson correlation with the final reward,
the mean within-prompt Spearman correlation, and the share of same-prompt pairs ordered like their
final rewards (ties count one half). Then, which source `auto` picks per objective, and how the
objectives relate among responses to one prompt: the within-prompt correlation of their final
rewards (negative = they conflict) and each one's within-prompt spread (~0 = constant given the
prompt, so as a z-score it is noise).

    .venv/bin/python benchmarks/value_source_ranking.py [--rollouts build/heads/eval_rollouts.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alignd import models
from alignd.backends.features import prefix_features
from alignd.backends.loading import load_policy
from alignd.rewardmodels.builtin import build_scorer
from alignd.rewardmodels.heads import Head
from alignd.rewardmodels.value_sources import HEADS, PREFIX, RANKING_FRACTION, pair_accuracy_key, pick_auto
from alignd.training.data import read_jsonl
from alignd.training.ranking import objective_conflicts, prompt_groups
from alignd.training.value_trainer import FRACTIONS, ValueReport, evaluate_source, prefix_source_values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rollouts", default="build/heads/eval_rollouts.jsonl")
    parser.add_argument("--heads", default=None, help="value heads (default: the shipped ones)")
    parser.add_argument("--out", default="benchmarks/results/value_source_ranking.json")
    args = parser.parse_args()
    rows = list(read_jsonl(args.rollouts, {"prompt": str, "token_ids": list, "rewards": dict}))
    policy = load_policy(models.DEFAULT_MODEL)
    heads_path = args.heads or str(
        Path(__file__).resolve().parents[1]
        / "alignd"
        / "data"
        / "heads"
        / policy.model_name
        / "value_heads.safetensors"
    )
    head = Head.load(heads_path)
    objectives = head.objectives
    scorer = build_scorer(objectives)
    truth = np.array([[row["rewards"][o] for o in objectives] for row in rows])
    mean = np.asarray(head.metadata.mean)
    groups = prompt_groups([row["prompt"] for row in rows])
    states = prefix_features(policy, rows)
    report_rows = []
    for fraction in FRACTIONS:
        at = torch.stack([s[round(fraction * (len(s) - 1))] for s in states])
        report_rows += evaluate_source(
            HEADS, groups, truth, head.predict(at).double().numpy(), fraction, objectives, mean
        )
        scored = prefix_source_values(policy, scorer, rows, fraction, objectives)
        report_rows += evaluate_source(PREFIX, groups, truth, scored, fraction, objectives, mean)
    report = ValueReport(report_rows)
    print(f"{len(rows)} rollouts of {len(groups)} prompts from {args.rollouts}; heads {heads_path}")
    print(report.table())

    print(
        f"\nwithin-prompt pair accuracy at {RANKING_FRACTION:.0%} of the response here, and the source `auto` "
        f"serves (chosen from the figures stored with the heads, measured on held-out training prompts):"
    )
    picks = {}
    for name in objectives:
        here = [r for r in report_rows if r["objective"] == name and r["fraction"] == RANKING_FRACTION]
        stored = {
            s: head.metadata.metrics[pair_accuracy_key(name, s)]
            for s in (HEADS, PREFIX)
            if pair_accuracy_key(name, s) in head.metadata.metrics
        }
        picks[name] = pick_auto(name, (HEADS, PREFIX), stored)
        cells = "  ".join(f"{r['source']} {r['pairs']:.3f}" for r in here)
        kept = "  ".join(f"{s} {v:.3f}" for s, v in stored.items())
        print(f"  {name:<14} {cells}  ({here[0]['pair_count']} pairs)   stored: {kept}   auto: {picks[name]}")

    conflicts, spread = objective_conflicts(groups, truth)
    print("\nfinal rewards among responses to the same prompt: correlation (negative = conflict), spread")
    print(f"{'':<14}" + "".join(f"{n[:12]:>13}" for n in objectives) + f"{'spread':>10}{'overall sd':>12}")
    for a, name in enumerate(objectives):
        cells = "".join(f"{conflicts[a, b]:>+13.3f}" for b in range(len(objectives)))
        print(f"{name:<14}{cells}{spread[a]:>10.4f}{truth[:, a].std():>12.4f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "rollouts": args.rollouts,
                "heads": heads_path,
                "rows": report_rows,
                "auto": picks,
                "objectives": objectives,
                "within_prompt_correlation": conflicts.tolist(),
                "within_prompt_spread": spread.tolist(),
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
