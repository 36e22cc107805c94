"""The Strategy interface, its request and result types, and the strategy registry.

A strategy is pure algorithm code over a Policy and a Scorer: it imports
only the interfaces, never a concrete backend or the server.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from alignd.backends.base import Capability, ChatPrompt, Completion, Policy, SamplingParams
from alignd.decoding.weights import PreferenceWeights
from alignd.errors import FailedPrecondition, InvalidArgument
from alignd.rewardmodels.base import Scorer


@dataclass(frozen=True)
class KLEstimate:
    name: str
    kind: str  # "estimate", "upper_bound" or "exact"
    nats: float
    description: str


@dataclass
class ScoredCandidate:
    completion: Completion
    rewards: np.ndarray  # [G], in the scorer's objective order
    weighted_score: float
    selected: bool = False


@dataclass
class ProgressEvent:
    phase: str
    step: int
    message: str
    elapsed_seconds: float
    candidates: list[ScoredCandidate] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)  # applied at this step (robust: w*)
    worst_objective: str = ""  # blockwise: the chosen block's lowest objective on the common scale
    worst_value: float = 0.0
    instructions: list[str] = field(default_factory=list)  # evolutionary: each candidate's instruction


@dataclass(frozen=True)
class DecodeRequest:
    prompt: ChatPrompt
    sampling: SamplingParams
    weights: PreferenceWeights
    return_candidates: bool = False
    on_progress: Callable[[ProgressEvent], None] | None = None
    cancel: threading.Event | None = None  # set by the server when the client goes away


@dataclass
class Usage:
    """What a decode cost. `phase_seconds` splits wall time by phase (sample, score, ...)."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    lm_forward_tokens: int = 0
    scorer_calls: int = 0
    scored_texts: int = 0
    wall_seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class DecodeResult:
    text: str
    token_ids: list[int]
    finish_reason: str
    rewards: dict[str, float]
    weighted_score: float
    kl: list[KLEstimate]
    usage: Usage
    candidates: list[ScoredCandidate] = field(default_factory=list)
    details: dict[str, float] = field(default_factory=dict)  # strategy-specific figures


class Strategy(ABC):
    """A decoding strategy: `decode(request, params, policy, scorer) -> DecodeResult`."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type]  # a frozen dataclass built from `params.param(...)` fields
    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.SAMPLE})
    # Sampling settings this strategy uses when the request leaves them unset (e.g. the authors'
    # temperature), over the server's defaults.
    sampling_defaults: ClassVar[dict[str, Any]] = {}

    def default_sampling(self, server_defaults: SamplingParams) -> SamplingParams:
        return dataclasses.replace(server_defaults, **self.sampling_defaults)

    @abstractmethod
    def decode(self, request: DecodeRequest, params: Any, policy: Policy, scorer: Scorer) -> DecodeResult:
        """Run the algorithm; raise alignd.errors for requests it cannot serve."""

    def rows(self, params: Any) -> int:
        """Sequences this strategy keeps in the KV cache at once (for the memory budget)."""
        return 1

    def check(self, request: DecodeRequest, params: Any, policy: Policy, scorer: Scorer) -> None:
        """Refuse what this strategy cannot serve whatever the prompt (backend capabilities, value
        sources, parameter combinations, greedy sampling) before any work. Strategies with more
        conditions extend it and call it first in `decode`; experiment arms are checked with it
        when they are created."""
        self.check_policy(policy)

    def check_policy(self, policy: Policy) -> None:
        missing = sorted(c.value for c in self.requires - policy.capabilities)
        if missing:
            raise FailedPrecondition(
                f"strategy {self.name!r} needs backend capabilities {missing}, which {type(policy).__name__} lacks"
            )


STRATEGIES: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make a strategy available by its name."""
    STRATEGIES[cls.name] = cls()
    return cls


def get_strategy(name: str) -> Strategy:
    # Importing the package registers the built-in strategies.
    import alignd.decoding  # noqa: F401

    try:
        return STRATEGIES[name]
    except KeyError:
        raise InvalidArgument("strategy", f"unknown strategy {name!r}; available: {sorted(STRATEGIES)}") from None


def draw_candidates(request: DecodeRequest, policy: Policy, n: int, usage: Usage, started: float) -> list[Completion]:
    """n responses from pi_ref in one batch (the prompt encoded once), counted into `usage`."""
    with usage.phase("sample"):
        batch = policy.sample([request.prompt], n, request.sampling, request.cancel)
    completions = batch.completions[0]
    usage.prompt_tokens = batch.prompt_tokens[0]
    usage.generated_tokens += sum(len(c.token_ids) for c in completions)
    usage.lm_forward_tokens += batch.forward_tokens
    report(request, "sampled", 0, f"sampled {n} response(s), {usage.generated_tokens} tokens", started)
    return completions


def score_candidates(
    request: DecodeRequest, scorer: Scorer, completions: Sequence[Completion], usage: Usage
) -> list[ScoredCandidate]:
    """Score all completions of one request in a single batched scorer call.

    Rewards are computed against the user's instruction, not the rendered chat prompt.
    """
    with usage.phase("score"):
        rewards = scorer.score([request.prompt.user] * len(completions), [c.text for c in completions])
    usage.scorer_calls += 1
    usage.scored_texts += len(completions)
    weighted = request.weights.weighted(rewards)
    return [ScoredCandidate(c, rewards[i], float(weighted[i])) for i, c in enumerate(completions)]


def finish(
    request: DecodeRequest,
    chosen: ScoredCandidate,
    candidates: list[ScoredCandidate],
    kl: list[KLEstimate],
    usage: Usage,
    started: float,
    details: dict[str, float] | None = None,
) -> DecodeResult:
    """Assemble the result for the chosen candidate."""
    chosen.selected = True
    usage.wall_seconds = time.perf_counter() - started
    return DecodeResult(
        text=chosen.completion.text,
        token_ids=chosen.completion.token_ids,
        finish_reason=chosen.completion.finish_reason.value,
        rewards={n: float(v) for n, v in zip(request.weights.names, chosen.rewards)},
        weighted_score=chosen.weighted_score,
        kl=kl,
        usage=usage,
        candidates=candidates if request.return_candidates else [],
        details=details or {},
    )


def report(
    request: DecodeRequest,
    phase: str,
    step: int,
    message: str,
    started: float,
    candidates: list[ScoredCandidate] | None = None,
) -> None:
    if request.on_progress is not None:
        request.on_progress(ProgressEvent(phase, step, message, time.perf_counter() - started, candidates or []))
