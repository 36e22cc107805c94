"""`alignd train rollouts`: sample responses from the policy for a prompt set, score them with the
objectives, write JSONL (one rollout per line) for training value and reward heads."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from tqdm import tqdm

from alignd.backends.base import ChatPrompt, Policy, SamplingParams
from alignd.rewardmodels.base import Scorer
from alignd.training.options import option


@dataclass(frozen=True)
class RolloutsConfig:
    output: str = option("rollouts.jsonl", "where to write the rollouts (JSONL)")
    model: str = option("smollm2-135m-instruct", "registered model name or checkpoint folder")
    prompts: str = option("train", "shipped split (train, eval) or a text file, one instruction per line")
    limit: int = option(0, "use only the first N prompts (0: all)")
    samples_per_prompt: int = option(4, "responses sampled per prompt")
    prompts_per_batch: int = option(4, "prompts decoded together in one batch")
    max_tokens: int = option(96, "new tokens per response")
    temperature: float = option(0.7, "sampling temperature of pi_ref")
    top_p: float = option(1.0, "nucleus sampling of pi_ref")
    seed: int = option(0, "base seed; batch i uses seed + i")
    objectives: tuple[str, ...] = option(
        ("relevance", "positivity", "harmlessness", "conciseness"), "objectives to score"
    )
    device: str = option("auto", "auto | cpu | cuda")


def generate_rollouts(
    policy: Policy, scorer: Scorer, prompts: Sequence[str], config: RolloutsConfig, progress: bool = True
) -> Iterator[dict]:
    """Rows {"prompt", "response", "token_ids", "finish_reason", "rewards": {objective: r}}."""
    batches = [prompts[i : i + config.prompts_per_batch] for i in range(0, len(prompts), config.prompts_per_batch)]
    for index, batch in enumerate(tqdm(batches, desc="rollouts", unit="batch", disable=not progress)):
        sampling = SamplingParams(
            temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens, seed=config.seed + index
        )
        sampled = policy.sample([ChatPrompt(p) for p in batch], config.samples_per_prompt, sampling)
        pairs = [(prompt, c) for prompt, group in zip(batch, sampled.completions) for c in group]
        rewards = scorer.score([p for p, _ in pairs], [c.text for _, c in pairs])
        for (prompt, completion), row in zip(pairs, rewards):
            yield {
                "prompt": prompt,
                "response": completion.text,
                "token_ids": completion.token_ids,
                "finish_reason": completion.finish_reason.value,
                "rewards": {name: float(v) for name, v in zip(scorer.objective_names, row)},
            }
