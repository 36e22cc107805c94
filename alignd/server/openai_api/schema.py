"""The OpenAI-style request bodies (validated by pydantic), their translation to a GenerateRequest
for the server core, and the core's answers back to the OpenAI JSON shapes.

Field names in errors are the body's: the core names `sampling.max_tokens`, the client sent
`max_tokens` (`http_field` maps one to the other)."""

from __future__ import annotations

import math
import re
from typing import Any, Literal, TypeVar

from google.protobuf import json_format
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from alignd.errors import InvalidArgument
from alignd.v1 import alignd_pb2 as pb

_STRICT = ConfigDict(strict=True, extra="forbid")
STRATEGY_PARAMS: dict[str, Any] = {
    f.name: f.message_type for f in pb.GenerateRequest.DESCRIPTOR.oneofs_by_name["params"].fields
}


class AligndOptions(BaseModel):
    """The `alignd` object of a request body (the SDKs send it through `extra_body`)."""

    model_config = _STRICT
    strategy: str = ""
    params: dict[str, Any] = Field(default_factory=dict)
    weights: dict[str, float] = Field(default_factory=dict)
    preference_vectors: dict[str, float] = Field(default_factory=dict)  # eta per vector name
    experiment: str = ""
    subject: str = ""  # default: the body's `user`
    return_candidates: bool = False
    request_id: str = ""
    system_prompt: str = ""  # completions only: chat requests put it in `messages`


class StreamOptions(BaseModel):
    model_config = _STRICT
    include_usage: bool = False


class TextPart(BaseModel):
    model_config = _STRICT
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


# Fields of the OpenAI API that alignd accepts only at their neutral value (what they would do is
# not built): the value each may take.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None, False, True),
    "response_format": (None, {"type": "text"}),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "store": (None, False),
    "metadata": (None, {}),
}


class _GenerateBody(BaseModel):
    model_config = _STRICT
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not in OpenAI's API; vLLM's servers take it too
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None  # null or absent: 1
    user: str | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    alignd: AligndOptions = Field(default_factory=AligndOptions)
    # Neutral-only fields (_NEUTRAL), typed loosely: any other value is refused with a reason.
    frequency_penalty: Any = None
    presence_penalty: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    logit_bias: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    response_format: Any = None
    store: Any = None
    metadata: Any = None


class ChatBody(_GenerateBody):
    messages: list[Message]
    max_completion_tokens: int | None = None


class CompletionBody(_GenerateBody):
    prompt: str | list[str]
    echo: Any = None
    suffix: Any = None
    best_of: Any = None


class FeedbackBody(BaseModel):
    """POST /v1/alignd/feedback: the fields of RecordFeedback."""

    model_config = _STRICT
    request_id: str
    thumbs_up: bool | None = None
    rating: float | None = None
    preferred_over: str | None = None
    key: str = ""


Body = TypeVar("Body", bound=BaseModel)


class BodyError(InvalidArgument):
    """A body field of the wrong type or name: already named as the body names it."""


# pydantic's error locations name the member of a union that failed ("str", "list[TextPart]").
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|list|dict)(\[.*\])?$|^function-")


def parse_body(kind: type[Body], data: Any) -> Body:
    """The body as `kind`, or BodyError naming the wrong field (of a union, the member that got
    furthest: an image part in `content` is reported as its `type`, not as "not a string")."""
    try:
        return kind.model_validate(data)
    except ValidationError as error:
        deepest = max(error.errors(), key=lambda e: len(e["loc"]))
        parts = [p for p in deepest["loc"] if not (isinstance(p, str) and _UNION_MEMBER.match(p))]
        field = re.sub(r"\.(\d+)", r"[\1]", ".".join(str(p) for p in parts)) or "body"
        problem = "unknown field" if deepest["type"] == "extra_forbidden" else deepest["msg"]
        raise BodyError(field, problem[0].lower() + problem[1:]) from None


def renamed_fields(body: ChatBody | CompletionBody) -> dict[str, str]:
    """Core fields this body gave under another name than the usual one."""
    renames = {}
    if isinstance(body, ChatBody) and body.max_completion_tokens is not None:
        renames["sampling.max_tokens"] = "max_completion_tokens"
    if body.alignd.subject:
        renames["subject"] = "alignd.subject"
    return renames


def generate_request(body: ChatBody | CompletionBody) -> pb.GenerateRequest:
    """The GenerateRequest the core decodes for an OpenAI body (one choice of it)."""
    try:
        return _generate_request(body)
    except InvalidArgument:
        raise
    except ValueError as error:  # protobuf refuses text that is not valid UTF-8 (lone surrogates)
        raise InvalidArgument("body", f"cannot be read as text: {error}") from None


def _generate_request(body: ChatBody | CompletionBody) -> pb.GenerateRequest:
    for name, allowed in _NEUTRAL.items():
        value = getattr(body, name, None)
        if value is not None and not any(value == a and type(value) is type(a) for a in allowed):
            raise InvalidArgument(name, f"not supported by alignd (got {value!r}); leave it out")
    options = body.alignd
    request = pb.GenerateRequest(
        strategy=options.strategy,
        weights=options.weights,
        preference_vectors=options.preference_vectors,
        return_candidates=options.return_candidates,
        request_id=options.request_id,
        experiment=options.experiment,
        subject=options.subject or (body.user or "" if options.experiment else ""),
    )
    max_tokens, max_tokens_name = body.max_tokens, "max_tokens"
    if isinstance(body, ChatBody):
        if options.system_prompt:
            raise InvalidArgument("alignd.system_prompt", "chat requests give it as a system message in `messages`")
        request.system_prompt, history, request.prompt = _conversation(body.messages)
        request.history.extend(pb.ChatTurn(role=role, content=content) for role, content in history)
        if body.max_completion_tokens is not None:
            max_tokens, max_tokens_name = body.max_completion_tokens, "max_completion_tokens"
    else:
        if isinstance(body.prompt, list):
            if len(body.prompt) != 1:
                raise InvalidArgument("prompt", f"one prompt per request, got {len(body.prompt)}")
            request.prompt = body.prompt[0]
        else:
            request.prompt = body.prompt
        request.system_prompt = options.system_prompt
        request.raw_prompt = not options.system_prompt  # a completion continues the text as given
    _sampling(request.sampling, body, max_tokens, max_tokens_name)
    if options.params:
        _strategy_params(request, options.strategy, options.params)
    return request


def _conversation(messages: list[Message]) -> tuple[str, list[tuple[str, str]], str]:
    """(system prompt, earlier turns, last user message): the leading system/developer messages
    joined, then user and assistant turns ending with the user's."""
    if not messages:
        raise InvalidArgument("messages", "at least one message is required")
    leading = 0
    while leading < len(messages) and messages[leading].role in ("system", "developer"):
        leading += 1
    system = "\n\n".join(m.text() for m in messages[:leading])
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages[leading:], leading):
        if message.role not in ("user", "assistant"):
            where = "tool results are not supported" if message.role == "tool" else "system messages come first"
            raise InvalidArgument(f"messages[{i}]", f"a {message.role!r} message here: {where}")
        turns.append((message.role, message.text()))
    if not turns or turns[-1][0] != "user":
        raise InvalidArgument(f"messages[{len(messages) - 1}]", "the last message must be the user's")
    return system, turns[:-1], turns[-1][1]


def _sampling(sampling: pb.SamplingParams, body: _GenerateBody, max_tokens: int | None, max_tokens_name: str) -> None:
    """The body's sampling fields, range-checked where protobuf would overflow (the core checks
    the rest against the server's limits)."""
    for name, value in (("temperature", body.temperature), ("top_p", body.top_p)):
        if value is not None:
            if not math.isfinite(value):
                raise InvalidArgument(name, f"must be finite, got {value}")
            setattr(sampling, name, value)
    if body.top_k is not None:
        if not 0 <= body.top_k < 2**31:
            raise InvalidArgument("top_k", f"out of range: {body.top_k}")
        sampling.top_k = body.top_k
    if max_tokens is not None:
        if not 0 <= max_tokens < 2**31:
            raise InvalidArgument(max_tokens_name, f"out of range: {max_tokens}")
        sampling.max_tokens = max_tokens
    if body.seed is not None:
        if not -(2**63) <= body.seed < 2**64:
            raise InvalidArgument("seed", f"must fit 64 bits, got {body.seed}")
        sampling.seed = body.seed % 2**64  # OpenAI's seeds are signed; the same bits seed alignd
    if body.stop is not None:
        sampling.stop.extend([body.stop] if isinstance(body.stop, str) else body.stop)


def _strategy_params(request: pb.GenerateRequest, strategy: str, params: dict[str, Any]) -> None:
    if not strategy:
        raise InvalidArgument("alignd.params", "name the strategy they are for in alignd.strategy")
    if strategy not in STRATEGY_PARAMS:
        return  # the core names the unknown strategy
    known = {f.name for f in STRATEGY_PARAMS[strategy].fields}
    message = getattr(request, strategy)
    for key, value in params.items():
        if key not in known:
            raise InvalidArgument(f"alignd.params.{key}", f"unknown parameter of {strategy}; known: {sorted(known)}")
        try:  # one key at a time, so that a wrong type is reported under its own name
            json_format.ParseDict({key: value}, message)
        except json_format.ParseError as error:
            problem = str(error).splitlines()[0]
            raise InvalidArgument(f"alignd.params.{key}", f"wrong type of value: {problem}") from None
    message.SetInParent()  # a strategy named with parameters at their defaults still selects it


# Core field names (GenerateRequest paths) -> body field names, by first path segment.
_CHAT_FIELDS = {"prompt": "messages", "system_prompt": "messages", "history": "messages"}
_COMPLETION_FIELDS = {"system_prompt": "alignd.system_prompt"}
_FIELDS = {
    "strategy": "alignd.strategy",
    "params": "alignd.params",
    "weights": "alignd.weights",
    "preference_vectors": "alignd.preference_vectors",
    "experiment": "alignd.experiment",
    "subject": "user",
    "request_id": "alignd.request_id",
}


def http_field(field: str, *, chat: bool) -> str:
    """The body's name for a field the core named."""
    head, _, rest = field.partition(".")
    if head == "sampling":
        return rest
    if head in STRATEGY_PARAMS:
        return f"alignd.params.{rest}" if rest else "alignd.params"
    table = _CHAT_FIELDS if chat else _COMPLETION_FIELDS
    name = head.split("[")[0]
    if name in table:
        return table[name]
    if name in _FIELDS:
        return _FIELDS[name] + field[len(name) :]
    return field


def result_json(response: pb.GenerateResponse) -> dict[str, Any]:
    """The `alignd` object of an answer: what steering did and what it cost."""
    u = response.usage
    out: dict[str, Any] = {
        "request_id": response.request_id,
        "strategy": response.strategy,
        "rewards": dict(response.rewards),
        "weighted_score": response.weighted_score,
        "weights": dict(response.weights),
        "preference_vectors": dict(response.preference_vectors),
        "kl": [
            {
                "name": k.name,
                "kind": pb.KLEstimate.Kind.Name(k.kind).lower(),
                "nats": k.nats,
                "description": k.description,
            }
            for k in response.kl
        ],
        "usage": {
            "prompt_tokens": u.prompt_tokens,
            "generated_tokens": u.generated_tokens,
            "lm_forward_tokens": u.lm_forward_tokens,
            "scorer_calls": u.scorer_calls,
            "scored_texts": u.scored_texts,
            "wall_seconds": u.wall_seconds,
            "phase_seconds": dict(u.phase_seconds),
        },
        "details": dict(response.details),
        "experiment": response.experiment,
        "arm": response.arm,
    }
    if response.candidates:
        out["candidates"] = [candidate_json(c) for c in response.candidates]
    return out


def candidate_json(candidate: pb.Candidate) -> dict[str, Any]:
    return {
        "text": candidate.text,
        "finish_reason": candidate.finish_reason,
        "rewards": dict(candidate.rewards),
        "weighted_score": candidate.weighted_score,
        "logprob": candidate.logprob,
        "selected": candidate.selected,
    }


def progress_json(progress: pb.Progress) -> dict[str, Any]:
    """Steering progress for a stream chunk's `alignd` object."""
    out: dict[str, Any] = {
        "phase": progress.phase,
        "step": progress.step,
        "message": progress.message,
        "elapsed_seconds": progress.elapsed_seconds,
    }
    if progress.candidates:
        out["candidates"] = [candidate_json(c) for c in progress.candidates]
    if progress.weights:
        out["weights"] = dict(progress.weights)
    if progress.worst_objective:
        out["worst_objective"], out["worst_value"] = progress.worst_objective, progress.worst_value
    if progress.instructions:
        out["instructions"] = list(progress.instructions)
    return out


def usage_json(responses: list[pb.GenerateResponse]) -> dict[str, int]:
    """OpenAI's usage: the prompt once, the tokens of the returned answers (every candidate drawn
    is in alignd.usage.generated_tokens)."""
    prompt = responses[0].usage.prompt_tokens if responses else 0
    completion = sum(len(r.token_ids) for r in responses)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
