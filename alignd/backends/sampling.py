"""Token-level sampling helpers shared by backends: the reference distribution pi_ref.

Pure tensor code (no Python loops over rows), so it runs the same on CPU and CUDA.
"""

from __future__ import annotations

import os

import torch

from alignd.backends.base import SamplingParams


def reference_logprobs(logits: torch.Tensor, sampling: SamplingParams) -> torch.Tensor:
    """Log-probabilities of the sampling distribution for each row of ``logits`` [B, V].

    Applies temperature, then top-k, then top-p (nucleus; the most likely token always stays).
    Masked tokens get -inf. Greedy (temperature 0) is not handled here: it is a point mass.
    """
    scores = logits.float() / sampling.temperature
    vocab = scores.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = torch.topk(scores, sampling.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_scores, dim=-1)
        # Mass strictly before each token; a token is kept while that mass is below top_p.
        mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = mass_before >= sampling.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.log_softmax(scores, dim=-1)


def draw(
    logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (token ids [B], their log pi_ref [B])."""
    if sampling.greedy:
        tokens = torch.argmax(logits, dim=-1)
        return tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=logits.device)
    logprobs = reference_logprobs(logits, sampling)
    tokens = torch.multinomial(logprobs.exp(), 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A per-request generator: the same seed gives the same draws on the same backend."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return generator
