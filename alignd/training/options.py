"""Command-line options generated from a config dataclass (field help text in metadata)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Config = TypeVar("Config", bound="DataclassInstance")


def option(default: Any, help: str) -> Any:
    # Any: like dataclasses.field, the result stands for the field's value (`steps: int = option(8, "...")`).
    return dataclasses.field(default=default, metadata={"help": help})


def add_options(parser: argparse.ArgumentParser, config_cls: type) -> None:
    for field in dataclasses.fields(config_cls):
        if field.default is dataclasses.MISSING:
            raise TypeError(f"{config_cls.__name__}.{field.name} has no default: declare it with option()")
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        flag = "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        elif kind.startswith("tuple"):
            parser.add_argument(flag, nargs="+", default=list(field.default), help=help_text)
        else:
            cast = {"int": int, "float": float}.get(kind, str)
            parser.add_argument(flag, type=cast, default=field.default, help=help_text)


def config_from(args: argparse.Namespace, config_cls: type[Config]) -> Config:
    values = {}
    for field in dataclasses.fields(config_cls):
        value = getattr(args, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return config_cls(**values)
