"""The Strategy interface, its request and result types, the per-request DecodeContext, and the
strategy registry.

A strategy is pure algorithm code over a Policy and a Scorer: it imports only the interfaces,
never a concrete backend, the server or torch (tensor steps live in `alignd.sampling`).

A request's life: `Strategy.prepare` refuses what cannot be served (capabilities, parameter
combinations, value sources) before any work and returns the decode to run; the decode gets a
`DecodeContext`, through which every model and scorer call is made, counted and timed, and
progress is reported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from alignd.backends.base import (
    Capability,
    ChatPrompt,
    Completion,
    MemoryHold,
    PartialResponses,
    Policy,
    SamplingParams,
    Steering,
)
from alignd.decoding.weights import PreferenceWeights
from alignd.errors import Cancelled, FailedPrecondition, InvalidArgument
from alignd.rewardmodels.base import Scorer

if TYPE_CHECKING:
    from alignd.backends.preference_vectors import VectorInfo


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
    # The response text committed so far (it stays in the answer whatever comes next), when this
    # step committed more: the chosen blocks or tokens of incremental strategies. Streams send it.
    committed: str | None = None


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


P = TypeVar("P")


class DecodeContext:
    """One request being decoded: its request, the policy and scorer, what it cost so far, and the
    progress stream. Strategies call the model and the scorer through it so that usage counting,
    phase timing and cancellation live in one place."""

    def __init__(
        self, request: DecodeRequest, policy: Policy, scorer: Scorer, memory: MemoryHold | None = None
    ) -> None:
        """`memory`: what the request holds of the backend's memory (`Policy.reserve`), if any."""
        self.started = time.perf_counter()
        self.memory = memory
        prompt = policy.encode(request.prompt)  # a no-op for the server, which encoded it already
        self.request = request if prompt is request.prompt else dataclasses.replace(request, prompt=prompt)
        self.policy = policy
        self.scorer = scorer
        self.usage = Usage()
        assert prompt.token_ids is not None
        self.usage.prompt_tokens = len(prompt.token_ids)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self.usage.phase(name)

    def report(
        self, phase: str, step: int, message: str, candidates: Sequence[ScoredCandidate] = (), **extra: Any
    ) -> None:
        """A progress event for streaming clients (`extra`: ProgressEvent's optional fields)."""
        if self.request.on_progress is not None:
            self.request.on_progress(ProgressEvent(phase, step, message, self.elapsed, list(candidates), **extra))

    # -- the model, counted ------------------------------------------------------------------------

    def sample(
        self,
        n: int,
        prompts: Sequence[ChatPrompt] | None = None,
        sampling: SamplingParams | None = None,
        *,
        phase: str = "sample",
    ) -> list[list[Completion]]:
        """n responses to each prompt (default: the request's) in one batch, each prompt encoded once."""
        prompts, sampling = prompts or [self.request.prompt], sampling or self.request.sampling
        with self.phase(phase), self._counting_cut_off(len(prompts) * n * sampling.max_tokens):
            batch = self.policy.sample(prompts, n, sampling, self.request.cancel)
        self.usage.generated_tokens += sum(len(c.token_ids) for row in batch.completions for c in row)
        self.usage.lm_forward_tokens += batch.forward_tokens
        return batch.completions

    @contextmanager
    def _counting_cut_off(self, most: int) -> Iterator[None]:
        """A generating call stopped by a cancel still counts what it generated: as the backend
        reports it, else `most` (the call's maximum), so cutting a request off never makes its
        tokens free."""
        try:
            yield
        except Cancelled as stopped:
            self.usage.generated_tokens += stopped.generated if stopped.generated is not None else most
            raise

    def prefill(
        self,
        prompts: Sequence[ChatPrompt] | None = None,
        sampling: SamplingParams | None = None,
        *,
        steering: Sequence[Steering] | None = None,
    ) -> PartialResponses:
        """One empty response per prompt (default: the request's), ready to extend; `steering`
        gives each row its own policy (Capability.ROW_STEERING)."""
        with self.phase("prefill"):
            return self.policy.begin_many(
                prompts or [self.request.prompt],
                sampling or self.request.sampling,
                self.request.cancel,
                steering=steering,
            )

    def extend(self, partial: PartialResponses, k: int, block_tokens: int) -> PartialResponses:
        """k continuations of up to `block_tokens` tokens for every row (child j of row r is r*k + j)."""
        before = sum(len(ids) for ids in partial.token_ids)
        with self.phase("extend"), self._counting_cut_off(partial.rows * k * block_tokens):
            extended = self.policy.extend(partial, k, block_tokens, self.request.cancel)
        self.usage.generated_tokens += sum(len(ids) for ids in extended.token_ids) - k * before
        return extended

    def advance(self, partial: PartialResponses, tokens: int) -> PartialResponses:
        """Every row continued by up to `tokens` tokens; `partial` is given up (continued in place
        where the backend can)."""
        before = sum(len(ids) for ids in partial.token_ids)
        with self.phase("extend"), self._counting_cut_off(partial.rows * tokens):
            advanced = self.policy.advance(partial, tokens, self.request.cancel)
        self.usage.generated_tokens += sum(len(ids) for ids in advanced.token_ids) - before
        return advanced

    def branch(self, partial: PartialResponses, tokens: Sequence[Sequence[int]]) -> PartialResponses:
        """Row r gets one child per token in tokens[r]."""
        with self.phase("extend"):
            children = self.policy.branch(partial, tokens, self.request.cancel)
        self.usage.generated_tokens += sum(len(t) for t in tokens)
        return children

    def append(self, partial: PartialResponses, token: int, logprob: float) -> PartialResponses:
        """Append one token to every row: the rows are contexts of one response (one token generated)."""
        partial = self.policy.append(partial, [token] * partial.rows, [logprob] * partial.rows, self.request.cancel)
        self.usage.generated_tokens += 1
        return partial

    def report_token(self, partial: PartialResponses) -> None:
        """Progress after a lock-step token (`append`): row 0's text, committed, to a stream."""
        if self.request.on_progress is not None:
            text = self.policy.completion(partial, 0).text
            number = self.usage.generated_tokens
            self.report("token", number, f"token {number}: {text[-40:]!r}", committed=text)

    def release_rows(self, rows: int) -> None:
        """Give back the memory of `rows` sequences dropped for good, so that waiting requests
        can start (the server held prompt + max_tokens key/value tokens for each)."""
        if self.memory is not None and rows > 0:
            self.memory.release(rows * (self.usage.prompt_tokens + self.request.sampling.max_tokens))

    def done_with(self, partial: PartialResponses) -> None:
        """Count the model work of a finished partial (its forward tokens accumulate on it)."""
        self.usage.lm_forward_tokens += partial.forward_tokens

    # -- the objectives, counted -------------------------------------------------------------------

    def score(self, completions: Sequence[Completion], instruction: str | None = None) -> list[ScoredCandidate]:
        """All completions scored in one batched scorer call, against the user's instruction (not
        the rendered chat prompt), weighted by the request's weights."""
        instruction = self.request.prompt.user if instruction is None else instruction
        with self.phase("score"):
            rewards = self.scorer.score([instruction] * len(completions), [c.text for c in completions])
        self.usage.scorer_calls += 1
        self.usage.scored_texts += len(completions)
        weighted = self.request.weights.weighted(rewards)
        return [ScoredCandidate(c, rewards[i], float(weighted[i])) for i, c in enumerate(completions)]

    # -- the result --------------------------------------------------------------------------------

    def finish(
        self,
        chosen: ScoredCandidate,
        candidates: list[ScoredCandidate],
        kl: list[KLEstimate],
        details: dict[str, float] | None = None,
    ) -> DecodeResult:
        """The result for the chosen candidate. The candidates are copied to mark it: progress
        events may still hold them, and the stream converts events later."""
        self.usage.wall_seconds = self.elapsed
        request = self.request
        return DecodeResult(
            text=chosen.completion.text,
            token_ids=chosen.completion.token_ids,
            finish_reason=chosen.completion.finish_reason.value,
            rewards={n: float(v) for n, v in zip(request.weights.names, chosen.rewards)},
            weighted_score=chosen.weighted_score,
            kl=kl,
            usage=self.usage,
            candidates=[dataclasses.replace(c, selected=c is chosen) for c in candidates]
            if request.return_candidates
            else [],
            details=details or {},
        )

    def finish_decoded(
        self, partial: PartialResponses, kl: list[KLEstimate], details: dict[str, float] | None = None
    ) -> tuple[DecodeResult, ScoredCandidate]:
        """The result for row 0 of a finished incremental decode: its text scored by the
        objectives. Returns the scored row too, for strategy details."""
        self.done_with(partial)
        (scored,) = self.score([self.policy.completion(partial, 0)])
        return self.finish(scored, [scored], kl, details), scored


# A prepared request's decode: run it with the request's context.
Decode = Callable[[DecodeContext], DecodeResult]


class Strategy(ABC, Generic[P]):
    """A decoding strategy. `prepare` checks a request once and returns its decode; `decode` does
    both in one call (tests, benchmarks, embedding alignd as a library)."""

    name: ClassVar[str]
    description: ClassVar[str]
    Params: ClassVar[type[Any]]  # P: a frozen dataclass built from `params.param(...)` fields
    requires: ClassVar[frozenset[Capability]] = frozenset({Capability.SAMPLE})
    # Strategies that choose among samples of pi_ref have nothing to choose from when it is greedy.
    refuses_greedy: ClassVar[bool] = False
    # Sampling settings this strategy uses when the request leaves them unset (e.g. the authors'
    # temperature), over the server's defaults.
    sampling_defaults: ClassVar[dict[str, Any]] = {}

    def default_sampling(self, server_defaults: SamplingParams) -> SamplingParams:
        return dataclasses.replace(server_defaults, **self.sampling_defaults)

    def resolve_params(self, params: P, weights: PreferenceWeights, vectors: Mapping[str, VectorInfo]) -> P:
        """`params` with what the request left to the server filled in from its weights and the
        policy's preference vectors, so that `rows` counts what it will hold (the server calls it
        when it parses a request). Default: as given."""
        return params

    def rows(self, params: P) -> int:
        """Sequences this strategy keeps in the KV cache at once (for the memory budget)."""
        return 1

    def held_tokens(self, params: P, prompt_tokens: int, max_tokens: int) -> int:
        """Key/value tokens a request may hold at once: the server reserves them from its memory
        budget before decoding (default: `rows` sequences of prompt + max_tokens)."""
        return self.rows(params) * (prompt_tokens + max_tokens)

    def prepare(self, request: DecodeRequest, params: P, policy: Policy, scorer: Scorer) -> Decode:
        """Refuse, before any work, what this strategy cannot serve whatever the prompt: backend
        capabilities, greedy sampling where it needs samples, and its own `plan` checks. The
        server calls it once per request, and once per experiment arm when the arm is created."""
        missing = sorted(c.value for c in self.requires - policy.capabilities)
        if missing:
            raise FailedPrecondition(
                f"strategy {self.name!r} needs backend capabilities {missing}, which {type(policy).__name__} lacks"
            )
        policy.check_steering(request.sampling.steering)
        if self.refuses_greedy and request.sampling.greedy:
            raise InvalidArgument("sampling.temperature", f"{self.name} samples from pi_ref: use a temperature > 0")
        return self.plan(request, params, policy, scorer)

    @abstractmethod
    def plan(self, request: DecodeRequest, params: P, policy: Policy, scorer: Scorer) -> Decode:
        """The strategy's own checks and set-up (raise alignd.errors); returns the decode."""

    def decode(self, request: DecodeRequest, params: P, policy: Policy, scorer: Scorer) -> DecodeResult:
        """Check and decode one request."""
        request = dataclasses.replace(request, prompt=policy.encode(request.prompt))
        return self.prepare(request, params, policy, scorer)(DecodeContext(request, policy, scorer))


STRATEGIES: dict[str, Strategy[Any]] = {}


def register(cls: type[Strategy[Any]]) -> type[Strategy[Any]]:
    """Class decorator: make a strategy available by its name."""
    STRATEGIES[cls.name] = cls()
    return cls


def get_strategy(name: str) -> Strategy[Any]:
    # Importing the package registers the built-in strategies.
    import alignd.decoding  # noqa: F401

    try:
        return STRATEGIES[name]
    except KeyError:
        raise InvalidArgument("strategy", f"unknown strategy {name!r}; available: {sorted(STRATEGIES)}") from None
