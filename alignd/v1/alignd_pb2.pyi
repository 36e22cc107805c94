from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., max_tokens: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ...) -> None: ...

class SampleParams(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BestOfNParams(_message.Message):
    __slots__ = ("n",)
    N_FIELD_NUMBER: _ClassVar[int]
    n: int
    def __init__(self, n: _Optional[int] = ...) -> None: ...

class ControlledParams(_message.Message):
    __slots__ = ("mode", "num_candidates", "block_tokens", "strength", "token_candidates", "value_source")
    MODE_FIELD_NUMBER: _ClassVar[int]
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    VALUE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    num_candidates: int
    block_tokens: int
    strength: float
    token_candidates: int
    value_source: str
    def __init__(self, mode: _Optional[str] = ..., num_candidates: _Optional[int] = ..., block_tokens: _Optional[int] = ..., strength: _Optional[float] = ..., token_candidates: _Optional[int] = ..., value_source: _Optional[str] = ...) -> None: ...

class MultiObjectiveParams(_message.Message):
    __slots__ = ("num_candidates", "block_tokens", "value_source", "mode", "policy_weights")
    class PolicyWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VALUE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    POLICY_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    num_candidates: int
    block_tokens: int
    value_source: str
    mode: str
    policy_weights: _containers.ScalarMap[str, float]
    def __init__(self, num_candidates: _Optional[int] = ..., block_tokens: _Optional[int] = ..., value_source: _Optional[str] = ..., mode: _Optional[str] = ..., policy_weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RobustParams(_message.Message):
    __slots__ = ("num_candidates", "block_tokens", "strength", "solver", "objectives", "min_weights", "value_source")
    class MinWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVES_FIELD_NUMBER: _ClassVar[int]
    MIN_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    VALUE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    num_candidates: int
    block_tokens: int
    strength: float
    solver: str
    objectives: _containers.RepeatedScalarFieldContainer[str]
    min_weights: _containers.ScalarMap[str, float]
    value_source: str
    def __init__(self, num_candidates: _Optional[int] = ..., block_tokens: _Optional[int] = ..., strength: _Optional[float] = ..., solver: _Optional[str] = ..., objectives: _Optional[_Iterable[str]] = ..., min_weights: _Optional[_Mapping[str, float]] = ..., value_source: _Optional[str] = ...) -> None: ...

class LinearAlignmentParams(_message.Message):
    __slots__ = ("principle", "alpha", "placement")
    PRINCIPLE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    principle: str
    alpha: float
    placement: str
    def __init__(self, principle: _Optional[str] = ..., alpha: _Optional[float] = ..., placement: _Optional[str] = ...) -> None: ...

class EvolutionaryParams(_message.Message):
    __slots__ = ("beams", "replace_every", "keep_top", "cycles", "mutation_tokens")
    BEAMS_FIELD_NUMBER: _ClassVar[int]
    REPLACE_EVERY_FIELD_NUMBER: _ClassVar[int]
    KEEP_TOP_FIELD_NUMBER: _ClassVar[int]
    CYCLES_FIELD_NUMBER: _ClassVar[int]
    MUTATION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    beams: int
    replace_every: int
    keep_top: int
    cycles: int
    mutation_tokens: int
    def __init__(self, beams: _Optional[int] = ..., replace_every: _Optional[int] = ..., keep_top: _Optional[int] = ..., cycles: _Optional[int] = ..., mutation_tokens: _Optional[int] = ...) -> None: ...

class SoftBestOfNParams(_message.Message):
    __slots__ = ("n", "beta")
    N_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    n: int
    beta: float
    def __init__(self, n: _Optional[int] = ..., beta: _Optional[float] = ...) -> None: ...

class SpeculativeBestOfNParams(_message.Message):
    __slots__ = ("num_candidates", "keep_fraction", "rejection", "rejection_tokens", "max_rejections", "memory_tokens", "value_source")
    NUM_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    KEEP_FRACTION_FIELD_NUMBER: _ClassVar[int]
    REJECTION_FIELD_NUMBER: _ClassVar[int]
    REJECTION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    VALUE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    num_candidates: int
    keep_fraction: float
    rejection: str
    rejection_tokens: int
    max_rejections: int
    memory_tokens: int
    value_source: str
    def __init__(self, num_candidates: _Optional[int] = ..., keep_fraction: _Optional[float] = ..., rejection: _Optional[str] = ..., rejection_tokens: _Optional[int] = ..., max_rejections: _Optional[int] = ..., memory_tokens: _Optional[int] = ..., value_source: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "system_prompt", "raw_prompt", "strategy", "weights", "sampling", "return_candidates", "request_id", "experiment", "subject", "history", "preference_vectors", "sample", "best_of_n", "controlled", "multi_objective", "robust", "linear_alignment", "evolutionary", "soft_best_of_n", "speculative_best_of_n")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PreferenceVectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    RAW_PROMPT_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    RETURN_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    BEST_OF_N_FIELD_NUMBER: _ClassVar[int]
    CONTROLLED_FIELD_NUMBER: _ClassVar[int]
    MULTI_OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    ROBUST_FIELD_NUMBER: _ClassVar[int]
    LINEAR_ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    EVOLUTIONARY_FIELD_NUMBER: _ClassVar[int]
    SOFT_BEST_OF_N_FIELD_NUMBER: _ClassVar[int]
    SPECULATIVE_BEST_OF_N_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    system_prompt: str
    raw_prompt: bool
    strategy: str
    weights: _containers.ScalarMap[str, float]
    sampling: SamplingParams
    return_candidates: bool
    request_id: str
    experiment: str
    subject: str
    history: _containers.RepeatedCompositeFieldContainer[ChatTurn]
    preference_vectors: _containers.ScalarMap[str, float]
    sample: SampleParams
    best_of_n: BestOfNParams
    controlled: ControlledParams
    multi_objective: MultiObjectiveParams
    robust: RobustParams
    linear_alignment: LinearAlignmentParams
    evolutionary: EvolutionaryParams
    soft_best_of_n: SoftBestOfNParams
    speculative_best_of_n: SpeculativeBestOfNParams
    def __init__(self, prompt: _Optional[str] = ..., system_prompt: _Optional[str] = ..., raw_prompt: _Optional[bool] = ..., strategy: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., return_candidates: _Optional[bool] = ..., request_id: _Optional[str] = ..., experiment: _Optional[str] = ..., subject: _Optional[str] = ..., history: _Optional[_Iterable[_Union[ChatTurn, _Mapping]]] = ..., preference_vectors: _Optional[_Mapping[str, float]] = ..., sample: _Optional[_Union[SampleParams, _Mapping]] = ..., best_of_n: _Optional[_Union[BestOfNParams, _Mapping]] = ..., controlled: _Optional[_Union[ControlledParams, _Mapping]] = ..., multi_objective: _Optional[_Union[MultiObjectiveParams, _Mapping]] = ..., robust: _Optional[_Union[RobustParams, _Mapping]] = ..., linear_alignment: _Optional[_Union[LinearAlignmentParams, _Mapping]] = ..., evolutionary: _Optional[_Union[EvolutionaryParams, _Mapping]] = ..., soft_best_of_n: _Optional[_Union[SoftBestOfNParams, _Mapping]] = ..., speculative_best_of_n: _Optional[_Union[SpeculativeBestOfNParams, _Mapping]] = ...) -> None: ...

class ChatTurn(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class KLEstimate(_message.Message):
    __slots__ = ("name", "kind", "nats", "description")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[KLEstimate.Kind]
        ESTIMATE: _ClassVar[KLEstimate.Kind]
        UPPER_BOUND: _ClassVar[KLEstimate.Kind]
        EXACT: _ClassVar[KLEstimate.Kind]
    KIND_UNSPECIFIED: KLEstimate.Kind
    ESTIMATE: KLEstimate.Kind
    UPPER_BOUND: KLEstimate.Kind
    EXACT: KLEstimate.Kind
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NATS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: KLEstimate.Kind
    nats: float
    description: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[KLEstimate.Kind, str]] = ..., nats: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("text", "token_ids", "finish_reason", "rewards", "weighted_score", "logprob", "selected")
    class RewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_SCORE_FIELD_NUMBER: _ClassVar[int]
    LOGPROB_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: str
    rewards: _containers.ScalarMap[str, float]
    weighted_score: float
    logprob: float
    selected: bool
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[str] = ..., rewards: _Optional[_Mapping[str, float]] = ..., weighted_score: _Optional[float] = ..., logprob: _Optional[float] = ..., selected: _Optional[bool] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "generated_tokens", "lm_forward_tokens", "scorer_calls", "scored_texts", "wall_seconds", "phase_seconds")
    class PhaseSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LM_FORWARD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCORER_CALLS_FIELD_NUMBER: _ClassVar[int]
    SCORED_TEXTS_FIELD_NUMBER: _ClassVar[int]
    WALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PHASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    generated_tokens: int
    lm_forward_tokens: int
    scorer_calls: int
    scored_texts: int
    wall_seconds: float
    phase_seconds: _containers.ScalarMap[str, float]
    def __init__(self, prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., lm_forward_tokens: _Optional[int] = ..., scorer_calls: _Optional[int] = ..., scored_texts: _Optional[int] = ..., wall_seconds: _Optional[float] = ..., phase_seconds: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("request_id", "strategy", "text", "token_ids", "finish_reason", "rewards", "weighted_score", "weights", "kl", "candidates", "usage", "model", "details", "experiment", "arm", "preference_vectors")
    class RewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class PreferenceVectorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_SCORE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    strategy: str
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    finish_reason: str
    rewards: _containers.ScalarMap[str, float]
    weighted_score: float
    weights: _containers.ScalarMap[str, float]
    kl: _containers.RepeatedCompositeFieldContainer[KLEstimate]
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    usage: Usage
    model: str
    details: _containers.ScalarMap[str, float]
    experiment: str
    arm: str
    preference_vectors: _containers.ScalarMap[str, float]
    def __init__(self, request_id: _Optional[str] = ..., strategy: _Optional[str] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., finish_reason: _Optional[str] = ..., rewards: _Optional[_Mapping[str, float]] = ..., weighted_score: _Optional[float] = ..., weights: _Optional[_Mapping[str, float]] = ..., kl: _Optional[_Iterable[_Union[KLEstimate, _Mapping]]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., model: _Optional[str] = ..., details: _Optional[_Mapping[str, float]] = ..., experiment: _Optional[str] = ..., arm: _Optional[str] = ..., preference_vectors: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("phase", "step", "message", "elapsed_seconds", "candidates", "weights", "worst_objective", "worst_value", "instructions", "text_delta")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    WORST_OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    WORST_VALUE_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    TEXT_DELTA_FIELD_NUMBER: _ClassVar[int]
    phase: str
    step: int
    message: str
    elapsed_seconds: float
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    weights: _containers.ScalarMap[str, float]
    worst_objective: str
    worst_value: float
    instructions: _containers.RepeatedScalarFieldContainer[str]
    text_delta: str
    def __init__(self, phase: _Optional[str] = ..., step: _Optional[int] = ..., message: _Optional[str] = ..., elapsed_seconds: _Optional[float] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., weights: _Optional[_Mapping[str, float]] = ..., worst_objective: _Optional[str] = ..., worst_value: _Optional[float] = ..., instructions: _Optional[_Iterable[str]] = ..., text_delta: _Optional[str] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: Progress
    result: GenerateResponse
    def __init__(self, progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompt", "responses", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    responses: _containers.RepeatedScalarFieldContainer[str]
    weights: _containers.ScalarMap[str, float]
    def __init__(self, prompt: _Optional[str] = ..., responses: _Optional[_Iterable[str]] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScoredText(_message.Message):
    __slots__ = ("rewards", "weighted_score")
    class RewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_SCORE_FIELD_NUMBER: _ClassVar[int]
    rewards: _containers.ScalarMap[str, float]
    weighted_score: float
    def __init__(self, rewards: _Optional[_Mapping[str, float]] = ..., weighted_score: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SCORES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[ScoredText]
    weights: _containers.ScalarMap[str, float]
    def __init__(self, scores: _Optional[_Iterable[_Union[ScoredText, _Mapping]]] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class GetServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ObjectiveInfo(_message.Message):
    __slots__ = ("name", "description", "min_value", "max_value", "higher_is_better", "default_weight", "value_sources", "auto_value_source", "value_source_pair_accuracy", "source")
    class ValueSourcePairAccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    HIGHER_IS_BETTER_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    VALUE_SOURCES_FIELD_NUMBER: _ClassVar[int]
    AUTO_VALUE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_SOURCE_PAIR_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    min_value: float
    max_value: float
    higher_is_better: bool
    default_weight: float
    value_sources: _containers.RepeatedScalarFieldContainer[str]
    auto_value_source: str
    value_source_pair_accuracy: _containers.ScalarMap[str, float]
    source: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., min_value: _Optional[float] = ..., max_value: _Optional[float] = ..., higher_is_better: _Optional[bool] = ..., default_weight: _Optional[float] = ..., value_sources: _Optional[_Iterable[str]] = ..., auto_value_source: _Optional[str] = ..., value_source_pair_accuracy: _Optional[_Mapping[str, float]] = ..., source: _Optional[str] = ...) -> None: ...

class ParameterInfo(_message.Message):
    __slots__ = ("name", "type", "default_value", "description", "min_value", "max_value", "choices")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MIN_VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_VALUE_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    default_value: str
    description: str
    min_value: float
    max_value: float
    choices: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., default_value: _Optional[str] = ..., description: _Optional[str] = ..., min_value: _Optional[float] = ..., max_value: _Optional[float] = ..., choices: _Optional[_Iterable[str]] = ...) -> None: ...

class StrategyInfo(_message.Message):
    __slots__ = ("name", "description", "parameters", "requires", "sampling_defaults")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters: _containers.RepeatedCompositeFieldContainer[ParameterInfo]
    requires: _containers.RepeatedScalarFieldContainer[str]
    sampling_defaults: SamplingParams
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[ParameterInfo, _Mapping]]] = ..., requires: _Optional[_Iterable[str]] = ..., sampling_defaults: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_prompt_chars", "max_tokens", "max_candidates", "max_stop_sequences", "max_stop_chars", "max_score_responses", "max_batch_tokens", "max_prompt_tokens", "max_vector_strength")
    MAX_PROMPT_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MAX_STOP_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    MAX_STOP_CHARS_FIELD_NUMBER: _ClassVar[int]
    MAX_SCORE_RESPONSES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_VECTOR_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    max_prompt_chars: int
    max_tokens: int
    max_candidates: int
    max_stop_sequences: int
    max_stop_chars: int
    max_score_responses: int
    max_batch_tokens: int
    max_prompt_tokens: int
    max_vector_strength: float
    def __init__(self, max_prompt_chars: _Optional[int] = ..., max_tokens: _Optional[int] = ..., max_candidates: _Optional[int] = ..., max_stop_sequences: _Optional[int] = ..., max_stop_chars: _Optional[int] = ..., max_score_responses: _Optional[int] = ..., max_batch_tokens: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., max_vector_strength: _Optional[float] = ...) -> None: ...

class HeadInfo(_message.Message):
    __slots__ = ("kind", "path", "base_model", "objectives", "data_hash", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVES_FIELD_NUMBER: _ClassVar[int]
    DATA_HASH_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    path: str
    base_model: str
    objectives: _containers.RepeatedScalarFieldContainer[str]
    data_hash: str
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, kind: _Optional[str] = ..., path: _Optional[str] = ..., base_model: _Optional[str] = ..., objectives: _Optional[_Iterable[str]] = ..., data_hash: _Optional[str] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class PreferenceVectorInfo(_message.Message):
    __slots__ = ("name", "objective", "base_model", "rank", "target_modules", "data_hash", "shift", "presets")
    class ShiftEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVE_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    DATA_HASH_FIELD_NUMBER: _ClassVar[int]
    SHIFT_FIELD_NUMBER: _ClassVar[int]
    PRESETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    objective: str
    base_model: str
    rank: int
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    data_hash: str
    shift: _containers.ScalarMap[str, float]
    presets: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., objective: _Optional[str] = ..., base_model: _Optional[str] = ..., rank: _Optional[int] = ..., target_modules: _Optional[_Iterable[str]] = ..., data_hash: _Optional[str] = ..., shift: _Optional[_Mapping[str, float]] = ..., presets: _Optional[_Iterable[float]] = ...) -> None: ...

class ServerInfo(_message.Message):
    __slots__ = ("version", "model", "backend", "device", "objectives", "strategies", "limits", "default_sampling", "capabilities", "heads", "preference_vectors")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    OBJECTIVES_FIELD_NUMBER: _ClassVar[int]
    STRATEGIES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_VECTORS_FIELD_NUMBER: _ClassVar[int]
    version: str
    model: str
    backend: str
    device: str
    objectives: _containers.RepeatedCompositeFieldContainer[ObjectiveInfo]
    strategies: _containers.RepeatedCompositeFieldContainer[StrategyInfo]
    limits: Limits
    default_sampling: SamplingParams
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    heads: _containers.RepeatedCompositeFieldContainer[HeadInfo]
    preference_vectors: _containers.RepeatedCompositeFieldContainer[PreferenceVectorInfo]
    def __init__(self, version: _Optional[str] = ..., model: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., objectives: _Optional[_Iterable[_Union[ObjectiveInfo, _Mapping]]] = ..., strategies: _Optional[_Iterable[_Union[StrategyInfo, _Mapping]]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., default_sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., capabilities: _Optional[_Iterable[str]] = ..., heads: _Optional[_Iterable[_Union[HeadInfo, _Mapping]]] = ..., preference_vectors: _Optional[_Iterable[_Union[PreferenceVectorInfo, _Mapping]]] = ...) -> None: ...

class Arm(_message.Message):
    __slots__ = ("name", "split", "request")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    name: str
    split: float
    request: GenerateRequest
    def __init__(self, name: _Optional[str] = ..., split: _Optional[float] = ..., request: _Optional[_Union[GenerateRequest, _Mapping]] = ...) -> None: ...

class Experiment(_message.Message):
    __slots__ = ("name", "description", "arms", "source", "created_unix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    arms: _containers.RepeatedCompositeFieldContainer[Arm]
    source: str
    created_unix: float
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., arms: _Optional[_Iterable[_Union[Arm, _Mapping]]] = ..., source: _Optional[str] = ..., created_unix: _Optional[float] = ...) -> None: ...

class ListExperimentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListExperimentsResponse(_message.Message):
    __slots__ = ("experiments",)
    EXPERIMENTS_FIELD_NUMBER: _ClassVar[int]
    experiments: _containers.RepeatedCompositeFieldContainer[Experiment]
    def __init__(self, experiments: _Optional[_Iterable[_Union[Experiment, _Mapping]]] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("request_id", "thumbs_up", "rating", "preferred_over", "key")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    THUMBS_UP_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_OVER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    thumbs_up: bool
    rating: float
    preferred_over: str
    key: str
    def __init__(self, request_id: _Optional[str] = ..., thumbs_up: _Optional[bool] = ..., rating: _Optional[float] = ..., preferred_over: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("replaced",)
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    replaced: bool
    def __init__(self, replaced: _Optional[bool] = ...) -> None: ...

class ExperimentReportRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class MeanEstimate(_message.Message):
    __slots__ = ("mean", "low", "high", "count")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    mean: float
    low: float
    high: float
    count: int
    def __init__(self, mean: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class RateEstimate(_message.Message):
    __slots__ = ("successes", "trials", "rate", "low", "high")
    SUCCESSES_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    successes: int
    trials: int
    rate: float
    low: float
    high: float
    def __init__(self, successes: _Optional[int] = ..., trials: _Optional[int] = ..., rate: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class ArmReport(_message.Message):
    __slots__ = ("name", "strategy", "split", "requests", "subjects", "rewards", "weighted_score", "latency_p50_seconds", "latency_p95_seconds", "generated_tokens", "thumbs_up", "rating", "preference_wins")
    class RewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: MeanEstimate
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[MeanEstimate, _Mapping]] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SUBJECTS_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_SCORE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P50_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_P95_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    THUMBS_UP_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_WINS_FIELD_NUMBER: _ClassVar[int]
    name: str
    strategy: str
    split: float
    requests: int
    subjects: int
    rewards: _containers.MessageMap[str, MeanEstimate]
    weighted_score: MeanEstimate
    latency_p50_seconds: float
    latency_p95_seconds: float
    generated_tokens: MeanEstimate
    thumbs_up: RateEstimate
    rating: MeanEstimate
    preference_wins: RateEstimate
    def __init__(self, name: _Optional[str] = ..., strategy: _Optional[str] = ..., split: _Optional[float] = ..., requests: _Optional[int] = ..., subjects: _Optional[int] = ..., rewards: _Optional[_Mapping[str, MeanEstimate]] = ..., weighted_score: _Optional[_Union[MeanEstimate, _Mapping]] = ..., latency_p50_seconds: _Optional[float] = ..., latency_p95_seconds: _Optional[float] = ..., generated_tokens: _Optional[_Union[MeanEstimate, _Mapping]] = ..., thumbs_up: _Optional[_Union[RateEstimate, _Mapping]] = ..., rating: _Optional[_Union[MeanEstimate, _Mapping]] = ..., preference_wins: _Optional[_Union[RateEstimate, _Mapping]] = ...) -> None: ...

class ArmComparison(_message.Message):
    __slots__ = ("arm", "baseline", "metric", "test", "difference", "low", "high", "p_value", "significant")
    ARM_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    TEST_FIELD_NUMBER: _ClassVar[int]
    DIFFERENCE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    SIGNIFICANT_FIELD_NUMBER: _ClassVar[int]
    arm: str
    baseline: str
    metric: str
    test: str
    difference: float
    low: float
    high: float
    p_value: float
    significant: bool
    def __init__(self, arm: _Optional[str] = ..., baseline: _Optional[str] = ..., metric: _Optional[str] = ..., test: _Optional[str] = ..., difference: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., p_value: _Optional[float] = ..., significant: _Optional[bool] = ...) -> None: ...

class ExperimentReport(_message.Message):
    __slots__ = ("experiment", "arms", "comparisons", "requests", "feedback", "generated_unix")
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    ARMS_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    GENERATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    experiment: Experiment
    arms: _containers.RepeatedCompositeFieldContainer[ArmReport]
    comparisons: _containers.RepeatedCompositeFieldContainer[ArmComparison]
    requests: int
    feedback: int
    generated_unix: float
    def __init__(self, experiment: _Optional[_Union[Experiment, _Mapping]] = ..., arms: _Optional[_Iterable[_Union[ArmReport, _Mapping]]] = ..., comparisons: _Optional[_Iterable[_Union[ArmComparison, _Mapping]]] = ..., requests: _Optional[int] = ..., feedback: _Optional[int] = ..., generated_unix: _Optional[float] = ...) -> None: ...
