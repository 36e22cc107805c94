"""Build a concrete Policy from a model name or path (server start-up and training commands)."""

from __future__ import annotations

from alignd import models
from alignd.backends.base import Policy

BACKENDS = ("transformers",)


def load_policy(model: str, *, backend: str = "transformers", device: str = "auto", dtype: str = "float32") -> Policy:
    """Raises alignd.errors.ModelNotFound for an unknown model, ValueError for a bad backend."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; available: {list(BACKENDS)}")
    checkpoint = models.resolve(model)
    from alignd.backends.transformers_policy import TransformersPolicy

    name = model if model in models.REGISTRY else checkpoint.name
    return TransformersPolicy(checkpoint, model_name=name, device=device, dtype=dtype)
