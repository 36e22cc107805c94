"""Plain result types of the Python client (no protobuf in user code)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KL:
    name: str
    kind: str  # "estimate", "upper_bound" or "exact"
    nats: float
    description: str


@dataclass(frozen=True)
class CandidateResult:
    text: str
    rewards: dict[str, float]
    weighted_score: float
    logprob: float
    finish_reason: str
    selected: bool


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    generated_tokens: int
    lm_forward_tokens: int
    scorer_calls: int
    wall_seconds: float
    phase_seconds: dict[str, float]


@dataclass(frozen=True)
class Generation:
    request_id: str
    strategy: str
    model: str
    text: str
    finish_reason: str
    rewards: dict[str, float]
    weighted_score: float
    weights: dict[str, float]
    kl: list[KL]
    usage: Usage
    token_ids: list[int] = field(default_factory=list)
    candidates: list[CandidateResult] = field(default_factory=list)
    details: dict[str, float] = field(default_factory=dict)  # strategy-specific figures

    def kl_by_name(self, name: str) -> KL:
        return next(k for k in self.kl if k.name == name)


@dataclass(frozen=True)
class Progress:
    phase: str
    step: int
    message: str
    elapsed_seconds: float
    candidates: list[CandidateResult] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)  # blockwise: weights applied (robust: w*)
    worst_objective: str = ""
    worst_value: float = 0.0
    instructions: list[str] = field(default_factory=list)  # evolutionary: each candidate's instruction


@dataclass(frozen=True)
class Scored:
    rewards: dict[str, float]
    weighted_score: float
