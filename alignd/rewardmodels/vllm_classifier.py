"""A reward-model checkpoint on vLLM's pooling runner (`runner = "vllm"` in its objective table).

vLLM loads the checkpoint as a classification model (`LLM(runner="pooling")`), schedules the
sequences itself (continuous batching, prefix caching across a request's candidates) and returns
the raw logits (its activation turned off, so transforms mean what they mean on the default
runner). Inputs are rendered and tokenized exactly as on the default runner; the scoring engine
still coalesces concurrent requests, handing each round to vLLM in one call from its one worker
thread (vLLM's offline engine is not for concurrent callers).

vLLM runs in its own engine processes, beside the policy's engine when the server is on
`--backend vllm`. It takes the memory share `gpu_memory_utilization` (the table's key; on the CPU
0.25 by default, with 32-token blocks, as the policy's vLLM engine does there; on a GPU vLLM's
default, which leaves no room beside a vLLM policy: set it). Text-pair encoders stay on the
engine: vLLM reads token ids only, without segment ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from alignd.rewardmodels.sequence_classification import (
    DEFAULT_MAX_LENGTH,
    RewardModel,
    checkpoint_id,
    last_not_pad,
    read_checkpoint_config,
    resolve_dtype,
)

CPU_MEMORY_UTILIZATION = 0.25
CPU_BLOCK_SIZE = 32


class VLLMClassifier(RewardModel):
    schedules_itself = True

    def __init__(
        self,
        path: str,
        dtype: str = "auto",
        max_length: int = DEFAULT_MAX_LENGTH,
        template: str = "auto",
        gpu_memory_utilization: float | None = None,
    ) -> None:
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        from vllm import LLM, PoolingParams

        self._set_up_inputs(path, max_length, template)
        self.config = read_checkpoint_config(path)
        self.outputs = int(self.config.num_labels)
        pad = getattr(self.config, "pad_token_id", None)
        self.pad_id = int(pad) if isinstance(pad, int) else self._fallback_pad_id()
        if self.template == "plain" and "token_type_ids" in self.tokenizer.model_input_names:
            # vLLM reads token ids only: a text-pair encoder would lose its segment ids.
            raise ValueError("the vllm runner reads token ids only; serve text-pair encoders on runner = 'engine'")
        on_gpu = torch.cuda.is_available()
        self.device = torch.device("cuda" if on_gpu else "cpu")
        options: dict[str, Any] = {}
        if not on_gpu:
            options["block_size"] = CPU_BLOCK_SIZE
            share = CPU_MEMORY_UTILIZATION if gpu_memory_utilization is None else gpu_memory_utilization
            options["gpu_memory_utilization"] = share
        elif gpu_memory_utilization is not None:
            options["gpu_memory_utilization"] = gpu_memory_utilization
        # `auto` as on the default runner: half precision on CUDA, float32 on the CPU.
        options["dtype"] = str(resolve_dtype(dtype, self.device)).removeprefix("torch.")
        self.llm: Any = LLM(model=path, runner="pooling", max_model_len=max_length, **options)
        self._raw = PoolingParams(use_activation=False)
        self.key = self.key_for(path, dtype, max_length, template)

    @staticmethod
    def key_for(path: str, dtype: str, max_length: int, template: str) -> tuple:
        return ("vllm_classify", checkpoint_id(path), dtype, max_length, template)

    def close(self) -> None:
        """Stop vLLM's engine processes now, not during interpreter exit."""
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Padded rows, as any engine model takes them (the engine hands whole rounds to
        `forward_sequences` instead)."""
        lengths = attention_mask.sum(1).tolist()
        return self.forward_sequences([row[:length] for row, length in zip(input_ids.tolist(), lengths)])

    def forward_sequences(self, sequences: list[Sequence[int]]) -> torch.Tensor:
        # vLLM pools the final token; transformers (the engine) the last one that is not the pad
        # id. Trailing pad ids (a turn ending in EOS when EOS pads) are cut so both read the same.
        prompts: Any = [{"prompt_token_ids": list(ids[: last_not_pad(ids, self.pad_id) + 1])} for ids in sequences]
        results = self.llm.classify(prompts, pooling_params=self._raw, use_tqdm=False)
        return torch.tensor([r.outputs.probs for r in results], dtype=torch.float32)
