"""`alignd train vectors`: preference vectors (Liang et al. 2025) trained with DPO.

For each objective p: preference pairs from scored rollouts of the train prompts (per prompt, the
response with the highest p against the one with the lowest), a LoRA adapter trained with DPO
(TRL's DPOTrainer on a peft LoRA model) on those pairs ("more of p", theta+) and another on the
same pairs reversed ("less of p", theta-). The vector phi_p = theta+ - theta- is kept exactly, as
the two adapters' stacked factors (backends/preference_vectors.py).

Then the shift is measured: responses to the eval prompts sampled at eta_p = 1 and at eta = 0
with the same seeds, scored by every objective; the mean difference per objective goes into the
metadata (the vector's effect and its price on the other objectives) and is printed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alignd.backends.base import ChatPrompt, SamplingParams, Steering
from alignd.backends.preference_vectors import LowRankDelta, PreferenceVectors, VectorInfo
from alignd.training.data import DataError, data_hash
from alignd.training.options import option
from alignd.training.reward_trainer import PairsConfig, pairs_from_rollouts


@dataclass(frozen=True)
class VectorsConfig:
    rollouts: str = option("rollouts.jsonl", "scored rollouts of the train prompts (`alignd train rollouts`)")
    output: str = option("preference_vectors.safetensors", "where to write the vectors (+ .json metadata)")
    model: str = option("smollm2-135m-instruct", "registered model name or checkpoint folder")
    objectives: tuple[str, ...] = option(("positivity", "relevance"), "one vector per objective, named after it")
    min_margin: float = option(0.0, "skip prompts whose best and worst responses differ by no more than this")
    rank: int = option(8, "LoRA rank r of each adapter (a vector has rank 2r)")
    lora_alpha: int = option(16, "LoRA alpha (an adapter's delta is alpha/r B A)")
    target_modules: tuple[str, ...] = option(("q_proj", "v_proj"), "the linear layers the adapters change")
    beta: float = option(0.1, "DPO beta (the strength of the pull back to the base model)")
    learning_rate: float = option(5e-4, "AdamW learning rate of the adapters")
    epochs: int = option(2, "passes over the pairs")
    batch_size: int = option(8, "pairs per optimisation step")
    max_length: int = option(192, "tokens of prompt + response kept per sequence")
    bf16: str = option("auto", "train in bfloat16 autocast: auto (where the CPU or GPU has it natively) | yes | no")
    seed: int = option(0, "seed of adapter initialisation and data order")
    eval_prompts: str = option("eval", "prompts the shift is measured on (shipped split or file; '' skips it)")
    eval_limit: int = option(0, "use only the first N eval prompts (0: all)")
    eval_samples: int = option(4, "responses per prompt and strength")
    eval_max_tokens: int = option(64, "new tokens per eval response")
    device: str = option("auto", "auto | cpu | cuda")


def preference_pairs(config: VectorsConfig, objective: str) -> list[dict[str, str]]:
    pairs = list(pairs_from_rollouts(PairsConfig(config.rollouts, objective, "", config.min_margin)))
    if len(pairs) < 2:
        raise DataError(f"{config.rollouts}: {len(pairs)} pairs for {objective!r}; DPO needs at least 2")
    return pairs


def train_adapter(
    checkpoint: str, pairs: Sequence[dict[str, str]], config: VectorsConfig, *, reverse: bool
) -> tuple[dict[str, LowRankDelta], dict[str, float]]:
    """One DPO LoRA adapter on `pairs` (chosen and rejected swapped when `reverse`); returns its
    delta per layer (down = A, up = s B) and the final training metrics."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from alignd.backends.transformers_policy import resolve_device

    torch.manual_seed(config.seed)
    rows = [
        {
            "prompt": [{"role": "user", "content": pair["prompt"]}],
            "chosen": [{"role": "assistant", "content": pair["rejected" if reverse else "chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["chosen" if reverse else "rejected"]}],
        }
        for pair in pairs
    ]
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    device = resolve_device(config.device)
    with tempfile.TemporaryDirectory(prefix="alignd-dpo-") as scratch:
        args = DPOConfig(
            output_dir=scratch,
            beta=config.beta,
            learning_rate=config.learning_rate,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            max_length=config.max_length,
            precompute_ref_log_probs=True,  # the reference (adapter off) runs once, not per step
            gradient_checkpointing=False,  # small model: recomputing activations only costs time
            bf16=_use_bf16(config.bf16, device),
            use_cpu=device.type == "cpu",
            seed=config.seed,
            logging_steps=max(1, len(rows) // config.batch_size // 4),
            save_strategy="no",
            report_to="none",
            lr_scheduler_type="cosine",
            warmup_steps=2,
        )
        peft_config = LoraConfig(
            r=config.rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(config.target_modules),
            task_type="CAUSAL_LM",
        )
        trainer = DPOTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        trainer.train()
        history = [entry for entry in trainer.state.log_history if "loss" in entry]
        metrics = {k: float(v) for k, v in (history[-1] if history else {}).items() if isinstance(v, (int, float))}
        return lora_deltas(trainer.model), metrics


def _use_bf16(setting: str, device: torch.device) -> bool:
    """bf16 autocast: `auto` where the serving backend would pick bfloat16 (native support)."""
    if setting not in ("auto", "yes", "no"):
        raise DataError(f"--bf16 must be auto, yes or no, not {setting!r}")
    if setting != "auto":
        return setting == "yes"
    from alignd.backends.transformers_policy import resolve_dtype

    return resolve_dtype("auto", device) == "bfloat16"


def lora_deltas(model: Any) -> dict[str, LowRankDelta]:
    """The trained adapter of a peft model, per layer under its name in the plain model."""
    from peft.tuners.lora import LoraLayer

    deltas = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or "default" not in module.lora_A:
            continue
        lora_a: Any = module.lora_A["default"]
        lora_b: Any = module.lora_B["default"]
        down = lora_a.weight.detach().float().cpu()
        up = lora_b.weight.detach().float().cpu() * float(module.scaling["default"])
        deltas[name.removeprefix("base_model.model.")] = LowRankDelta(down, up)
    if not deltas:
        raise DataError("the trained model has no LoRA layers (check --target-modules)")
    return deltas


def difference(positive: dict[str, LowRankDelta], negative: dict[str, LowRankDelta]) -> dict[str, LowRankDelta]:
    """phi = theta+ - theta- per layer, exactly: [up+, -up-] @ [down+; down-]."""
    return {
        layer: LowRankDelta(
            torch.cat([positive[layer].down, negative[layer].down]),
            torch.cat([positive[layer].up, -negative[layer].up], dim=1),
        )
        for layer in positive
    }


def train_vectors(config: VectorsConfig, checkpoint: str, base_model: str) -> PreferenceVectors:
    """One vector per objective, from DPO adapters trained both ways on the rollouts' pairs."""
    infos, deltas = {}, {}
    digest = data_hash([config.rollouts])
    for objective in config.objectives:
        pairs = preference_pairs(config, objective)
        print(f"{objective}: {len(pairs)} pairs; training theta+ (more {objective}) ...")
        positive, more = train_adapter(checkpoint, pairs, config, reverse=False)
        print(f"{objective}: training theta- (less {objective}) ...")
        negative, less = train_adapter(checkpoint, pairs, config, reverse=True)
        deltas[objective] = difference(positive, negative)
        infos[objective] = VectorInfo(
            name=objective,
            objective=objective,
            base_model=base_model,
            rank=2 * config.rank,
            target_modules=tuple(config.target_modules),
            data_hash=digest,
            training={
                "pairs": len(pairs),
                "method": "DPO (trl) on LoRA adapters (peft), phi = theta+ - theta-",
                "rank": config.rank,
                "lora_alpha": config.lora_alpha,
                "beta": config.beta,
                "learning_rate": config.learning_rate,
                "epochs": config.epochs,
                "batch_size": config.batch_size,
                "final_metrics_positive": more,
                "final_metrics_negative": less,
            },
        )
    return PreferenceVectors(infos, deltas)


@dataclass(frozen=True)
class ShiftReport:
    """Mean objective values at eta = 0 and at eta_p = 1 per vector, on the same prompts and seeds."""

    objectives: tuple[str, ...]
    base: np.ndarray  # [G]
    steered: dict[str, np.ndarray]  # vector -> [G]
    prompts: int
    samples: int

    def shift(self, vector: str) -> dict[str, float]:
        return {o: float(d) for o, d in zip(self.objectives, self.steered[vector] - self.base)}

    def table(self) -> str:
        lines = [f"shift at eta = 1 against eta = 0 ({self.prompts} prompts x {self.samples} samples)"]
        lines.append("vector".ljust(14) + "".join(o.rjust(14) for o in self.objectives))
        for vector in self.steered:
            lines.append(vector.ljust(14) + "".join(f"{d:+14.4f}" for d in self.steered[vector] - self.base))
        return "\n".join(lines)


def per_prompt_rewards(
    policy: Any,
    scorer: Any,
    prompts: Sequence[str],
    steering: Steering,
    samples: int,
    max_tokens: int,
    *,
    batch: int = 4,
    seed: int = 0,
) -> np.ndarray:
    """[prompts, objectives]: each prompt's mean reward over `samples` responses from the policy
    steered by `steering` (T = 0.7; prompts in batches of `batch`, batch i seeded seed + its first
    prompt's index, so every steering draws with the same seeds)."""
    means = []
    for start in range(0, len(prompts), batch):
        group = list(prompts[start : start + batch])
        sampling = SamplingParams(temperature=0.7, max_tokens=max_tokens, seed=seed + start, steering=steering)
        sampled = policy.sample([ChatPrompt(p) for p in group], samples, sampling)
        texts = [c.text for row in sampled.completions for c in row]
        rewards = scorer.score([p for p in group for _ in range(samples)], texts)
        means.append(rewards.reshape(len(group), samples, -1).mean(axis=1))
    return np.concatenate(means)


def measure_shift(
    policy: Any, scorer: Any, prompts: Sequence[str], vectors: Sequence[str], samples: int, max_tokens: int
) -> ShiftReport:
    """Sample at eta = 0 and at eta_p = 1 for each vector (same seeds), score every objective."""
    means = {
        condition: per_prompt_rewards(
            policy, scorer, prompts, ((condition, 1.0),) if condition else (), samples, max_tokens
        ).mean(axis=0)
        for condition in ("", *vectors)
    }
    base = means.pop("")
    return ShiftReport(tuple(scorer.objective_names), base, means, len(prompts), samples)
