"""Token-level tensor steps: the reference distribution pi_ref (used by the backends) and the
per-token steering steps of the tokenwise strategies.

Strategies in `alignd.decoding` stay free of torch: they hand the tensors a policy returned to
these functions. Pure tensor code (no Python loops over rows), so it runs the same on CPU and CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

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
    logits: torch.Tensor, sampling: SamplingParams, keys: np.ndarray, positions: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; return (token ids [B], their log pi_ref [B]).

    Row r's randomness comes from its own stream (`keys[r]`, at token position `positions[r]`;
    see `RowStreams`), never from a generator shared by the batch: a row draws the same tokens
    whatever other rows are in the batch, so dropping rows (speculative rejection) leaves the
    kept ones' draws unchanged, and best_of_n n=4 draws the first 4 responses of n=8.

    The draw is an exponential race (token i arrives at E_i / p_i, the first arrival wins, which
    is exact sampling), run in two rounds so that each row needs a few hundred uniforms instead
    of one per vocabulary entry: the vocabulary's blocks race with their total mass, then the
    winning block's tokens race. Both rounds are exact, and unlike inverting a CDF, float
    rounding of the logits (other rows in a merged step) changes the winner only on a near-tie
    of two arrival times."""
    if sampling.greedy:
        tokens = torch.argmax(logits, dim=-1)
        return tokens, torch.zeros(tokens.shape, dtype=torch.float32, device=logits.device)
    logprobs = reference_logprobs(logits, sampling)
    rows, vocab = logprobs.shape
    blocks = -(-vocab // _BLOCK)
    probs = F.pad(logprobs.exp(), (0, blocks * _BLOCK - vocab)).view(rows, blocks, _BLOCK)
    block_ids = np.broadcast_to(np.arange(blocks, dtype=np.uint64) + _BLOCK_INDEX, (rows, blocks))
    mass = probs.sum(-1)
    if bool(torch.isnan(mass).any()):
        raise ValueError("the next-token distribution has NaN entries (NaN logits)")
    block = _race(mass, stream_uniforms(keys, positions, block_ids))
    chosen = block.cpu().numpy().astype(np.uint64)[:, None] * np.uint64(_BLOCK) + np.arange(_BLOCK, dtype=np.uint64)
    within = probs[torch.arange(rows, device=probs.device), block]
    tokens = block * _BLOCK + _race(within, stream_uniforms(keys, positions, chosen))
    return tokens, logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _race(mass: torch.Tensor, uniforms: np.ndarray) -> torch.Tensor:
    """Index of the first arrival per row when entry i arrives at -log(u_i) / mass_i (mass 0
    never arrives)."""
    noise = torch.from_numpy(uniforms).to(mass.device)
    arrival = torch.log(-torch.log(noise)) - torch.log(mass.double())
    return torch.argmin(arrival, dim=-1)


# Tokens per block of the two-round race: about sqrt(vocabulary) for a 50k vocabulary, so both
# rounds are small.
_BLOCK = 256
# Counter-based random streams, one per row: a row's key, a token position and an index within
# the step give a uniform, so no generator state is shared between rows. Token indices are token
# ids; block indices start here, above any token id. splitmix64's constants.
_BLOCK_INDEX = np.uint64(1 << 40)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Keep the seed's root, the keys and the draws' counters in different domains of the hash.
_ROOT_DOMAIN = np.uint64(0x6A09E667F3BCC908)
_KEY_DOMAIN = np.uint64(0xBB67AE8584CAA73B)
_MASK64 = (1 << 64) - 1


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise on uint64 (arrays wrap on overflow, as intended)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class RowStreams:
    """The random streams of one request's rows. Every row gets a key no other row of the
    request has had: `new` issues fresh keys from a counter, and `copies` keeps a row's key for
    its first copy (selecting rows never changes what they decode) and issues fresh ones for
    the others. The same seed and the same sequence of calls give the same keys."""

    def __init__(self, seed: int | None) -> None:
        base = seed if seed is not None else int.from_bytes(os.urandom(8), "little")
        self._root = _mix64(_mix64(np.array([base & _MASK64], dtype=np.uint64)) ^ _ROOT_DOMAIN)
        self._issued = 0

    def new(self, rows: int) -> np.ndarray:
        counters = np.arange(self._issued + 1, self._issued + rows + 1, dtype=np.uint64)
        self._issued += rows
        return _mix64(self._root ^ _mix64(counters * _GOLDEN ^ _KEY_DOMAIN))

    def copies(self, keys: np.ndarray, rows: Sequence[int]) -> np.ndarray:
        """Keys of the selection `rows` (repeats allowed) of rows with `keys`: each row's first
        copy keeps its key, later copies get fresh ones in selection order."""
        selected = np.asarray(rows, dtype=np.intp)
        result = keys[selected]
        later = np.ones(len(selected), dtype=bool)
        later[np.unique(selected, return_index=True)[1]] = False
        result[later] = self.new(int(later.sum()))
        return result


def stream_uniforms(keys: np.ndarray, positions: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Uniforms in (0, 1), float64 with 52 random bits: [R, K] for stream r at token position
    positions[r] and index indices[r, k] (distinct (position, index) pairs give independent draws)."""
    counter = (positions.astype(np.uint64)[:, None] << np.uint64(41)) ^ indices.astype(np.uint64)
    bits = _mix64(keys[:, None] ^ _mix64(counter * _GOLDEN + _GOLDEN))
    # 52 bits and a half step: strictly inside (0, 1) after rounding to float64.
    return ((bits >> np.uint64(12)).astype(np.float64) + 0.5) * 2.0**-52


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator:
    """A per-request generator: the same seed gives the same draws on the same backend."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return generator


@dataclass(frozen=True)
class TiltedStep:
    """One step of tokenwise controlled decoding."""

    candidates: list[int]  # pi_ref's top-k token ids, in order
    pick: int  # index into `candidates` of the drawn token
    kl: float  # KL(q || pi_ref) of this step, q the tilted distribution on the top-k


def top_tokens(logprobs: torch.Tensor, k: int) -> tuple[list[int], torch.Tensor]:
    """pi_ref's k most likely tokens of one row [V] (fewer when its support is smaller), with
    their log-probabilities."""
    support = int(torch.isfinite(logprobs).sum())
    top = torch.topk(logprobs.float().cpu(), min(k, support))
    return top.indices.tolist(), top.values


def tilted_draw(
    top_logprobs: torch.Tensor, scores: np.ndarray, strength: float, generator: torch.Generator
) -> tuple[int, float]:
    """Draw from q(z) proportional to pi_ref(z) exp(strength * score(z)) over the top-k tokens;
    returns (index drawn, KL(q || pi_ref))."""
    base = top_logprobs.double()
    tilted = torch.log_softmax(base + strength * torch.from_numpy(scores), dim=0)
    pick = int(torch.multinomial(tilted.exp().float(), 1, generator=generator))
    return pick, float((tilted.exp() * (tilted - base)).sum())


@dataclass(frozen=True)
class ExtrapolatedStep:
    """One step of linear alignment."""

    token: int
    logprob: float  # log-probability of the token without the principle, at the step's temperature
    kl: float  # KL(aligned || without the principle) over the support (greedy: -logprob)
    support_tokens: int  # size of the top-p support of the principled distribution
    overridden: bool  # the extrapolated argmax differs from the principled model's


def extrapolated_step(
    principled: torch.Tensor,
    plain: torch.Tensor,
    alpha: float,
    sampling: SamplingParams,
    generator: torch.Generator,
) -> ExtrapolatedStep:
    """Linear alignment's next token from the logits with the principle (z_p [1, V]) and without
    it (z_0 [1, V]): z_hat = z_p + alpha (z_p - z_0), sampled at temperature T within the top-p
    support of softmax(z_p / T). Greedy takes the argmax within the top-p support at T = 1."""
    temperature = sampling.temperature if not sampling.greedy else 1.0
    support = torch.isfinite(reference_logprobs(principled, replace(sampling, temperature=temperature)))
    fused = (principled + alpha * (principled - plain)) / temperature
    aligned = torch.log_softmax(fused.masked_fill(~support, float("-inf")), dim=-1)
    if sampling.greedy:
        token = int(torch.argmax(aligned, dim=-1))
    else:
        token = int(torch.multinomial(aligned.exp(), 1, generator=generator).squeeze(-1))
    reference = torch.log_softmax(plain[0] / temperature, dim=-1)
    if sampling.greedy:
        kl = -float(reference[token])
    else:
        index = support[0].nonzero().squeeze(-1)
        q = aligned[0, index]
        kl = float((q.exp() * (q - reference[index])).sum())
    return ExtrapolatedStep(
        token=token,
        logprob=float(reference[token]),
        kl=kl,
        support_tokens=int(support.sum()),
        overridden=bool(aligned.argmax(-1) != principled.argmax(-1)),
    )


@dataclass(frozen=True)
class FusedStep:
    """One step of logit fusion."""

    token: int
    # Both against the base policy (row 0) at the sampling temperature, before top-k and top-p (the
    # fused token may lie outside the base's own top-p set, where pi_ref would give it -inf).
    logprob: float  # log-probability of the token
    kl: float  # KL(sampled fused distribution || base) of this step (greedy: -log base(token))


def fused_step(
    logits: torch.Tensor, weights: Sequence[float], sampling: SamplingParams, keys: np.ndarray, position: int
) -> FusedStep:
    """Logit fusion (Shi et al. 2024, the reverse-KL case): the next token from the policies'
    logits [P, V] (row 0 the base policy) fused as sum_i w_i log pi_i, then drawn as the base
    policy's tokens are (temperature, top-k, top-p, the request's random stream `keys` at
    `position`). With w = (1, 0, ...) this is the base policy's own draw."""
    policies = torch.log_softmax(logits.float(), dim=-1)
    used = [i for i, w in enumerate(weights) if w > 0]  # 0 x -inf would be NaN: leave zero weights out
    if not used:
        raise ValueError("logit fusion needs at least one policy with a positive weight")
    fused = (torch.tensor([weights[i] for i in used]).to(policies)[:, None] * policies[used]).sum(0, keepdim=True)
    if sampling.greedy:
        token = int(torch.argmax(fused, dim=-1))
        return FusedStep(token, 0.0, -float(torch.log_softmax(logits[0].float(), dim=-1)[token]))
    # The sampled distribution once (tempered, truncated): the draw and the KL both read it.
    chosen = reference_logprobs(fused, sampling)
    token = int(draw(chosen, _AS_GIVEN, keys, np.array([position]))[0][0])
    base = torch.log_softmax(logits[0].float() / sampling.temperature, dim=-1)
    support = torch.isfinite(chosen[0])
    q = chosen[0, support]
    kl = float((q.exp() * (q - base[support])).sum())
    return FusedStep(token, float(base[token]), max(kl, 0.0))


# Draws from log-probabilities that already are the sampling distribution.
_AS_GIVEN = SamplingParams(temperature=1.0)
