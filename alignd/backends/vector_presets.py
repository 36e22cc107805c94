"""Preference vectors as LoRA adapters at fixed strengths, for engines that serve adapters but
not per-request scales (vLLM applies each request's adapter at the scale it was loaded with).

A preset (vector p, eta) is the adapter whose delta is eta phi_p: the vector's own factors, the
up factor scaled by eta, with lora_alpha = r so the adapter's scaling is 1. Written in peft's
format (adapter_config.json + adapter_model.safetensors), which vLLM and peft both load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from alignd.backends.preference_vectors import PreferenceVectors

DEFAULT_PRESETS = (-1.0, -0.5, 0.5, 1.0)


def preset_name(vector: str, eta: float) -> str:
    # Every digit of eta (not "g"'s six): two presets must not share an adapter name or folder.
    return f"{vector}@{float(eta):+}"


def write_preset(vectors: PreferenceVectors, vector: str, eta: float, folder: Path, base_model: str) -> Path:
    """The adapter for eta phi_vector in `folder` (created); returns the folder."""
    deltas = vectors.deltas[vector]
    rank = max(delta.down.shape[0] for delta in deltas.values())
    tensors = {}
    for layer, delta in deltas.items():
        # Pad every layer to the adapter's one rank with zero rows (peft and vLLM need one r).
        pad = rank - delta.down.shape[0]
        down = torch.cat([delta.down, delta.down.new_zeros((pad, delta.down.shape[1]))])
        up = torch.cat([delta.up * eta, delta.up.new_zeros((delta.up.shape[0], pad))], dim=1)
        tensors[f"base_model.model.{layer}.lora_A.weight"] = down.float().contiguous()
        tensors[f"base_model.model.{layer}.lora_B.weight"] = up.float().contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": rank,
        "lora_alpha": rank,  # scaling alpha / r = 1: eta is in the up factor
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": sorted({layer.rsplit(".", 1)[-1] for layer in deltas}),
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def write_presets(
    vectors: PreferenceVectors, presets: tuple[float, ...], folder: Path, base_model: str
) -> dict[tuple[str, float], Path]:
    """Every (vector, eta) preset as an adapter folder under `folder`."""
    return {
        (name, eta): write_preset(vectors, name, eta, folder / preset_name(name, eta), base_model)
        for name in vectors.names
        for eta in presets
    }
