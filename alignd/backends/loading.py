"""Build a concrete Policy from a model name or path (server start-up and training commands)."""

from __future__ import annotations

from typing import Any

from alignd import models
from alignd.backends.base import Policy

BACKENDS = ("transformers", "vllm")


def load_policy(
    model: str,
    *,
    backend: str = "transformers",
    device: str = "auto",
    dtype: str = "float32",
    vllm_options: Any = None,
    small_batch_matmul: bool = True,
) -> Policy:
    """Raises alignd.errors.ModelNotFound for an unknown model, ValueError for a bad backend,
    alignd.backends.vllm.EngineStartError when the vLLM engine does not start."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; available: {list(BACKENDS)}")
    checkpoint = models.resolve(model)
    name = model if model in models.REGISTRY else checkpoint.name
    if backend == "vllm":
        from alignd.backends.vllm import VLLMOptions, VLLMPolicy

        return VLLMPolicy(checkpoint, model_name=name, dtype=dtype, options=vllm_options or VLLMOptions())
    from alignd.backends.transformers_policy import TransformersPolicy

    return TransformersPolicy(
        checkpoint, model_name=name, device=device, dtype=dtype, small_batch_matmul=small_batch_matmul
    )
