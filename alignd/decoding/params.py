"""Typed, validated strategy parameters with documented defaults.

Each strategy declares a frozen dataclass whose fields are made with `param(...)`: a default, a
help text, bounds, and optionally the name of a server limit (`Limits`) that caps it. The server
validates a request's parameters with `validate_params` and describes them in GetServerInfo with
`describe_params`, so the two can never disagree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from alignd.errors import InvalidArgument


@dataclass(frozen=True)
class Limits:
    """Per-request limits from the server's configuration."""

    max_prompt_chars: int = 16_000
    max_prompt_tokens: int = 4096  # the encoded prompt (chat template and history included)
    max_tokens: int = 1024
    max_candidates: int = 64
    max_stop_sequences: int = 8
    max_stop_chars: int = 64
    max_score_responses: int = 256
    # Rows decoded at once x (prompt + max_tokens) tokens: bounds KV-cache memory per request
    # (SmolLM2-135M float32 needs about 46 KB per token per row).
    max_batch_tokens: int = 65_536
    # |eta| of each preference vector a request may ask for (the vectors were trained as +-1).
    max_vector_strength: float = 2.0


def param(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    limit: str | None = None,
    above: float | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A strategy parameter: `limit` names a `Limits` field that caps the value at request time;
    `above` is an exclusive lower bound; `choices` lists the allowed strings. Lists are tuples of
    strings and maps are dicts of numbers (`min`/`max` bound their entries)."""
    metadata = {"help": help, "min": min, "max": max, "limit": limit, "above": above, "choices": choices}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# Annotation of a parameter -> the type name clients see in GetServerInfo.
_TYPE_NAMES = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "str",
    "tuple[str, ...]": "list[str]",
    "dict[str, float]": "map[str,float]",
}


def type_name(field: dataclasses.Field) -> str:
    annotation = field.type if isinstance(field.type, str) else field.type.__name__
    return _TYPE_NAMES[annotation]


def _default(field: dataclasses.Field) -> Any:
    if field.default is dataclasses.MISSING and field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@dataclass(frozen=True)
class ParamDescription:
    name: str
    type: str
    default: Any
    help: str
    min: float | None
    max: float | None
    choices: tuple[str, ...] | None = None


def _upper_bound(field: dataclasses.Field, limits: Limits) -> float | None:
    bound = field.metadata.get("max")
    limit = field.metadata.get("limit")
    if limit is not None:
        cap = getattr(limits, limit)
        bound = cap if bound is None else min(bound, cap)
    return bound


def describe_params(params_cls: type, limits: Limits) -> list[ParamDescription]:
    return [
        ParamDescription(
            name=f.name,
            type=type_name(f),
            default=_default(f),
            help=f.metadata.get("help", ""),
            min=f.metadata.get("min") if f.metadata.get("above") is None else f.metadata["above"],
            max=_upper_bound(f, limits),
            choices=f.metadata.get("choices"),
        )
        for f in dataclasses.fields(params_cls)
    ]


def validate_params(strategy: str, params_cls: type, values: dict[str, Any], limits: Limits) -> Any:
    """Build `params_cls` from the set values, checking types and bounds.

    Raises InvalidArgument naming the field as `<strategy>.<param>`.
    """
    fields = {f.name: f for f in dataclasses.fields(params_cls)}
    for name in values:
        if name not in fields:
            raise InvalidArgument(f"{strategy}.{name}", f"unknown parameter; known: {sorted(fields)}")
    for name, value in values.items():
        field = fields[name]
        label = f"{strategy}.{name}"
        kind = type_name(field)
        if kind == "list[str]":
            values[name] = _string_list(label, value)
            continue
        if kind == "map[str,float]":
            values[name] = _number_map(label, value, field.metadata.get("min"), field.metadata.get("max"))
            continue
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    values[name] = value = int(value)
                else:
                    raise InvalidArgument(label, f"must be an integer, got {value!r}")
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgument(label, f"must be a number, got {value!r}")
            if not math.isfinite(value):
                raise InvalidArgument(label, f"must be finite, got {value!r}")
            values[name] = value = float(value)
        elif kind == "bool" and not isinstance(value, bool):
            raise InvalidArgument(label, f"must be true or false, got {value!r}")
        elif kind == "str":
            choices = field.metadata.get("choices")
            if choices and value not in choices:
                raise InvalidArgument(label, f"must be one of {list(choices)}, got {value!r}")
            if not isinstance(value, str):
                raise InvalidArgument(label, f"must be a string, got {value!r}")
            # For free text, min and max bound the length in characters.
            low, high = field.metadata.get("min"), _upper_bound(field, limits)
            if low is not None and len(value.strip()) < low:
                raise InvalidArgument(label, "must not be empty" if low == 1 else f"needs at least {low:g} characters")
            if high is not None and len(value) > high:
                raise InvalidArgument(label, f"{len(value)} characters, over the limit of {high:g}")
            continue
        above = field.metadata.get("above")
        if above is not None and not value > above:
            raise InvalidArgument(label, f"must be > {above:g}, got {value}")
        low, high = field.metadata.get("min"), _upper_bound(field, limits)
        if low is not None and value < low:
            raise InvalidArgument(label, f"must be >= {low:g}, got {value}")
        if high is not None and value > high:
            raise InvalidArgument(label, f"must be <= {high:g} (server limit), got {value}")
    return params_cls(**values)


def _string_list(label: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidArgument(label, f"must be a list of names, got {value!r}")
    items = tuple(value)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise InvalidArgument(f"{label}[{i}]", f"must be a non-empty name, got {item!r}")
        if item in items[:i]:
            raise InvalidArgument(f"{label}[{i}]", f"{item!r} is listed twice")
    return items


def _number_map(label: str, value: Any, low: float | None, high: float | None) -> dict[str, float]:
    if not isinstance(value, dict):
        raise InvalidArgument(label, f"must be a map of names to numbers, got {value!r}")
    checked = {}
    for key, number in value.items():
        entry = f"{label}[{key}]"
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise InvalidArgument(entry, f"must be a finite number, got {number!r}")
        if (low is not None and number < low) or (high is not None and number > high):
            lowest = f"{low:g}" if low is not None else "-inf"
            highest = f"{high:g}" if high is not None else "inf"
            raise InvalidArgument(entry, f"must be in [{lowest}, {highest}], got {number}")
        checked[key] = float(number)
    return checked
