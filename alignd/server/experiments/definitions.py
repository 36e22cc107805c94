"""Experiments and arms: validation, deterministic assignment, and serving a request by its arm.

An arm is a template `GenerateRequest` (strategy, params, weights, sampling, system prompt,
preference-vector strengths); a request that names the experiment brings the prompt and may fill
what the arm leaves unset, never override what it sets (that would silently change what the arm
measures).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from alignd.errors import FailedPrecondition, InvalidArgument
from alignd.server.request_fields import requested_strategy
from alignd.v1 import alignd_pb2 as pb

NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,100}")
MAX_SUBJECT_CHARS = 256
SPLIT_TOLERANCE = 1e-6
# Fields an arm may set (besides its strategy's params); everything else belongs to the request.
ARM_FIELDS = ("strategy", "weights", "sampling", "system_prompt", "preference_vectors")
# Keys of an arm's table in the TOML config.
CONFIG_ARM_KEYS = ("name", "split", "params", *ARM_FIELDS)


@dataclass(frozen=True)
class ArmSpec:
    name: str
    split: float
    request: pb.GenerateRequest  # the template: strategy, params, weights, sampling, system prompt

    @property
    def strategy(self) -> str:
        return requested_strategy(self.request)


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    description: str
    arms: tuple[ArmSpec, ...]
    source: str  # "config" or "rpc"
    created_unix: float = 0.0

    def arm_for(self, subject: str) -> ArmSpec:
        return assign(self.arms, assignment_point(self.name, subject))

    def arm(self, name: str) -> ArmSpec | None:
        return next((a for a in self.arms if a.name == name), None)

    def to_message(self) -> pb.Experiment:
        return pb.Experiment(
            name=self.name,
            description=self.description,
            source=self.source,
            created_unix=self.created_unix,
            arms=[pb.Arm(name=a.name, split=a.split, request=a.request) for a in self.arms],
        )


def assignment_point(experiment: str, subject: str) -> float:
    """A uniform point in [0, 1) fixed by (experiment, subject): SHA-256, not Python's hash(), so it
    is the same in every process, replica and restart."""
    digest = hashlib.sha256(f"{experiment}\x00{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign(arms: tuple[ArmSpec, ...], point: float) -> ArmSpec:
    """The arm whose slice of [0, 1) (cumulative splits, in arm order) contains `point`."""
    cumulative = 0.0
    for arm in arms:
        cumulative += arm.split
        if point < cumulative and arm.split > 0:
            return arm
    # Splits sum to 1 within rounding: a point above the last boundary goes to the last open arm.
    return next(a for a in reversed(arms) if a.split > 0)


def validate_experiment(
    message: pb.Experiment,
    check_arm: Callable[[pb.GenerateRequest], None],
    source: str,
    created_unix: float = 0.0,
) -> ExperimentSpec:
    """Check names, splits and every arm's template. `check_arm(request)` validates a template as a
    request (the server's parse_generate with a placeholder prompt) and raises InvalidArgument.

    Errors name the field (``arms[1].request.best_of_n.n``) and the arm."""
    if not NAME_PATTERN.fullmatch(message.name):
        raise InvalidArgument("name", f"{message.name!r}: use 1 to 100 letters, digits, '.', '_' or '-'")
    if len(message.arms) < 2:
        raise InvalidArgument("arms", f"an experiment needs at least two arms, got {len(message.arms)}")
    seen: set[str] = set()
    for i, arm in enumerate(message.arms):
        label = f"arms[{i}]"
        if not NAME_PATTERN.fullmatch(arm.name):
            raise InvalidArgument(f"{label}.name", f"{arm.name!r}: use 1 to 100 letters, digits, '.', '_' or '-'")
        if arm.name in seen:
            raise InvalidArgument(f"{label}.name", f"duplicate arm name {arm.name!r}")
        seen.add(arm.name)
        if not math.isfinite(arm.split) or arm.split < 0:
            raise InvalidArgument(f"{label}.split", f"arm {arm.name!r}: must be a finite share >= 0, got {arm.split}")
        extra = sorted(
            f.name for f, _ in arm.request.ListFields() if f.name not in ARM_FIELDS and f.containing_oneof is None
        )
        if extra:
            raise InvalidArgument(
                f"{label}.request.{extra[0]}",
                f"arm {arm.name!r}: an arm sets only strategy, params, weights, sampling, "
                "system_prompt and preference_vectors; the request brings the rest",
            )
        try:
            check_arm(arm.request)
        except InvalidArgument as error:
            raise InvalidArgument(f"{label}.request.{error.field}", f"arm {arm.name!r}: {error.problem}") from None
        except FailedPrecondition as error:  # e.g. value heads this server has not loaded
            raise FailedPrecondition(f"{label}: arm {arm.name!r}: {error}") from None
    total = sum(arm.split for arm in message.arms)
    if abs(total - 1.0) > SPLIT_TOLERANCE:
        raise InvalidArgument("arms", f"the splits sum to {total:g}; they must sum to 1")
    return ExperimentSpec(
        name=message.name,
        description=message.description,
        source=source,
        created_unix=created_unix,
        arms=tuple(ArmSpec(a.name, a.split, _copy(a.request)) for a in message.arms),
    )


def experiment_from_config(table: dict[str, Any]) -> pb.Experiment:
    """An [[experiments]] table of the TOML config as a message. Arm keys: name, split, strategy,
    params (a table), weights, sampling, system_prompt. Errors name the arm."""
    if not isinstance(table, dict):
        raise InvalidArgument("", "must be a table")
    known = {"name", "description", "arms"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise InvalidArgument(unknown[0], f"unknown setting; known: {sorted(known)}")
    arms = table.get("arms", [])
    if not isinstance(arms, list):
        raise InvalidArgument("arms", "must be a list of tables ([[experiments.arms]])")
    message = pb.Experiment(name=str(table.get("name", "")), description=str(table.get("description", "")))
    for i, arm in enumerate(arms):
        message.arms.append(_arm_from_config(arm, f"arms[{i}]"))
    return message


def _arm_from_config(arm: Any, label: str) -> pb.Arm:
    if not isinstance(arm, dict):
        raise InvalidArgument(label, "must be a table")
    name = str(arm.get("name", ""))
    unknown = sorted(set(arm) - set(CONFIG_ARM_KEYS))
    if unknown:
        raise InvalidArgument(
            f"{label}.{unknown[0]}", f"arm {name!r}: unknown setting; known: {sorted(CONFIG_ARM_KEYS)}"
        )
    strategy = str(arm.get("strategy", "sample"))
    body: dict[str, Any] = {"strategy": strategy}
    for key in ARM_FIELDS[1:]:
        if key in arm:
            body[key if key != "system_prompt" else "systemPrompt"] = arm[key]
    params = arm.get("params", {})
    oneof = {f.name for f in pb.GenerateRequest.DESCRIPTOR.oneofs_by_name["params"].fields}
    if params and strategy not in oneof:
        raise InvalidArgument(f"{label}.params", f"arm {name!r}: strategy {strategy!r} takes no parameters")
    if strategy in oneof:
        if not isinstance(params, dict):
            raise InvalidArgument(f"{label}.params", f"arm {name!r}: must be a table")
        known_params = {f.name for f in getattr(pb.GenerateRequest(), strategy).DESCRIPTOR.fields}
        for key in params:
            if key not in known_params:
                raise InvalidArgument(
                    f"{label}.{strategy}.{key}", f"arm {name!r}: unknown parameter; known: {sorted(known_params)}"
                )
        body[strategy] = params
    request = pb.GenerateRequest()
    try:
        json_format.ParseDict(body, request)
    except json_format.ParseError as error:
        problem = " ".join(str(error).split())  # one line: protobuf's messages span several
        raise InvalidArgument(label, f"arm {name!r}: {problem}") from None
    split = arm.get("split")
    if not isinstance(split, (int, float)) or isinstance(split, bool):
        raise InvalidArgument(f"{label}.split", f"arm {name!r}: a number is required, got {split!r}")
    return pb.Arm(name=name, split=float(split), request=request)


def serve_by_arm(experiment: ExperimentSpec, arm: ArmSpec, request: pb.GenerateRequest) -> pb.GenerateRequest:
    """The request the arm serves: the arm's template plus the request's own fields.

    Setting what the arm sets is refused (INVALID_ARGUMENT naming the field), never overridden."""
    where = f"experiment {experiment.name!r} (arm {arm.name!r})"
    if request.strategy or request.WhichOneof("params"):
        raise InvalidArgument("strategy", f"{where} chooses the strategy and its parameters; leave them unset")
    merged = pb.GenerateRequest()
    merged.CopyFrom(arm.request)
    merged.prompt = request.prompt
    merged.history.extend(request.history)
    merged.raw_prompt = request.raw_prompt
    merged.return_candidates = request.return_candidates
    merged.request_id = request.request_id
    if request.system_prompt:
        if arm.request.system_prompt:
            raise InvalidArgument("system_prompt", f"{where} sets the system prompt")
        merged.system_prompt = request.system_prompt
    if request.weights:
        if arm.request.weights:
            raise InvalidArgument("weights", f"{where} sets the weights")
        merged.weights.update(request.weights)
    if request.preference_vectors:
        if arm.request.preference_vectors:
            raise InvalidArgument("preference_vectors", f"{where} sets the preference vectors")
        merged.preference_vectors.update(request.preference_vectors)
    for field, value in request.sampling.ListFields():
        if field.name == "stop":
            if arm.request.sampling.stop:
                raise InvalidArgument("sampling.stop", f"{where} sets the stop sequences")
            merged.sampling.stop.extend(value)
        elif arm.request.sampling.HasField(field.name):
            raise InvalidArgument(f"sampling.{field.name}", f"{where} sets it")
        else:
            setattr(merged.sampling, field.name, value)
    return merged


def check_subject(subject: str) -> None:
    if not subject.strip():
        raise InvalidArgument("subject", "required with experiment: a stable id of the user")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise InvalidArgument("subject", f"{len(subject)} characters, over the limit of {MAX_SUBJECT_CHARS}")
    check_storable("subject", subject)


def check_storable(field: str, text: str) -> None:
    """Text the store keeps must be storable in both databases: PostgreSQL's text has no NUL."""
    if "\x00" in text:
        raise InvalidArgument(field, "must not contain NUL characters")


def _copy(request: pb.GenerateRequest) -> pb.GenerateRequest:
    copy = pb.GenerateRequest()
    copy.CopyFrom(request)
    return copy
