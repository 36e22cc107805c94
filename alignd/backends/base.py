"""The Policy interface: what a decoding strategy may ask of a language model.

Strategies import only this module, never a concrete backend. A strategy lists the capabilities
it needs; a policy that lacks one is refused with FAILED_PRECONDITION before any work starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, TypeVar

from alignd.errors import Cancelled, FailedPrecondition

if TYPE_CHECKING:  # strategies use these types without importing torch
    import torch

    from alignd.backends.preference_vectors import VectorInfo


class Capability(enum.StrEnum):
    """Optional things a backend can do beyond `sample`."""

    SAMPLE = "sample"  # full responses with per-token reference log-probs (every backend)
    # preference vectors at any per-request strengths, mixed per row in a batch (`steering`)
    ROW_STEERING = "row_steering"
    EXTEND = "extend"  # continue partial responses by blocks, reusing the prefix
    TOKENWISE = "tokenwise"  # next-token logits for a batch of partial states
    HIDDEN_STATES = "hidden_states"  # hidden states of generated tokens at no extra forward


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-sequence token or a stop sequence
    LENGTH = "length"  # max_tokens reached


# Preference-vector strengths of a policy: ((vector name, eta), ...), as `steering_of` makes it.
Steering = tuple[tuple[str, float], ...]


def steering_of(strengths: dict[str, float]) -> Steering:
    """The canonical form of vector strengths: sorted by name, zeros left out (so equal policies
    compare equal)."""
    return tuple(sorted((name, float(eta)) for name, eta in strengths.items() if eta != 0.0))


@dataclass(frozen=True)
class SamplingParams:
    """Settings of the reference sampling distribution pi_ref.

    Log-probabilities reported with completions are under this distribution (after temperature,
    top-k and top-p), since that is the policy best-of-n and friends are measured against.
    """

    temperature: float = 0.7  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    max_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # The policy itself: preference-vector strengths (name, eta), sorted by name, none zero;
    # pi_ref is then the model with weights theta_base + sum_p eta_p phi_p. Empty: the base model.
    steering: Steering = ()

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class ChatPrompt:
    """A user instruction, rendered with the model's chat template unless ``raw``."""

    user: str
    system: str | None = None
    raw: bool = False
    # Earlier (role, content) turns of a conversation, oldest first, that `user` follows.
    history: tuple[tuple[str, str], ...] = ()
    # The rendered prompt's token ids, once `Policy.encode` has tokenized it: a request is
    # tokenized once and its ids travel with it to every backend call. Build a new ChatPrompt
    # (not dataclasses.replace) when the text changes, or the old ids would travel with it.
    token_ids: tuple[int, ...] | None = field(default=None, compare=False, repr=False)


@dataclass
class Completion:
    """One sampled response."""

    text: str
    token_ids: list[int]
    # log pi_ref(token | prompt, previous tokens) for each generated token, under the sampling
    # distribution (0.0 per token when greedy: the distribution is a point mass).
    token_logprobs: list[float]
    finish_reason: FinishReason

    @property
    def logprob(self) -> float:
        return float(sum(self.token_logprobs))


@dataclass
class SampleBatch:
    """Completions for each prompt (``completions[i]`` holds the n responses to prompt i)."""

    completions: list[list[Completion]]
    prompt_tokens: list[int]  # tokens of each rendered prompt
    forward_tokens: int  # tokens pushed through the model (prompts once + every decode step)


@dataclass
class PartialResponses:
    """R partial responses to one prompt, kept by the backend between strategy steps.

    The backend subclasses it to hold what makes continuing cheap (the KV cache of live rows);
    strategies only read the fields below and pass the object back.
    """

    prompt: ChatPrompt
    sampling: SamplingParams
    prompt_tokens: int
    token_ids: list[list[int]]
    # log pi_ref of each token under the sampling distribution, as in Completion
    token_logprobs: list[list[float]]
    finish: list[FinishReason | None]  # None while the row can still grow
    # Final-layer hidden state after the last token fed to the model, [R, H]: the prompt's last
    # token for an empty response; a finished row's final token (EOS, or the one that hit
    # max_tokens) is never fed. None when the backend cannot give it for free.
    hidden: torch.Tensor | None
    forward_tokens: int = 0  # tokens pushed through the model for this request so far

    @property
    def rows(self) -> int:
        return len(self.token_ids)

    @property
    def done(self) -> bool:
        return all(f is not None for f in self.finish)


class MemoryHold:
    """What a request holds of a backend's key/value memory (`Policy.reserve`). A backend that
    manages its own memory (vLLM's engine) holds nothing, and releasing gives nothing back."""

    def release(self, tokens: int) -> None:
        """Give `tokens` of the hold back before the request ends (sequences it dropped for good)."""


class Policy(ABC):
    """A language model that strategies decode with."""

    #: short name of the model, for responses and metrics
    model_name: str
    #: "cpu", "cuda", "cuda:1", ...
    device: str
    capabilities: frozenset[Capability]
    #: longest prompt + response the model handles, in tokens (None: unknown)
    context_length: int | None = None
    #: the weights' dtype ("float32", "bfloat16", ...)
    dtype: str = "float32"
    #: preference vectors this policy can steer with, by name (`SamplingParams.steering`)
    vectors: Mapping[str, VectorInfo] = MappingProxyType({})
    #: per vector, the only strengths this backend serves (absent: any within the limit)
    vector_presets: Mapping[str, tuple[float, ...]] = MappingProxyType({})

    @abstractmethod
    def render(self, prompt: ChatPrompt) -> str:
        """The exact text the model is conditioned on (chat template applied)."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens added)."""

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def encode(self, prompt: ChatPrompt) -> ChatPrompt:
        """The prompt with its token ids (rendered and tokenized once; an encoded prompt is
        returned as it is)."""
        if prompt.token_ids is not None:
            return prompt
        return dataclasses.replace(prompt, token_ids=tuple(self.tokenize(self.render(prompt))))

    def prompt_ids(self, prompt: ChatPrompt) -> list[int]:
        """Token ids of the rendered prompt, reusing those it carries."""
        ids = self.encode(prompt).token_ids
        assert ids is not None
        return list(ids)

    @abstractmethod
    def detokenize(self, token_ids: Sequence[int]) -> str:
        """Text of token ids, special tokens dropped."""

    @abstractmethod
    def sample(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> SampleBatch:
        """Draw ``n`` responses for each prompt in one batch, each prompt encoded once.

        When ``cancel`` is set the backend stops at its next decoding step and raises
        alignd.errors.Cancelled, so an abandoned request frees the model at once.
        """

    # -- incremental decoding (Capability.EXTEND / TOKENWISE / HIDDEN_STATES) ------------------

    def check_steering(self, steering: Steering) -> None:
        """Refuse, with FailedPrecondition, preference-vector strengths this backend cannot serve
        (the names are known: the server checked them against `vectors`)."""
        if steering and Capability.ROW_STEERING not in self.capabilities:
            raise FailedPrecondition(f"backend {type(self).__name__} cannot steer with preference vectors")

    def _missing(self, capability: Capability) -> FailedPrecondition:
        return FailedPrecondition(f"backend {type(self).__name__} lacks the capability {capability.value!r}")

    def begin(
        self, prompt: ChatPrompt, sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> PartialResponses:
        """One empty response with the prompt encoded, ready to extend."""
        raise self._missing(Capability.EXTEND)

    def begin_many(
        self,
        prompts: Sequence[ChatPrompt],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        steering: Sequence[Steering] | None = None,
    ) -> PartialResponses:
        """One empty response per prompt (row i continues prompts[i]), prefilled in one batch.
        `steering[i]`, where given, is row i's policy instead of `sampling.steering`
        (Capability.ROW_STEERING): rows of one partial then decode under different policies."""
        raise self._missing(Capability.EXTEND)

    def extend(
        self, partial: PartialResponses, k: int, block_tokens: int, cancel: threading.Event | None = None
    ) -> PartialResponses:
        """k sampled continuations of up to `block_tokens` tokens for every row; child j of row r is
        row r*k + j. Finished rows are copied unchanged. The prefix is never re-encoded."""
        raise self._missing(Capability.EXTEND)

    def advance(
        self, partial: PartialResponses, tokens: int, cancel: threading.Event | None = None
    ) -> PartialResponses:
        """Every row continued by up to `tokens` sampled tokens, for a caller that gives `partial`
        up (a backend may continue it in place instead of copying its cache as `extend` does)."""
        return self.extend(partial, 1, tokens, cancel)

    def select(self, partial: PartialResponses, rows: Sequence[int]) -> PartialResponses:
        """Keep these rows (repeats allowed), in this order."""
        raise self._missing(Capability.EXTEND)

    def next_token_logprobs(self, partial: PartialResponses) -> torch.Tensor:
        """log pi_ref of the next token for every live row, [R, V] (-inf outside the
        sampling support; rows that finished are all -inf)."""
        raise self._missing(Capability.TOKENWISE)

    def next_token_logits(self, partial: PartialResponses) -> torch.Tensor:
        """Raw next-token logits for every row, float32 [R, V] (finished rows -inf)."""
        raise self._missing(Capability.TOKENWISE)

    def branch(
        self, partial: PartialResponses, tokens: Sequence[Sequence[int]], cancel: threading.Event | None = None
    ) -> PartialResponses:
        """Append given tokens: row r gets one child per token in tokens[r], in order."""
        raise self._missing(Capability.TOKENWISE)

    def append(
        self,
        partial: PartialResponses,
        tokens: Sequence[int],
        logprobs: Sequence[float],
        cancel: threading.Event | None = None,
    ) -> PartialResponses:
        """Append tokens[r] to every unfinished row r in place (one forward for all rows), recording
        logprobs[r] as its log pi_ref; returns `partial`."""
        raise self._missing(Capability.TOKENWISE)

    def completion(self, partial: PartialResponses, row: int) -> Completion:
        """Row `row` as a Completion (text decoded, cut before a stop sequence)."""
        raise self._missing(Capability.EXTEND)

    def partial_texts(self, partial: PartialResponses) -> list[str]:
        """Every row's text so far, as `completion` gives it (cut before a stop sequence); backends
        decode all rows in one batch."""
        return [self.completion(partial, row).text for row in range(partial.rows)]

    def prefix_hidden_states(self, prompt: ChatPrompt, responses: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Teacher-forced hidden states for training value heads: for each response of length T a
        tensor [T + 1, H], row t the state after t response tokens (the same states `extend`
        reports during decoding)."""
        raise self._missing(Capability.HIDDEN_STATES)

    def reserve(
        self, tokens: int, cancel: threading.Event | None = None
    ) -> contextlib.AbstractContextManager[MemoryHold]:
        """Hold `tokens` key/value tokens of the backend's memory (a request's sequences x
        (prompt + max_tokens)) while the request decodes, waiting while other requests hold
        them. Backends that manage their own memory (vLLM's engine) hold nothing here."""
        return contextlib.nullcontext(MemoryHold())

    def close(self) -> None:  # noqa: B027 (a backend without engine resources has nothing to release)
        """Release engine resources (processes, device memory)."""


State = TypeVar("State", bound=PartialResponses)


def owned(partial: PartialResponses, state: type[State]) -> State:
    """`partial` as the backend state `state` (the backend's PartialResponses subclass): partial
    responses begun by another backend are refused."""
    if not isinstance(partial, state):
        raise TypeError(f"partial responses from another backend ({type(partial).__name__})")
    return partial


def check_cancelled(cancel: threading.Event | None) -> None:
    """Stop at this step when the request was cancelled (client gone, deadline passed)."""
    if cancel is not None and cancel.is_set():
        raise Cancelled("request cancelled; decoding stopped")
