"""Policy on a plain transformers causal LM (the CPU default; CUDA when asked or present).

Sampling prefills each distinct prompt once, then copies its KV cache to the n rows that share it
(`DynamicCache.batch_repeat_interleave`), so best-of-n pays for the prompt once. Rows that finish
are dropped from the cache so later steps only run the live ones.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.cache_utils import DynamicCache

from alignd.backends.base import (
    Capability,
    ChatPrompt,
    Completion,
    FinishReason,
    Policy,
    SampleBatch,
    SamplingParams,
)
from alignd.backends.sampling import draw, make_generator
from alignd.errors import Cancelled

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return resolved


class TransformersPolicy(Policy):
    capabilities = frozenset({Capability.SAMPLE})

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        model: PreTrainedModel | None = None,
        tokenizer=None,
        model_name: str | None = None,
        device: str = "auto",
        dtype: str = "float32",
    ) -> None:
        """Load from a checkpoint folder, or wrap an in-memory model and tokenizer (tests)."""
        self._device = resolve_device(device)
        if model is None:
            if checkpoint is None:
                raise ValueError("either checkpoint or model is required")
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
            tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
            model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=_DTYPES[dtype])
        self.model = model.to(self._device).eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_name = model_name or (Path(checkpoint).name if checkpoint else type(model).__name__)
        self.device = str(self._device)
        self.eos_token_ids = self._eos_ids()
        # One forward pass at a time: the server calls from worker threads, and interleaving two
        # requests' steps on 2 cores only slows both.
        self._lock = threading.Lock()

    def _eos_ids(self) -> torch.Tensor:
        ids: set[int] = set()
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        if isinstance(configured, int):
            ids.add(configured)
        elif configured:
            ids.update(configured)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return torch.tensor(sorted(ids), dtype=torch.long, device=self._device)

    def render(self, prompt: ChatPrompt) -> str:
        if prompt.raw or not getattr(self.tokenizer, "chat_template", None):
            return prompt.user if prompt.system is None else f"{prompt.system}\n\n{prompt.user}"
        messages = []
        if prompt.system is not None:
            messages.append({"role": "system", "content": prompt.system})
        messages.append({"role": "user", "content": prompt.user})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    @torch.inference_mode()
    def sample(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> SampleBatch:
        if n < 1 or not prompts:
            raise ValueError("sample needs at least one prompt and n >= 1")
        with self._lock:
            return self._sample(prompts, n, sampling, cancel)

    def _sample(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: SamplingParams, cancel: threading.Event | None
    ) -> SampleBatch:
        device = self._device
        encoded = self.tokenizer(
            [self.render(p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(device)
        attention = encoded["attention_mask"]
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        prompt_tokens = attention.sum(-1).tolist()

        # Prefill every distinct prompt once, then give each of its n rows a copy of the cache.
        cache = DynamicCache()
        out = self.model(
            input_ids=encoded["input_ids"], attention_mask=attention, position_ids=positions,
            past_key_values=cache, use_cache=True,
        )
        forward_tokens = int(sum(prompt_tokens))
        logits = out.logits[:, -1, :].repeat_interleave(n, dim=0)
        cache.batch_repeat_interleave(n)
        attention = attention.repeat_interleave(n, dim=0)
        next_position = positions[:, -1].repeat_interleave(n, dim=0) + 1

        rows = len(prompts) * n
        max_tokens = sampling.max_tokens
        tokens = torch.full((rows, max_tokens), self.tokenizer.pad_token_id, dtype=torch.long, device=device)
        logprobs = torch.zeros((rows, max_tokens), dtype=torch.float32, device=device)
        lengths = torch.zeros(rows, dtype=torch.long, device=device)
        finish = [FinishReason.LENGTH] * rows
        live = torch.arange(rows, device=device)  # output row of each cache row
        generator = make_generator(sampling.seed, device)
        stop_window = _stop_window(sampling.stop)

        for step in range(max_tokens):
            if cancel is not None and cancel.is_set():
                raise Cancelled("request cancelled; decoding stopped")
            chosen, chosen_logprobs = draw(logits, sampling, generator)
            tokens[live, step] = chosen
            logprobs[live, step] = chosen_logprobs
            lengths[live] = step + 1
            done = torch.isin(chosen, self.eos_token_ids)
            if stop_window:
                done |= self._hit_stop(tokens[live, max(0, step + 1 - stop_window) : step + 1], sampling.stop)
            if step == max_tokens - 1:
                for row in live[done].tolist():
                    finish[row] = FinishReason.STOP
                break
            if done.any():
                for row in live[done].tolist():
                    finish[row] = FinishReason.STOP
                keep = (~done).nonzero().squeeze(-1)
                if keep.numel() == 0:
                    break
                cache.batch_select_indices(keep)
                live, chosen = live[keep], chosen[keep]
                attention, next_position = attention[keep], next_position[keep]
            attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=-1)
            out = self.model(
                input_ids=chosen.unsqueeze(-1), attention_mask=attention, position_ids=next_position.unsqueeze(-1),
                past_key_values=cache, use_cache=True,
            )
            forward_tokens += int(chosen.shape[0])
            logits = out.logits[:, -1, :]
            next_position = next_position + 1

        completions = self._completions(tokens, logprobs, lengths, finish, sampling.stop)
        grouped = [completions[i * n : (i + 1) * n] for i in range(len(prompts))]
        return SampleBatch(completions=grouped, prompt_tokens=prompt_tokens, forward_tokens=forward_tokens)

    def _hit_stop(self, tails: torch.Tensor, stops: Sequence[str]) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(tails.tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in t for s in stops) for t in texts], dtype=torch.bool, device=tails.device)

    def _completions(self, tokens, logprobs, lengths, finish, stops) -> list[Completion]:
        eos = set(self.eos_token_ids.tolist())
        token_rows, logprob_rows, length_list = tokens.tolist(), logprobs.tolist(), lengths.tolist()
        completions = []
        for row, length in enumerate(length_list):
            ids = token_rows[row][:length]
            text_ids = ids[:-1] if ids and ids[-1] in eos else ids
            text = self.tokenizer.decode(text_ids, skip_special_tokens=True)
            text = _cut_at_stop(text, stops)
            completions.append(Completion(text, ids, logprob_rows[row][:length], finish[row]))
        return completions


def _stop_window(stops: Sequence[str]) -> int:
    """Tokens to decode at each step to see a stop sequence that the newest token completed."""
    # A token covers at least one character, plus slack for tokens that decode to nothing alone.
    return max((len(s) for s in stops), default=0) + 2 if stops else 0


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if cut < 0 else text[:cut]
