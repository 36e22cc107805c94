"""Hidden-state features of (prompt, response) pairs over the Policy interface: one
teacher-forced forward per prompt group. Used to train heads and to serve reward heads."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm import tqdm

from alignd.backends.base import ChatPrompt, Policy

CHUNK_ROWS = 16


def prefix_features(policy: Policy, rows: Sequence[dict], progress: bool = True) -> list[torch.Tensor]:
    """For each rollout row, the hidden states after 0..T response tokens, [T + 1, H], on CPU.

    Rows sharing a prompt go through the model in one padded batch.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        groups[row["prompt"]].append(index)
    features: dict[int, torch.Tensor] = {}
    for prompt, indices in tqdm(groups.items(), desc="features", unit="prompt", disable=not progress):
        # Chunks bound the padded batch (a Score call may carry hundreds of long responses).
        for start in range(0, len(indices), CHUNK_ROWS):
            chunk = indices[start : start + CHUNK_ROWS]
            states = policy.prefix_hidden_states(ChatPrompt(prompt), [rows[i]["token_ids"] for i in chunk])
            for i, state in zip(chunk, states):
                features[i] = state.cpu()
    return [features[i] for i in range(len(rows))]


def response_features(
    policy: Policy, prompts: Sequence[str], responses: Sequence[str], progress: bool = False
) -> torch.Tensor:
    """Hidden state after the whole response text, [N, H]: what a reward head reads."""
    rows = [{"prompt": p, "token_ids": policy.tokenize(r) if r else []} for p, r in zip(prompts, responses)]
    return torch.stack([states[-1] for states in prefix_features(policy, rows, progress)])
