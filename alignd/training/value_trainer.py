"""`alignd train value`: multi-objective value heads, CD-FUDGE style (Mudgal et al. 2023).

Every prefix of an on-policy rollout regresses to that rollout's final reward, per objective:
V_g(x, y_<t) ~ r_g(x, y) for t = 0..T. The report compares held-out predictions at 25/50/75/100%
of each response with the predict-the-mean baseline (MSE and Pearson correlation).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from alignd.backends.base import Policy
from alignd.rewardmodels.heads import Head, HeadMetadata
from alignd.training.data import DataError, data_hash, read_jsonl
from alignd.backends.features import prefix_features
from alignd.training.options import option

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
ROLLOUT_FIELDS = {"prompt": str, "token_ids": list, "rewards": dict}


@dataclass(frozen=True)
class ValueConfig:
    rollouts: str = option("rollouts.jsonl", "training rollouts (from `alignd train rollouts`)")
    eval_rollouts: str = option("", "held-out rollouts for the report; empty: hold out eval_fraction of prompts")
    eval_fraction: float = option(0.2, "share of prompts held out when eval_rollouts is empty")
    output: str = option("value_heads.safetensors", "where to write the heads (+ .json metadata)")
    model: str = option("smollm2-135m-instruct", "the policy whose hidden states the heads read")
    device: str = option("auto", "auto | cpu | cuda")
    objectives: tuple[str, ...] = option((), "objectives to learn (default: all in the rollouts)")
    width: int = option(0, "hidden units of an MLP head (0: linear, which generalised best on the shipped data)")
    epochs: int = option(10, "passes over the training prefixes")
    batch_size: int = option(1024, "prefixes per optimisation step")
    learning_rate: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    seed: int = option(0, "seed for initialisation, shuffling and the held-out split")


@dataclass
class ValueReport:
    """Held-out metrics per objective and prefix fraction."""

    rows: list[dict]  # {"objective", "fraction", "mse", "baseline_mse", "corr"}

    def table(self) -> str:
        lines = [f"{'objective':<14} {'prefix':>6} {'mse':>9} {'mean-mse':>9} {'corr':>7}  beats mean"]
        for r in self.rows:
            lines.append(f"{r['objective']:<14} {r['fraction']:>6.0%} {r['mse']:>9.4f} {r['baseline_mse']:>9.4f} "
                         f"{r['corr']:>7.3f}  {'yes' if r['mse'] < r['baseline_mse'] else 'no'}")
        return "\n".join(lines)

    def metrics(self) -> dict[str, float]:
        return {f"{r['objective']}@{int(r['fraction'] * 100)}%_{key}": float(r[key])
                for r in self.rows for key in ("mse", "baseline_mse", "corr")}


def _load(path: str) -> list[dict]:
    rows = list(read_jsonl(path, ROLLOUT_FIELDS))
    if not rows:
        raise DataError(f"{path}: no rollouts")
    return rows


def _split(rows: list[dict], config: ValueConfig) -> tuple[list[dict], list[dict]]:
    if config.eval_rollouts:
        return rows, _load(config.eval_rollouts)
    prompts = sorted({r["prompt"] for r in rows})
    random.Random(config.seed).shuffle(prompts)
    held = set(prompts[: max(1, int(len(prompts) * config.eval_fraction))])
    return [r for r in rows if r["prompt"] not in held], [r for r in rows if r["prompt"] in held]


def _targets(rows: list[dict], objectives: list[str], path: str) -> np.ndarray:
    try:
        return np.array([[row["rewards"][o] for o in objectives] for row in rows], dtype=np.float64)
    except KeyError as missing:
        raise DataError(f"{path}: a rollout has no reward for objective {missing}") from None


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def prefix_examples(states: list[torch.Tensor], targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CD-FUDGE examples: every prefix state (t = 0..T) of rollout i, paired with rollout i's
    final (standardised) reward vector."""
    x = torch.cat(states)
    y = torch.cat([targets[i].expand(len(s), -1) for i, s in enumerate(states)])
    return x, y


def train_value_heads(policy: Policy, config: ValueConfig, progress: bool = True) -> tuple[Head, ValueReport]:
    torch.manual_seed(config.seed)
    train_rows, eval_rows = _split(_load(config.rollouts), config)
    if not train_rows or not eval_rows:
        raise DataError("value training needs both training and held-out rollouts")
    objectives = list(config.objectives) or list(train_rows[0]["rewards"])
    y_train = _targets(train_rows, objectives, config.rollouts)
    y_eval = _targets(eval_rows, objectives, config.eval_rollouts or config.rollouts)
    mean, std = y_train.mean(0), np.maximum(y_train.std(0), 1e-6)

    train_states = prefix_features(policy, train_rows, progress)
    eval_states = prefix_features(policy, eval_rows, progress)
    x, y = prefix_examples(train_states, torch.from_numpy((y_train - mean) / std).float())

    metadata = HeadMetadata(
        kind="value", base_model=policy.model_name, hidden_size=x.shape[1], objectives=objectives,
        mean=mean.tolist(), std=std.tolist(), width=config.width,
        data_hash=data_hash([config.rollouts] + ([config.eval_rollouts] if config.eval_rollouts else [])),
    )
    head = Head(metadata)
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    head.train()
    for _ in tqdm(range(config.epochs), desc="value heads", unit="epoch", disable=not progress):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = torch.nn.functional.mse_loss(head(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    head.eval()

    report_rows = []
    for fraction in FRACTIONS:
        at = torch.stack([s[round(fraction * (len(s) - 1))] for s in eval_states])
        predicted = head.predict(at).double().numpy()
        for g, name in enumerate(objectives):
            truth = y_eval[:, g]
            report_rows.append({
                "objective": name, "fraction": fraction,
                "mse": float(np.mean((predicted[:, g] - truth) ** 2)),
                "baseline_mse": float(np.mean((mean[g] - truth) ** 2)),
                "corr": _pearson(predicted[:, g], truth),
            })
    report = ValueReport(report_rows)
    head.metadata.metrics = report.metrics() | {"train_rollouts": len(train_rows), "eval_rollouts": len(eval_rows)}
    return head, report
