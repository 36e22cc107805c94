"""`alignd train reward`: a Bradley-Terry reward head on the policy's hidden states.

Data: JSONL pairs {"prompt", "chosen", "rejected"} (the format TRL's reward trainer reads).
Loss: -log sigmoid(r(x, y_chosen) - r(x, y_rejected)); the report is held-out pairwise accuracy.
`alignd train pairs` makes such pairs from rollouts (best vs worst response per prompt under one
objective) when no human preference data is at hand.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from tqdm import tqdm

from alignd.backends.base import Policy
from alignd.backends.features import response_features
from alignd.rewardmodels.heads import Head, HeadMetadata
from alignd.training.data import DataError, data_hash, read_jsonl
from alignd.training.options import option

PAIR_FIELDS = {"prompt": str, "chosen": str, "rejected": str}


@dataclass(frozen=True)
class RewardConfig:
    pairs: str = option("pairs.jsonl", "preference pairs: JSONL with prompt, chosen, rejected")
    eval_pairs: str = option("", "held-out pairs; empty: hold out eval_fraction of the pairs")
    eval_fraction: float = option(0.2, "share of pairs held out when eval_pairs is empty")
    output: str = option("reward_head.safetensors", "where to write the head (+ .json metadata)")
    name: str = option("reward", "objective name the head is served under")
    model: str = option("smollm2-135m-instruct", "the policy whose hidden states the head reads")
    device: str = option("auto", "auto | cpu | cuda")
    width: int = option(0, "hidden units of the head's MLP (0: linear)")
    epochs: int = option(50, "passes over the training pairs")
    learning_rate: float = option(3e-3, "AdamW learning rate")
    weight_decay: float = option(1e-2, "AdamW weight decay")
    seed: int = option(0, "seed for initialisation and the held-out split")


@dataclass(frozen=True)
class PairsConfig:
    rollouts: str = option("rollouts.jsonl", "rollouts from `alignd train rollouts`")
    objective: str = option("positivity", "objective that ranks the responses of a prompt")
    output: str = option("pairs.jsonl", "where to write the pairs")
    min_margin: float = option(0.0, "skip prompts whose best and worst rewards differ by no more than this")


def pairs_from_rollouts(config: PairsConfig) -> Iterator[dict]:
    """Per prompt: the highest- vs the lowest-reward response under `config.objective`."""
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for row in read_jsonl(config.rollouts, {"prompt": str, "response": str, "rewards": dict}):
        if config.objective not in row["rewards"]:
            raise DataError(f"{config.rollouts}: no reward for objective {config.objective!r}")
        by_prompt[row["prompt"]].append(row)
    for prompt, rows in by_prompt.items():
        ranked = sorted(rows, key=lambda r: r["rewards"][config.objective])
        worst, best = ranked[0], ranked[-1]
        if best["rewards"][config.objective] - worst["rewards"][config.objective] > config.min_margin:
            yield {"prompt": prompt, "chosen": best["response"], "rejected": worst["response"]}


def _accuracy(head: Head, chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(chosen) > head(rejected)).float().mean())


def train_reward_head(policy: Policy, config: RewardConfig, progress: bool = True) -> tuple[Head, dict[str, float]]:
    torch.manual_seed(config.seed)
    pairs = list(read_jsonl(config.pairs, PAIR_FIELDS))
    if config.eval_pairs:
        train, held = pairs, list(read_jsonl(config.eval_pairs, PAIR_FIELDS))
    else:
        random.Random(config.seed).shuffle(pairs)
        cut = max(1, int(len(pairs) * config.eval_fraction))
        held, train = pairs[:cut], pairs[cut:]
    if not train or not held:
        raise DataError("reward training needs both training and held-out pairs")

    def encode(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [r["prompt"] for r in rows]
        return (
            response_features(policy, prompts, [r["chosen"] for r in rows], progress),
            response_features(policy, prompts, [r["rejected"] for r in rows], progress),
        )

    train_chosen, train_rejected = encode(train)
    held_chosen, held_rejected = encode(held)
    metadata = HeadMetadata(
        kind="reward",
        base_model=policy.model_name,
        hidden_size=train_chosen.shape[1],
        objectives=[config.name],
        mean=[0.0],
        std=[1.0],
        width=config.width,
        data_hash=data_hash([config.pairs] + ([config.eval_pairs] if config.eval_pairs else [])),
    )
    head = Head(metadata)
    optimiser = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    head.train()
    for _ in tqdm(range(config.epochs), desc="reward head", unit="epoch", disable=not progress):
        margin = head(train_chosen) - head(train_rejected)
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.eval()
    metrics = {
        "train_accuracy": _accuracy(head, train_chosen, train_rejected),
        "eval_accuracy": _accuracy(head, held_chosen, held_rejected),
        "train_pairs": len(train),
        "eval_pairs": len(held),
    }
    head.metadata.metrics = metrics
    return head, metrics
