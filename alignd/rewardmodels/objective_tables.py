"""The server's objectives from its config: built-ins, reward models, and users' Python objectives.

`objectives` in the config is a list whose entries are built-in names or tables::

    [[objectives]]
    name = "relevance"                    # kind = "builtin" (the default): one of the built-ins

    [[objectives]]
    name = "helpful"
    kind = "sequence_classification"      # a transformers reward-model checkpoint
    path = "/models/my-reward-model"      # a local folder (or a hub id where there is network)
    output = 0                            # output index or label name (optional for one output)
    transform = "sigmoid"                 # raw | sigmoid | standardise (with mean/std)
    runner = "engine"                     # or "vllm": vLLM's pooling runner

    [[objectives]]
    name = "mine"
    kind = "python"
    entry_point = "my_scorer"             # in the `alignd.objectives` entry-point group
    options = { threshold = 0.5 }         # keyword arguments for the factory

Checks run in two steps: `parse_objectives` (the tables alone) and `resolve_objectives` (reads
each checkpoint's config.json and imports entry points, but loads no weights), both before the
policy loads; `load_objectives` then loads the models. Every problem is one ConfigError naming
the table and key, e.g. ``objectives[2].output: unknown label 'tone'; labels: [...]``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np

from alignd.config import ConfigError
from alignd.rewardmodels.base import Objective, ObjectiveInfo
from alignd.rewardmodels.engine import ScoringEngine
from alignd.rewardmodels.sequence_classification import (
    DEFAULT_MAX_LENGTH,
    DTYPES,
    METADATA_KEY,
    TEMPLATES,
    TRANSFORMS,
    ModelOutputObjective,
    RewardModel,
    ScoringError,
    SequenceClassifier,
    Transform,
    check_finite,
    output_labels,
    read_checkpoint_config,
    score_statistics,
)

ENTRY_POINT_GROUP = "alignd.objectives"
BUILTIN = "builtin"
SEQUENCE_CLASSIFICATION = "sequence_classification"
PYTHON = "python"
KINDS = (BUILTIN, SEQUENCE_CLASSIFICATION, PYTHON)
RUNNERS = ("engine", "vllm")

_KEYS = {
    BUILTIN: {"name", "kind"},
    SEQUENCE_CLASSIFICATION: {
        "name",
        "kind",
        "path",
        "output",
        "transform",
        "mean",
        "std",
        "max_length",
        "dtype",
        "device",
        "template",
        "higher_is_better",
        "runner",
        "gpu_memory_utilization",
    },
    PYTHON: {"name", "kind", "entry_point", "options"},
}


@dataclass(frozen=True)
class ObjectiveSpec:
    """One entry of `objectives`, checked. `where` names it in errors (``objectives[2]``)."""

    name: str
    where: str
    kind: str = BUILTIN
    path: str = ""
    output: int | str | None = None
    transform: str = "raw"
    mean: float | None = None
    std: float | None = None
    max_length: int | None = None  # None: what an alignd export was trained with, else 512
    dtype: str = "auto"
    device: str = "auto"
    template: str = "auto"
    higher_is_better: bool = True
    runner: str = "engine"  # engine: alignd's scoring engine; vllm: vLLM's pooling runner
    gpu_memory_utilization: float | None = None  # runner = "vllm": its engine's memory share
    entry_point: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    # Set by `resolve_objectives`: what the spec points at was checked (loading resolves only once).
    resolved: bool = False


def parse_objectives(entries: Sequence[Any]) -> list[ObjectiveSpec]:
    """The entries as specs; ConfigError naming the entry and key for anything malformed."""
    from alignd.rewardmodels.builtin import BUILTIN_FACTORIES

    if not isinstance(entries, (list, tuple)):
        raise ConfigError("objectives: must be a list of built-in names or [[objectives]] tables")
    specs: list[ObjectiveSpec] = []
    for i, entry in enumerate(entries):
        where = f"objectives[{i}]"
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a built-in name or a table, got {entry!r}")
        kind = entry.get("kind", BUILTIN)
        if kind not in KINDS:
            raise ConfigError(f"{where}.kind: must be one of {list(KINDS)}, got {kind!r}")
        unknown = sorted(set(entry) - _KEYS[kind])
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: unknown key for kind {kind!r}; known: {sorted(_KEYS[kind])}")
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where}.name: must be a non-empty string, got {name!r}")
        if kind == BUILTIN and name not in BUILTIN_FACTORIES:
            raise ConfigError(
                f"{where}.name: unknown built-in objective {name!r}; built-in: {sorted(BUILTIN_FACTORIES)}"
            )
        spec = ObjectiveSpec(name=name, where=where, kind=kind, **_typed(entry, where))
        if spec.name in {s.name for s in specs}:
            raise ConfigError(f"{where}.name: duplicate objective name {spec.name!r}")
        specs.append(spec)
    return specs


def _typed(entry: dict[str, Any], where: str) -> dict[str, Any]:
    """The table's keys other than name and kind, type- and range-checked."""
    values: dict[str, Any] = {}

    def text(key: str, choices: Sequence[str] | None = None) -> None:
        if key in entry:
            value = entry[key]
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}.{key}: must be a non-empty string, got {value!r}")
            if choices is not None and value not in choices:
                raise ConfigError(f"{where}.{key}: must be one of {list(choices)}, got {value!r}")
            values[key] = value

    def number(key: str) -> None:
        if key in entry:
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{where}.{key}: must be a finite number, got {value!r}")
            values[key] = float(value)

    text("path")
    text("transform", TRANSFORMS)
    text("dtype", DTYPES)
    text("device")
    text("template", TEMPLATES)
    text("entry_point")
    text("runner", RUNNERS)
    number("mean")
    number("std")
    number("gpu_memory_utilization")
    if "output" in entry:
        output = entry["output"]
        if isinstance(output, bool) or not isinstance(output, (int, str)) or (isinstance(output, int) and output < 0):
            raise ConfigError(f"{where}.output: must be an output index >= 0 or a label name, got {output!r}")
        values["output"] = output
    if "max_length" in entry:
        length = entry["max_length"]
        if isinstance(length, bool) or not isinstance(length, int) or length < 2:
            raise ConfigError(f"{where}.max_length: must be a whole number >= 2, got {length!r}")
        values["max_length"] = length
    if "higher_is_better" in entry:
        if not isinstance(entry["higher_is_better"], bool):
            raise ConfigError(f"{where}.higher_is_better: must be true or false, got {entry['higher_is_better']!r}")
        values["higher_is_better"] = entry["higher_is_better"]
    if "options" in entry:
        if not isinstance(entry["options"], dict):
            raise ConfigError(f"{where}.options: must be a table, got {entry['options']!r}")
        values["options"] = dict(entry["options"])
    kind = entry.get("kind", BUILTIN)
    if kind == SEQUENCE_CLASSIFICATION and "path" not in values:
        raise ConfigError(f"{where}.path: a sequence_classification objective needs the checkpoint's path")
    if kind == PYTHON and "entry_point" not in values:
        raise ConfigError(f"{where}.entry_point: a python objective needs an entry point name in {ENTRY_POINT_GROUP!r}")
    if values.get("runner") == "vllm" and "device" in values:
        raise ConfigError(f"{where}.device: the vllm runner places the model itself; leave device out")
    if "gpu_memory_utilization" in values:
        if values.get("runner") != "vllm":
            raise ConfigError(f"{where}.gpu_memory_utilization: only used with runner = 'vllm'")
        if not 0 < values["gpu_memory_utilization"] <= 1:
            raise ConfigError(
                f"{where}.gpu_memory_utilization: must be in (0, 1], got {values['gpu_memory_utilization']}"
            )
    if "std" in values and values["std"] <= 0:
        raise ConfigError(f"{where}.std: must be > 0, got {values['std']}")
    if ("mean" in values or "std" in values) and values.get("transform") != "standardise":
        key = "mean" if "mean" in values else "std"
        raise ConfigError(f"{where}.{key}: only used with transform = 'standardise'")
    return values


def resolve_objectives(specs: Sequence[ObjectiveSpec]) -> list[ObjectiveSpec]:
    """Check what the specs point at without loading weights: each checkpoint's config.json
    (its outputs, labels and stored statistics) and each entry point. Returns the specs with
    `output` as an index and `mean`/`std` filled for `standardise`."""
    return [_resolve(spec) for spec in specs]


def _resolve(spec: ObjectiveSpec) -> ObjectiveSpec:
    if spec.resolved or spec.kind == BUILTIN:
        return replace(spec, resolved=True)
    if spec.kind == PYTHON:
        _entry_point(spec)
        return replace(spec, resolved=True)
    try:
        config = read_checkpoint_config(spec.path)
    except (OSError, ValueError) as error:
        problem = "no such folder" if not Path(spec.path).exists() else _first_line(error)
        raise ConfigError(f"{spec.where}.path: no reward model checkpoint at {spec.path!r} ({problem})") from None
    max_length = _max_length(spec, config)
    if spec.runner == "vllm" and importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"{spec.where}.runner: 'vllm' needs vLLM installed (see the README: Install)")
    if spec.template == "chat":
        _check_chat_template(spec)
    if spec.device != "auto":
        from alignd.backends.transformers_policy import resolve_device

        try:
            resolve_device(spec.device)
        except (RuntimeError, ValueError) as error:
            raise ConfigError(f"{spec.where}.device: {_first_line(error)}") from None
    labels = output_labels(config)
    if spec.output is None:
        if len(labels) != 1:
            raise ConfigError(
                f"{spec.where}.output: the model has {len(labels)} outputs (labels {labels}); "
                "name one by index or label"
            )
        output = 0
    elif isinstance(spec.output, int):
        if spec.output >= len(labels):
            raise ConfigError(
                f"{spec.where}.output: index {spec.output} out of range; the model has {len(labels)} outputs "
                f"(labels {labels})"
            )
        output = spec.output
    else:
        if spec.output not in labels:
            raise ConfigError(f"{spec.where}.output: unknown label {spec.output!r}; labels: {labels}")
        output = labels.index(spec.output)
    mean, std = spec.mean, spec.std
    if spec.transform == "standardise" and (mean is None or std is None):
        stored = score_statistics(config)
        if stored is None:
            raise ConfigError(f"{spec.where}.transform: 'standardise' needs mean and std (the checkpoint stores none)")
        mean = stored[0] if mean is None else mean
        std = stored[1] if std is None else std
        if not std > 0:
            raise ConfigError(f"{spec.where}.std: the checkpoint's stored std {std} is not > 0")
    return replace(spec, output=output, mean=mean, std=std, max_length=max_length, resolved=True)


def _max_length(spec: ObjectiveSpec, config: Any) -> int:
    """The table's max_length, else the export's, else 512; never past the model's positions."""
    stored = getattr(config, METADATA_KEY, None)
    default = stored.get("max_length") if isinstance(stored, dict) else None
    if isinstance(default, bool) or not isinstance(default, int) or default < 2:
        default = DEFAULT_MAX_LENGTH
    positions = getattr(config, "max_position_embeddings", None)
    if spec.max_length is None:
        return min(int(default), positions) if isinstance(positions, int) else int(default)
    if isinstance(positions, int) and spec.max_length > positions:
        raise ConfigError(f"{spec.where}.max_length: {spec.max_length} is past the model's {positions} positions")
    return spec.max_length


def _check_chat_template(spec: ObjectiveSpec) -> None:
    from transformers import AutoTokenizer

    try:
        has_template = bool(AutoTokenizer.from_pretrained(spec.path).chat_template)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{spec.where}.path: cannot load the tokenizer at {spec.path!r}: {_first_line(error)}"
        ) from None
    if not has_template:
        raise ConfigError(f"{spec.where}.template: 'chat', but the tokenizer at {spec.path!r} has no chat template")


def _entry_point(spec: ObjectiveSpec) -> Callable[..., Any]:
    found = entry_points(group=ENTRY_POINT_GROUP)
    matches = [e for e in found if e.name == spec.entry_point]
    if not matches:
        installed = sorted(e.name for e in found)
        raise ConfigError(
            f"{spec.where}.entry_point: no entry point {spec.entry_point!r} in group {ENTRY_POINT_GROUP!r}; "
            f"installed: {installed}"
        )
    try:
        factory = matches[0].load()
    except Exception as error:  # the user's module failed to import
        raise ConfigError(f"{spec.where}.entry_point: cannot load {matches[0].value!r}: {_first_line(error)}") from None
    if not callable(factory):
        raise ConfigError(f"{spec.where}.entry_point: {matches[0].value!r} is not callable")
    return factory


def load_objectives(specs: Sequence[ObjectiveSpec], engine: ScoringEngine, device: str = "cpu") -> list[Objective]:
    """Load every objective; `device`: where `device = "auto"` models go (the policy's)."""
    from alignd.rewardmodels.builtin import BUILTIN_FACTORIES

    objectives: list[Objective] = []
    for spec in resolve_objectives(specs):
        if spec.kind == BUILTIN:
            objectives.append(BUILTIN_FACTORIES[spec.name](device, engine))
        elif spec.kind == PYTHON:
            objectives.append(PluginObjective(spec, _entry_point(spec)))
        else:
            objectives.append(_model_objective(spec, engine, device))
    return objectives


def _model_objective(spec: ObjectiveSpec, engine: ScoringEngine, device: str) -> Objective:
    target = device if spec.device == "auto" else spec.device
    assert spec.max_length is not None  # resolved
    length = spec.max_length
    classifier: RewardModel
    try:
        if spec.runner == "vllm":
            from alignd.rewardmodels.vllm_classifier import VLLMClassifier

            key = VLLMClassifier.key_for(spec.path, spec.dtype, length, spec.template)
            share = spec.gpu_memory_utilization
            classifier = engine.model(key, lambda: VLLMClassifier(spec.path, spec.dtype, length, spec.template, share))
        else:
            key = SequenceClassifier.key_for(spec.path, target, spec.dtype, length, spec.template)
            classifier = engine.model(
                key, lambda: SequenceClassifier(spec.path, target, spec.dtype, length, spec.template)
            )
    except Exception as error:  # whatever the checkpoint's code raises: one line naming the table
        key_name = "runner" if spec.runner == "vllm" else "path"
        raise ConfigError(
            f"{spec.where}.{key_name}: cannot load the reward model at {spec.path!r}: {_first_line(error)}"
        ) from None
    assert isinstance(spec.output, int)
    transform = Transform(
        spec.transform,
        0.0 if spec.mean is None else spec.mean,
        1.0 if spec.std is None else spec.std,
        negate=not spec.higher_is_better,
    )
    return ModelOutputObjective(spec.name, classifier, engine, spec.output, transform)


class PluginObjective(Objective):
    """A user's objective from an entry point, served under the table's name. Its scores are
    checked (one finite float per pair); anything it raises reaches the request as
    FAILED_PRECONDITION naming the objective, and the server keeps serving."""

    def __init__(self, spec: ObjectiveSpec, factory: Callable[..., Any]) -> None:
        where = f"{spec.where}.entry_point"
        try:
            self.plugin = factory(**spec.options)
        except Exception as error:
            raise ConfigError(
                f"{where}: {spec.entry_point!r} failed with {spec.options}: {_first_line(error)}"
            ) from None
        info = getattr(self.plugin, "info", None)
        if not callable(getattr(self.plugin, "score", None)) or not isinstance(info, ObjectiveInfo):
            raise ConfigError(
                f"{where}: {spec.entry_point!r} must give an object with `info` (alignd.rewardmodels.ObjectiveInfo) "
                "and `score(prompts, responses)`"
            )
        self.info = replace(info, name=spec.name, source=f"python {spec.entry_point}")

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if not responses:
            return np.zeros(0)
        try:
            values = np.asarray(self.plugin.score(list(prompts), list(responses)), dtype=np.float64)
        except Exception as error:
            raise ScoringError(f"objectives.{self.name}: the python objective failed: {error!r}") from None
        if values.shape != (len(responses),):
            raise ScoringError(
                f"objectives.{self.name}: the python objective gave shape {values.shape} for {len(responses)} responses"
            )
        return check_finite(values, self.name, "the python objective")


def _first_line(error: BaseException) -> str:
    """Errors are reported in one line; transformers' span several."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
