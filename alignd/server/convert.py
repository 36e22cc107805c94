"""Between the wire (alignd.v1 messages) and the domain types, with request validation.

Every problem raises InvalidArgument naming the request field, e.g. ``sampling.stop[1]``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from alignd.backends.base import ChatPrompt, SamplingParams, Steering, steering_of
from alignd.decoding.base import DecodeResult, ProgressEvent, ScoredCandidate, Strategy, get_strategy
from alignd.decoding.params import Limits, ParamDescription, validate_params
from alignd.decoding.weights import PreferenceWeights, parse_weights
from alignd.errors import InvalidArgument
from alignd.server.request_fields import requested_strategy
from alignd.v1 import alignd_pb2 as pb

if TYPE_CHECKING:
    from alignd.backends.preference_vectors import VectorInfo

# Below this, logits / T overflow to inf in float32; above, sampling is noise.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 100.0
_KL_KINDS = {"estimate": pb.KLEstimate.ESTIMATE, "upper_bound": pb.KLEstimate.UPPER_BOUND, "exact": pb.KLEstimate.EXACT}


@dataclass(frozen=True)
class ParsedGenerate:
    strategy: Strategy
    params: Any
    prompt: ChatPrompt
    sampling: SamplingParams
    weights: PreferenceWeights
    return_candidates: bool


def check_text(field: str, text: str, limit: int, *, required: bool) -> None:
    if required and not text.strip():
        raise InvalidArgument(field, "must not be empty")
    if len(text) > limit:
        raise InvalidArgument(field, f"{len(text)} characters, over the limit of {limit}")


def parse_sampling(message: pb.SamplingParams, defaults: SamplingParams, limits: Limits) -> SamplingParams:
    values = {f.name: v for f, v in message.ListFields() if f.name != "stop"}
    temperature = values.get("temperature", defaults.temperature)
    if not (temperature == 0 or MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise InvalidArgument(
            "sampling.temperature",
            f"must be 0 (greedy) or in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {temperature}",
        )
    top_p = values.get("top_p", defaults.top_p)
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise InvalidArgument("sampling.top_p", f"must be in (0, 1], got {top_p}")
    top_k = values.get("top_k", defaults.top_k)
    if top_k < 0:
        raise InvalidArgument("sampling.top_k", f"must be >= 0 (0 disables it), got {top_k}")
    max_tokens = values.get("max_tokens", defaults.max_tokens)
    if not 1 <= max_tokens <= limits.max_tokens:
        raise InvalidArgument("sampling.max_tokens", f"must be in [1, {limits.max_tokens}], got {max_tokens}")
    stop = tuple(message.stop) if message.stop else defaults.stop
    if len(stop) > limits.max_stop_sequences:
        raise InvalidArgument(
            "sampling.stop", f"{len(stop)} stop sequences, over the limit of {limits.max_stop_sequences}"
        )
    for i, sequence in enumerate(stop):
        if not sequence:
            raise InvalidArgument(f"sampling.stop[{i}]", "must not be empty")
        if len(sequence) > limits.max_stop_chars:
            raise InvalidArgument(
                f"sampling.stop[{i}]", f"{len(sequence)} characters, over the limit of {limits.max_stop_chars}"
            )
    seed = values.get("seed", defaults.seed)
    return SamplingParams(float(temperature), float(top_p), int(top_k), int(max_tokens), stop, seed)


def parse_generate(
    request: pb.GenerateRequest,
    objective_names: tuple[str, ...],
    default_weights: Mapping[str, float],
    default_sampling: SamplingParams,
    limits: Limits,
    *,
    vectors: Mapping[str, VectorInfo] = MappingProxyType({}),
    template: bool = False,
) -> ParsedGenerate:
    """A request's strategy, parameters, prompt, sampling and weights, validated. An experiment
    arm's `template` has no prompt of its own. `vectors`: the preference vectors the policy has, by name."""
    check_text("prompt", request.prompt, limits.max_prompt_chars, required=not template)
    check_text("system_prompt", request.system_prompt, limits.max_prompt_chars, required=False)
    history = parse_history(request, limits)

    chosen = request.WhichOneof("params")
    name = requested_strategy(request)
    if chosen is not None and request.strategy and chosen != request.strategy:
        raise InvalidArgument("params", f"parameters for {chosen!r} given with strategy {request.strategy!r}")
    strategy = get_strategy(name)
    given = {f.name: _plain(v) for f, v in getattr(request, chosen).ListFields()} if chosen else {}
    params = validate_params(name, strategy.Params, given, limits)

    weights = parse_weights(dict(request.weights), objective_names, default_weights)
    return ParsedGenerate(
        strategy=strategy,
        params=strategy.resolve_params(params, weights, vectors),
        prompt=ChatPrompt(request.prompt, request.system_prompt or None, request.raw_prompt, history),
        sampling=dataclasses.replace(
            parse_sampling(request.sampling, strategy.default_sampling(default_sampling), limits),
            steering=parse_steering(dict(request.preference_vectors), vectors, limits),
        ),
        weights=weights,
        return_candidates=request.return_candidates,
    )


def parse_steering(strengths: Mapping[str, float], vectors: Collection[str], limits: Limits) -> Steering:
    """Preference-vector strengths, checked: known vectors, finite, within the limit."""
    bound = limits.max_vector_strength
    for name, eta in strengths.items():
        field = f"preference_vectors[{name}]"
        if name not in vectors:
            raise InvalidArgument(field, f"unknown preference vector; available: {sorted(vectors)}")
        if not math.isfinite(eta):
            raise InvalidArgument(field, f"must be finite, got {eta}")
        if abs(eta) > bound:
            raise InvalidArgument(field, f"{eta:g} is outside [-{bound:g}, {bound:g}] (limits.max_vector_strength)")
    return steering_of(dict(strengths))


CHAT_ROLES = ("user", "assistant")


def parse_history(request: pb.GenerateRequest, limits: Limits) -> tuple[tuple[str, str], ...]:
    """The earlier turns of a conversation, checked: known roles, and the whole conversation
    within max_prompt_chars."""
    if not request.history:
        return ()
    if request.raw_prompt:
        raise InvalidArgument("history", "a raw prompt has no chat template to render a conversation with")
    for i, turn in enumerate(request.history):
        if turn.role not in CHAT_ROLES:
            raise InvalidArgument(f"history[{i}].role", f"must be one of {list(CHAT_ROLES)}, got {turn.role!r}")
    total = len(request.prompt) + sum(len(turn.content) for turn in request.history)
    if total > limits.max_prompt_chars:
        raise InvalidArgument(
            "history", f"the conversation has {total} characters, over the limit of {limits.max_prompt_chars}"
        )
    return tuple((turn.role, turn.content) for turn in request.history)


def _plain(value: Any) -> Any:
    """Repeated and map fields as a list and a dict; scalars unchanged."""
    if hasattr(value, "items"):
        return dict(value.items())
    if hasattr(value, "__len__") and not isinstance(value, (str, bytes)):
        return list(value)
    return value


def candidate_message(names: tuple[str, ...], candidate: ScoredCandidate) -> pb.Candidate:
    c = candidate.completion
    return pb.Candidate(
        text=c.text,
        token_ids=c.token_ids,
        finish_reason=c.finish_reason.value,
        # NaN marks an objective that was not estimated (zero weight): leave it out.
        rewards={n: float(v) for n, v in zip(names, candidate.rewards) if not math.isnan(v)},
        weighted_score=candidate.weighted_score,
        logprob=c.logprob,
        selected=candidate.selected,
    )


def result_message(
    result: DecodeResult,
    request_id: str,
    strategy: str,
    model: str,
    weights: PreferenceWeights,
    steering: Steering = (),
) -> pb.GenerateResponse:
    u = result.usage
    # A steered request's pi_ref is the steered model: its KL figures say so.
    against = (
        " (pi_ref: the model steered by preference vectors "
        + ", ".join(f"{name}={eta:g}" for name, eta in steering)
        + ")"
        if steering
        else ""
    )
    return pb.GenerateResponse(
        request_id=request_id,
        strategy=strategy,
        text=result.text,
        token_ids=result.token_ids,
        finish_reason=result.finish_reason,
        rewards=result.rewards,
        weighted_score=result.weighted_score,
        weights=weights.as_dict(),
        kl=[
            pb.KLEstimate(name=k.name, kind=_KL_KINDS[k.kind], nats=k.nats, description=k.description + against)
            for k in result.kl
        ],
        candidates=[candidate_message(weights.names, c) for c in result.candidates],
        usage=pb.Usage(**dataclasses.asdict(u)),
        model=model,
        details=result.details,
        preference_vectors=dict(steering),
    )


def progress_message(names: tuple[str, ...], event: ProgressEvent) -> pb.GenerateEvent:
    return pb.GenerateEvent(
        progress=pb.Progress(
            phase=event.phase,
            step=event.step,
            message=event.message,
            elapsed_seconds=event.elapsed_seconds,
            candidates=[candidate_message(names, c) for c in event.candidates],
            weights=event.weights,
            worst_objective=event.worst_objective,
            worst_value=event.worst_value,
            instructions=event.instructions,
        )
    )


def parameter_message(description: ParamDescription) -> pb.ParameterInfo:
    message = pb.ParameterInfo(
        name=description.name,
        type=description.type,
        default_value=_default_text(description.default),
        description=description.help,
        choices=list(description.choices or ()),
    )
    if description.min is not None:
        message.min_value = float(description.min)
    if description.max is not None:
        message.max_value = float(description.max)
    return message


def _default_text(default: Any) -> str:
    if isinstance(default, (tuple, list)):
        return ",".join(default)
    if isinstance(default, dict):
        return ",".join(f"{k}:{v:g}" for k, v in default.items())
    return str(default)
