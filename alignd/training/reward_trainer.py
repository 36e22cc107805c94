"""`alignd train reward`: a Bradley-Terry reward model on the policy's hidden states.

Data: JSONL pairs {"prompt", "chosen", "rejected"} (the format TRL's reward trainer reads).
Loss: -log sigmoid(r(x, y_chosen) - r(x, y_rejected)); the report is held-out pairwise accuracy.
`alignd train pairs` makes such pairs from rollouts (best vs worst response per prompt under one
objective) when no human preference data is at hand.

Two outputs (`--export`):
- `head` (default): a head on the policy's hidden state after the response, served with
  `reward_heads` (it reuses the policy's forward);
- `hf`: a standard sequence-classification checkpoint (the policy's backbone + a linear score
  layer; config.json + safetensors + tokenizer) that any transformers code, and alignd's
  `kind = "sequence_classification"` objectives, load. Its input is the pair rendered as the
  reward-model objectives render it (the chat template over user prompt + assistant response),
  and the score layer is fitted on the backbone's pooled state of exactly that input. The layer
  has no bias (transformers' has none; a shift does not change Bradley-Terry preferences); the
  mean and std of its scores on the training responses go into config.json for `standardise`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
    export: str = option(
        "head",
        "head: a head on the policy's hidden states (for reward_heads); hf: a sequence-classification "
        "checkpoint folder at --output (for [[objectives]] kind = sequence_classification)",
    )
    max_length: int = option(512, "with --export hf: tokens of prompt + response the model reads")


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


def _split_pairs(config: RewardConfig) -> tuple[list[dict], list[dict]]:
    pairs = list(read_jsonl(config.pairs, PAIR_FIELDS))
    if config.eval_pairs:
        train, held = pairs, list(read_jsonl(config.eval_pairs, PAIR_FIELDS))
    else:
        random.Random(config.seed).shuffle(pairs)
        cut = max(1, int(len(pairs) * config.eval_fraction))
        held, train = pairs[:cut], pairs[cut:]
    if not train or not held:
        raise DataError("reward training needs both training and held-out pairs")
    return train, held


Features = tuple[torch.Tensor, torch.Tensor]  # chosen, rejected: [pairs, H] each


def _fit(
    config: RewardConfig, base_model: str, train: Features, held: Features, counts: tuple[int, int], progress: bool
) -> tuple[Head, dict[str, float]]:
    torch.manual_seed(config.seed)
    metadata = HeadMetadata(
        kind="reward",
        base_model=base_model,
        hidden_size=train[0].shape[1],
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
        margin = head(train[0]) - head(train[1])
        loss = -torch.nn.functional.logsigmoid(margin).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    head.eval()
    metrics = {
        "train_accuracy": _accuracy(head, *train),
        "eval_accuracy": _accuracy(head, *held),
        "train_pairs": counts[0],
        "eval_pairs": counts[1],
    }
    head.metadata.metrics = metrics
    return head, metrics


def train_reward_head(policy: Policy, config: RewardConfig, progress: bool = True) -> tuple[Head, dict[str, float]]:
    train, held = _split_pairs(config)

    def encode(rows: list[dict]) -> Features:
        prompts = [r["prompt"] for r in rows]
        return (
            response_features(policy, prompts, [r["chosen"] for r in rows], progress),
            response_features(policy, prompts, [r["rejected"] for r in rows], progress),
        )

    return _fit(config, policy.model_name, encode(train), encode(held), (len(train), len(held)), progress)


def export_folder(output: str) -> Path:
    """Where `--export hf` writes: the output path without a .safetensors suffix."""
    path = Path(output)
    return path.with_suffix("") if path.suffix == ".safetensors" else path


def train_reward_model(config: RewardConfig, progress: bool = True) -> tuple[Path, dict[str, float]]:
    """`--export hf`: fit the score layer of a sequence-classification model built on the
    policy's backbone, and save the checkpoint. Returns its folder and the metrics."""
    from alignd import models
    from alignd.backends.loading import served_model_name
    from alignd.backends.transformers_policy import resolve_device
    from alignd.rewardmodels.engine import ScoringEngine
    from alignd.rewardmodels.sequence_classification import METADATA_KEY, SequenceClassifier

    if config.width:
        raise DataError("--export hf writes a linear score layer: use --width 0")
    train, held = _split_pairs(config)
    checkpoint = models.resolve(config.model)
    device = resolve_device(config.device)
    classifier = SequenceClassifier(str(checkpoint), device, "float32", config.max_length, "auto", num_labels=1)
    model = classifier.model
    score = model.score
    engine = ScoringEngine()
    model.score = torch.nn.Identity()  # logits become the pooled hidden states the layer reads
    try:

        def encode(rows: list[dict]) -> Features:
            prompts = [r["prompt"] for r in rows] * 2
            texts = [r["chosen"] for r in rows] + [r["rejected"] for r in rows]
            # A copy: the engine's outputs are inference tensors, which autograd may not save.
            states = engine.run(classifier, classifier.encode(prompts, texts)).clone()
            return states[: len(rows)], states[len(rows) :]

        train_states, held_states = encode(train), encode(held)
    finally:
        model.score = score
        engine.close()
    name = served_model_name(config.model, checkpoint)
    head, metrics = _fit(config, name, train_states, held_states, (len(train), len(held)), progress)
    layer = head.net[0]
    assert isinstance(layer, torch.nn.Linear)  # width 0: one linear layer
    weight = layer.weight.detach()
    with torch.no_grad():
        score.weight.copy_(weight.to(score.weight.dtype))
    scores = torch.cat(train_states) @ weight[0]
    model.config.id2label = {0: config.name}
    model.config.label2id = {config.name: 0}
    setattr(
        model.config,
        METADATA_KEY,
        {
            "objective": config.name,
            "base_model": name,
            "score_mean": float(scores.mean()),
            "score_std": float(scores.std()),
            "data_hash": head.metadata.data_hash,
            # What the layer was fitted on; serving reads the same unless a table says otherwise.
            "max_length": config.max_length,
            "template": classifier.template,
            **metrics,
        },
    )
    folder = export_folder(config.output)
    model.save_pretrained(folder)
    classifier.tokenizer.save_pretrained(folder)
    return folder, metrics
