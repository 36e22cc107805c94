"""Build a concrete Policy from a model name or path (server start-up and training commands)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignd import models
from alignd.backends.base import Policy

if TYPE_CHECKING:
    from alignd.backends.preference_vectors import PreferenceVectors

BACKENDS = ("transformers", "vllm")


def check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; available: {list(BACKENDS)}")


def served_model_name(model: str, checkpoint: Path) -> str:
    """The name the policy serves under (and shipped heads are looked up by): the registry name, else the folder's."""
    return model if model in models.REGISTRY else checkpoint.name


def checkpoint_hidden_size(checkpoint: Path) -> int | None:
    """The model's hidden size from its config.json (None where it does not say), so heads can be
    checked against the model before it loads."""
    try:
        config = json.loads((checkpoint / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    # Multimodal checkpoints keep the language model's settings in text_config.
    text = config.get("text_config")
    size = config.get("hidden_size", text.get("hidden_size") if isinstance(text, dict) else None)
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def load_policy(
    model: str,
    *,
    backend: str = "transformers",
    device: str = "auto",
    dtype: str = "float32",
    vllm_options: Any = None,
    small_batch_matmul: bool = True,
    max_batch_tokens: int = 65_536,
    vectors: PreferenceVectors | None = None,
) -> Policy:
    """Raises alignd.errors.ModelNotFound for an unknown model, ValueError for a bad backend or
    dtype, alignd.backends.vllm.EngineStartError when the vLLM engine does not start. `dtype`
    auto is resolved here (`resolve_dtype`) for both backends."""
    check_backend(backend)
    checkpoint = models.resolve(model)
    name = served_model_name(model, checkpoint)
    from alignd.backends.transformers_policy import TransformersPolicy, resolve_device, resolve_dtype

    if backend == "vllm":
        from alignd.backends.vllm import VLLMOptions, VLLMPolicy

        dtype = resolve_dtype(dtype, resolve_device("auto"))
        return VLLMPolicy(
            checkpoint, model_name=name, dtype=dtype, options=vllm_options or VLLMOptions(), vectors=vectors
        )
    return TransformersPolicy(
        checkpoint,
        model_name=name,
        device=device,
        dtype=dtype,
        small_batch_matmul=small_batch_matmul,
        max_batch_tokens=max_batch_tokens,
        vectors=vectors,
    )
