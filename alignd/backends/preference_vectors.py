"""Preference vectors (Liang et al. 2025, "Adaptive Helpfulness-Harmlessness Alignment with
Preference Vectors"): what a vector is, and its file format.

For a preference p two LoRA adapters are trained with DPO, one on pairs ranked by p ("more of p",
theta+) and one on the same pairs reversed ("less of p", theta-). The vector is their difference,
phi_p = theta+ - theta-, and a request's strengths eta give the weights
theta = theta_base + sum_p eta_p phi_p.

An adapter changes a linear layer's weight W [out, in] by s B A (A [r, in], B [out, r], s =
lora_alpha / r), so on that layer phi_p = s B+ A+ - s B- A- = [s B+, -s B-] [A+; A-]: exactly the
product of an `up` factor [out, 2r] and a `down` factor [2r, in], which is what is stored: no
low-rank truncation (the files keep the factors in float16, a relative rounding of about 1e-3).

Files: `<name>.safetensors` holds `<vector>/<module>/down` and `<vector>/<module>/up` for every
adapted layer (`<module>` is the layer's name in the plain transformers model, e.g.
`model.layers.0.self_attn.q_proj`); `<name>.json` beside it holds the metadata, one entry per
vector (`VectorInfo`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

FORMAT = 1
SHIPPED_VECTORS = Path(__file__).resolve().parent.parent / "data" / "vectors"
FILE_NAME = "preference_vectors.safetensors"
# The unsteered model among the policies logit fusion mixes: no vector may take the name.
BASE_POLICY = "base"


class VectorsError(ValueError):
    """A vectors file that is missing, malformed, or made for another model."""


@dataclass(frozen=True)
class VectorInfo:
    """What a vector is: its name (the request field's key), the objective it moves, and how it
    was made and measured."""

    name: str
    objective: str
    base_model: str
    rank: int  # of phi on each layer: 2 x the adapters' LoRA rank
    target_modules: tuple[str, ...]  # the adapted layers' short names (q_proj, v_proj, ...)
    data_hash: str = ""
    # Mean change of every objective at eta = 1 against eta = 0, on the eval prompts (`alignd train
    # vectors` measures it): the vector's effect on its objective and its price on the others.
    shift: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # DPO settings and pair counts

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> VectorInfo:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise VectorsError(f"unknown fields {unknown}")
        values = dict(values, target_modules=tuple(values.get("target_modules", ())))
        return cls(**values)


@dataclass(frozen=True)
class LowRankDelta:
    """One layer's phi: delta W = up @ down."""

    down: torch.Tensor  # [R, in]
    up: torch.Tensor  # [out, R]

    def weight(self) -> torch.Tensor:
        return self.up.float() @ self.down.float()


@dataclass
class PreferenceVectors:
    """Vectors by name, each a low-rank delta per adapted layer."""

    infos: dict[str, VectorInfo]
    deltas: dict[str, dict[str, LowRankDelta]]  # vector -> module name -> delta

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.infos)

    def merged_into(self, model: torch.nn.Module, strengths: dict[str, float]) -> torch.nn.Module:
        """`model` with theta_base + sum_p eta_p phi_p written into its weights, in place (for tests
        and offline use; the server never merges: it applies the deltas per row)."""
        modules = dict(model.named_modules())
        with torch.no_grad():
            for name, eta in strengths.items():
                for module_name, delta in self.deltas[name].items():
                    weight = modules[module_name].weight
                    weight += (eta * delta.weight()).to(weight.device, weight.dtype)
        return model

    def check_model(self, model: torch.nn.Module) -> None:
        """Every adapted layer exists in `model` with the shapes the factors need."""
        # Linear layers only: the deltas are applied as x @ down^T @ up^T (an embedding's weight is
        # 2-D too, but its input is token ids).
        shapes = {
            name: tuple(module.weight.shape)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
        self._check_shapes(shapes, "the model")

    def check_checkpoint(self, folder: str | Path) -> None:
        """As `check_model`, from the shapes in a checkpoint's safetensors headers (no weight is
        read): for engines that load the model themselves, before they start. A checkpoint without
        safetensors files is left to the engine."""
        shapes: dict[str, tuple[int, ...]] = {}
        for file in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as weights:
                for key in weights.keys():  # noqa: SIM118 (safe_open is not iterable)
                    shape = tuple(weights.get_slice(key).get_shape())
                    if key.endswith(".weight") and len(shape) == 2:
                        shapes[key.removesuffix(".weight")] = shape
        if shapes:
            self._check_shapes(shapes, "the checkpoint")

    def _check_shapes(self, shapes: dict[str, tuple[int, ...]], where: str) -> None:
        """`shapes`: the [out, in] of each linear layer, by module name."""
        for name, layers in self.deltas.items():
            for module_name, delta in layers.items():
                shape = shapes.get(module_name)
                if shape is None:
                    raise VectorsError(f"vector {name!r}: {where} has no linear layer {module_name!r}")
                if shape != (delta.up.shape[0], delta.down.shape[1]):
                    raise VectorsError(
                        f"vector {name!r}: layer {module_name!r} is {shape} in {where}, "
                        f"{(delta.up.shape[0], delta.down.shape[1])} in the vector"
                    )

    def save(self, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
        """Write `<path>.safetensors` and `<path>.json` (factors stored as `dtype`)."""
        path = Path(path).with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, layers in self.deltas.items():
            for module_name, delta in layers.items():
                tensors[f"{name}/{module_name}/down"] = delta.down.detach().to("cpu", dtype).contiguous()
                tensors[f"{name}/{module_name}/up"] = delta.up.detach().to("cpu", dtype).contiguous()
        save_file(tensors, str(path))
        metadata = {"format": FORMAT, "vectors": [asdict(info) for info in self.infos.values()]}
        path.with_suffix(".json").write_text(json.dumps(metadata, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> PreferenceVectors:
        """Read a vectors file (factors as float32); VectorsError names what is wrong."""
        path = Path(path).with_suffix(".safetensors")
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise VectorsError(f"preference vectors {str(path)!r}: needs {path.name} and {meta_path.name}")
        try:
            metadata = json.loads(meta_path.read_text())
            if metadata.get("format") != FORMAT:
                raise VectorsError(f"format {metadata.get('format')!r}, this alignd reads {FORMAT}")
            infos = [VectorInfo.from_dict(v) for v in metadata["vectors"]]
            tensors = load_file(str(path))
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
            raise VectorsError(f"preference vectors {str(path)!r}: cannot load ({error})") from None
        names = [info.name for info in infos]
        if BASE_POLICY in names or len(set(names)) < len(names):
            raise VectorsError(
                f"preference vectors {str(path)!r}: vector names must be unique and not {BASE_POLICY!r} "
                f"(logit fusion's name for the unsteered model), got {names}"
            )
        deltas: dict[str, dict[str, LowRankDelta]] = {info.name: {} for info in infos}
        factors: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            name, _, rest = key.partition("/")
            module_name, _, part = rest.rpartition("/")
            if name not in deltas or part not in ("down", "up") or not module_name:
                raise VectorsError(f"preference vectors {str(path)!r}: unexpected tensor {key!r}")
            factors.setdefault((name, module_name), {})[part] = tensor.float()
        for (name, module_name), pair in factors.items():
            matrices = set(pair) == {"down", "up"} and all(t.dim() == 2 for t in pair.values())
            if not matrices or pair["up"].shape[1] != pair["down"].shape[0]:
                raise VectorsError(f"preference vectors {str(path)!r}: {name}/{module_name} lacks matching factors")
            if not all(bool(torch.isfinite(t).all()) for t in pair.values()):
                raise VectorsError(f"preference vectors {str(path)!r}: {name}/{module_name} is not finite")
            deltas[name][module_name] = LowRankDelta(pair["down"], pair["up"])
        empty = [name for name, layers in deltas.items() if not layers]
        if empty:
            raise VectorsError(f"preference vectors {str(path)!r}: no layers for {empty}")
        return cls({info.name: info for info in infos}, deltas)


def shipped_vectors(model_name: str) -> Path | None:
    path = SHIPPED_VECTORS / model_name / FILE_NAME
    return path if path.is_file() else None
