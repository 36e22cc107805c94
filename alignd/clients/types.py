"""Plain result types of the Python client (no protobuf in user code)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "KL",
    "ArmReport",
    "CandidateResult",
    "Comparison",
    "ExperimentReport",
    "Generation",
    "HeadInfo",
    "MeanEstimate",
    "ObjectiveInfo",
    "ParameterInfo",
    "PreferenceVectorInfo",
    "Progress",
    "RateEstimate",
    "SamplingSettings",
    "Scored",
    "ServerInfo",
    "ServerLimits",
    "StrategyInfo",
    "Usage",
]


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
    scored_texts: int = 0  # texts the scorers saw (candidates, partial responses)


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
    experiment: str = ""  # A/B: the experiment and the arm that served the request
    arm: str = ""
    preference_vectors: dict[str, float] = field(default_factory=dict)  # the strengths steered with

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
    text_delta: str = ""  # the answer's text committed since the previous event


@dataclass(frozen=True)
class Scored:
    rewards: dict[str, float]
    weighted_score: float


@dataclass(frozen=True)
class MeanEstimate:
    """A mean with its 95% t interval (NaN bounds below two values)."""

    mean: float
    low: float
    high: float
    count: int


@dataclass(frozen=True)
class RateEstimate:
    """A rate with its 95% Wilson interval."""

    successes: int
    trials: int
    rate: float
    low: float
    high: float


@dataclass(frozen=True)
class ArmReport:
    name: str
    strategy: str
    split: float
    requests: int
    subjects: int
    rewards: dict[str, MeanEstimate]
    weighted_score: MeanEstimate
    latency_p50_seconds: float
    latency_p95_seconds: float
    generated_tokens: MeanEstimate
    thumbs_up: RateEstimate
    rating: MeanEstimate
    preference_wins: RateEstimate


@dataclass(frozen=True)
class Comparison:
    """`arm` minus `baseline` on `metric`, with a 95% interval and a two-sided p-value from `test`."""

    arm: str
    baseline: str
    metric: str
    test: str
    difference: float
    low: float
    high: float
    p_value: float
    significant: bool


@dataclass(frozen=True)
class ExperimentReport:
    name: str
    arms: list[ArmReport]
    comparisons: list[Comparison]
    requests: int
    feedback: int
    generated_unix: float

    def arm(self, name: str) -> ArmReport:
        return next(a for a in self.arms if a.name == name)


@dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings used where a request leaves them unset; None (or no stop sequences): not set."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass(frozen=True)
class ObjectiveInfo:
    name: str
    description: str
    min_value: float
    max_value: float
    higher_is_better: bool
    default_weight: float
    # Value sources for the value-guided strategies ("heads", "prefix"), the one `value_source =
    # "auto"` picks, and each source's pair accuracy measured when the heads were trained.
    value_sources: list[str] = field(default_factory=list)
    auto_value_source: str = ""
    value_source_pair_accuracy: dict[str, float] = field(default_factory=dict)
    # "built-in", "reward_head <path>", "sequence_classification <path> output <i>", "python <entry point>"
    source: str = ""


@dataclass(frozen=True)
class ParameterInfo:
    name: str
    type: str
    default_value: str
    description: str
    min_value: float | None = None  # None: unbounded
    max_value: float | None = None
    choices: list[str] = field(default_factory=list)  # allowed values of a string parameter


@dataclass(frozen=True)
class StrategyInfo:
    name: str
    description: str
    parameters: list[ParameterInfo]
    requires: list[str]  # backend capabilities it needs
    sampling_defaults: SamplingSettings  # over ServerInfo.default_sampling

    def parameter(self, name: str) -> ParameterInfo:
        return next(p for p in self.parameters if p.name == name)


@dataclass(frozen=True)
class ServerLimits:
    max_prompt_chars: int
    max_tokens: int
    max_candidates: int
    max_stop_sequences: int
    max_stop_chars: int
    max_score_responses: int
    max_batch_tokens: int  # sequences x (prompt + max_tokens) per request
    max_prompt_tokens: int  # the encoded prompt, chat template and history included
    max_vector_strength: float = 0.0  # |eta| of each preference vector


@dataclass(frozen=True)
class HeadInfo:
    kind: str  # "value" or "reward"
    path: str
    base_model: str
    objectives: list[str]  # one per output
    data_hash: str
    metrics: dict[str, float]  # evaluation at training time


@dataclass(frozen=True)
class PreferenceVectorInfo:
    """A preference vector the server steers with (`generate(..., preference_vectors={name: eta})`)."""

    name: str
    objective: str  # the objective its training pairs were ranked by
    base_model: str
    rank: int
    target_modules: list[str]
    data_hash: str
    shift: dict[str, float]  # mean change of each objective at eta = 1 against 0, measured in training
    presets: list[float]  # the only strengths served (vLLM); empty: any within the limit


@dataclass(frozen=True)
class ServerInfo:
    version: str
    model: str
    backend: str
    device: str
    objectives: list[ObjectiveInfo]
    strategies: list[StrategyInfo]
    limits: ServerLimits
    default_sampling: SamplingSettings
    capabilities: list[str]
    heads: list[HeadInfo] = field(default_factory=list)
    preference_vectors: list[PreferenceVectorInfo] = field(default_factory=list)

    def objective(self, name: str) -> ObjectiveInfo:
        return next(o for o in self.objectives if o.name == name)

    def strategy(self, name: str) -> StrategyInfo:
        return next(s for s in self.strategies if s.name == name)
