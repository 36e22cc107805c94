"""Small heads on the policy's final-layer hidden states: value heads and reward heads.

- Value heads (Mudgal et al., "Controlled Decoding from Language Models", CD-FUDGE): one output
  per objective, V_g(x, y_<t) ~ E[r_g(x, y) | prefix]; read at a prefix's last token.
- Reward heads: Bradley-Terry, r(x, y) read at the response's last token.

Outputs are trained on z-scored targets; `predict` maps back to each objective's own scale with
the stored statistics. A head is saved as `<name>.safetensors` (weights) with `<name>.json`
(metadata: base model, objectives, normalisation, data hash, training metrics).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


class HeadError(ValueError):
    """A head file that is missing, malformed, or made for another model."""


@dataclass
class HeadMetadata:
    kind: str  # "value" or "reward"
    base_model: str
    hidden_size: int
    objectives: list[str]  # one name per output
    mean: list[float]  # per output: targets were (r - mean) / std
    std: list[float]
    width: int = 0  # hidden units of the MLP; 0 = linear
    data_hash: str = ""
    metrics: dict = field(default_factory=dict)


class Head(nn.Module):
    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, metadata: HeadMetadata) -> None:
        super().__init__()
        self.metadata = metadata
        outputs = len(metadata.objectives)
        if metadata.width:
            self.net = nn.Sequential(
                nn.Linear(metadata.hidden_size, metadata.width), nn.GELU(), nn.Linear(metadata.width, outputs)
            )
        else:
            self.net = nn.Sequential(nn.Linear(metadata.hidden_size, outputs))
        self.register_buffer("mean", torch.tensor(metadata.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(metadata.std, dtype=torch.float32))

    @property
    def objectives(self) -> list[str]:
        return self.metadata.objectives

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Normalised predictions [N, outputs] from hidden states [N, H]."""
        return self.net(hidden.to(self.mean.dtype))

    @torch.inference_mode()
    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Predictions on each objective's own scale."""
        return self(hidden) * self.std + self.mean

    def save(self, path: str | Path) -> Path:
        path = Path(path).with_suffix(".safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path))
        path.with_suffix(".json").write_text(json.dumps(asdict(self.metadata), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Head:
        path = Path(path).with_suffix(".safetensors")
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise HeadError(f"head {str(path)!r}: needs {path.name} and {meta_path.name}")
        try:
            metadata = HeadMetadata(**json.loads(meta_path.read_text()))
            head = cls(metadata)
            head.load_state_dict(load_file(str(path)))
        except (TypeError, ValueError, RuntimeError, KeyError) as error:
            raise HeadError(f"head {str(path)!r}: cannot load ({error})") from None
        return head.to(device).eval()

    def check_compatible(self, model_name: str, hidden_size: int) -> None:
        if self.metadata.hidden_size != hidden_size:
            raise HeadError(
                f"{self.metadata.kind} head for {self.metadata.base_model!r} expects hidden size "
                f"{self.metadata.hidden_size}, the served model {model_name!r} has {hidden_size}"
            )
