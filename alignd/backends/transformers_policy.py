"""Policy on a plain transformers causal LM (the CPU default; CUDA when asked or present).

All decoding goes through one mechanism, `_Partial` plus `_run`:
- `begin` prefills each distinct prompt once;
- `select` gathers KV-cache rows (with repeats), so n candidates or K blocks share one prefill
  and a block never re-encodes its prefix;
- `_run` draws tokens for the live rows, drops rows that finish from the cache, and records each
  row's final-layer hidden state at its last token, which value heads read at no extra forward.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.cache_utils import CacheLayerMixin, DynamicCache

from alignd.backends.base import (
    Capability,
    ChatPrompt,
    Completion,
    FinishReason,
    PartialResponses,
    Policy,
    SampleBatch,
    SamplingParams,
    check_cancelled,
    owned,
)
from alignd.backends.cpu_matmul import use_small_batch_linears
from alignd.backends.text import TokenizerText, eos_token_ids, response_text, response_texts, stop_window
from alignd.sampling import draw, make_generator, reference_logprobs

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return resolved


@dataclass(kw_only=True)
class _Partial(PartialResponses):
    """Backend state: tensors for the live rows only, aligned with the KV cache rows. `hidden` is
    always set; the cache tensors are set whenever a row is live (`live_tensors`)."""

    live: list[int]  # row index of each cache row
    generator: torch.Generator
    cache: DynamicCache | None = None
    attention: torch.Tensor | None = None  # [live, T]
    next_position: torch.Tensor | None = None  # [live]
    logits: torch.Tensor | None = None  # [live, V], next-token logits

    def live_tensors(self) -> tuple[DynamicCache, torch.Tensor, torch.Tensor, torch.Tensor]:
        """cache, attention, next_position and logits (a partial with live rows has them all)."""
        assert self.cache is not None and self.attention is not None
        assert self.next_position is not None and self.logits is not None
        return self.cache, self.attention, self.next_position, self.logits


class TransformersPolicy(TokenizerText, Policy):
    capabilities = frozenset({Capability.SAMPLE, Capability.EXTEND, Capability.TOKENWISE, Capability.HIDDEN_STATES})

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        *,
        model: PreTrainedModel | None = None,
        tokenizer: Any = None,
        model_name: str | None = None,
        device: str = "auto",
        dtype: str = "float32",
        small_batch_matmul: bool = True,
    ) -> None:
        """Load from a checkpoint folder, or wrap an in-memory model and tokenizer (tests).
        `small_batch_matmul`: on CPU, use the faster product for decoding steps (cpu_matmul.py)."""
        self._device = resolve_device(device)
        if model is None:
            if checkpoint is None:
                raise ValueError("either checkpoint or model is required")
            if dtype not in _DTYPES:
                raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
            tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
            model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=_DTYPES[dtype])
        # transformers types `to` through functools.wraps, which reads the device as `self`.
        self.model = model.to(self._device).eval()  # type: ignore[arg-type]
        if small_batch_matmul and self._device.type == "cpu":
            use_small_batch_linears(self.model)
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model_name = model_name or (Path(checkpoint).name if checkpoint else type(model).__name__)
        self.device = str(self._device)
        self.hidden_size = int(self.model.config.hidden_size)
        self.context_length = getattr(self.model.config, "max_position_embeddings", None)
        self._eos = eos_token_ids(self.tokenizer, self.model.generation_config)
        self.eos_token_ids = torch.tensor(sorted(self._eos), dtype=torch.long, device=self._device)
        # One forward pass at a time: the server calls from worker threads, and interleaving two
        # requests' steps on 2 cores only slows both.
        self._lock = threading.RLock()
        self._tokenizer_lock = self._lock  # one lock: tokenizer calls come from several worker threads

    # -- text ---------------------------------------------------------------------------------

    def _text(self, ids: list[int], stops: Sequence[str]) -> str:
        return response_text(self.detokenize, ids, self._eos, stops)

    # -- the decoding mechanism ------------------------------------------------------------------

    def _forward(self, partial: _Partial, input_ids: torch.Tensor, positions: torch.Tensor) -> None:
        assert partial.attention is not None and partial.hidden is not None  # set by _begin
        out = self.model(
            input_ids=input_ids,
            attention_mask=partial.attention,
            position_ids=positions,
            past_key_values=partial.cache,
            use_cache=True,
            output_hidden_states=True,
            logits_to_keep=1,
        )
        partial.logits = out.logits[:, -1, :]
        partial.hidden[torch.tensor(partial.live, device=self._device)] = out.hidden_states[-1][:, -1, :].float()
        partial.forward_tokens += int(partial.attention[:, -input_ids.shape[1] :].sum())

    def _begin(self, prompts: Sequence[ChatPrompt], sampling: SamplingParams) -> _Partial:
        input_ids, attention = self._left_padded([self.prompt_ids(p) for p in prompts])
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        rows = len(prompts)
        partial = _Partial(
            prompt=prompts[0],
            sampling=sampling,
            prompt_tokens=int(attention.sum()),
            token_ids=[[] for _ in range(rows)],
            token_logprobs=[[] for _ in range(rows)],
            finish=[None] * rows,
            hidden=torch.zeros((rows, self.hidden_size), device=self._device),
            live=list(range(rows)),
            cache=DynamicCache(),
            attention=attention,
            next_position=positions[:, -1] + 1,
            generator=make_generator(sampling.seed, self._device),
        )
        self._forward(partial, input_ids, positions)
        return partial

    def _left_padded(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, width] left-padded with the pad token, and their attention mask."""
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in sequences], device=self._device)
        attention = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=self._device)
        return input_ids, attention

    def _select(self, partial: _Partial, rows: Sequence[int], *, share: bool = False) -> _Partial:
        """The given rows as a new partial. Its cache is a copy unless `share` (the caller drops
        `partial` and the selection keeps every live row in order)."""
        cache_index = {row: i for i, row in enumerate(partial.live)}
        kept = [i for i, row in enumerate(rows) if row in cache_index]
        gather = torch.tensor([cache_index[rows[i]] for i in kept], dtype=torch.long, device=self._device)
        assert partial.hidden is not None
        selected = _Partial(
            prompt=partial.prompt,
            sampling=partial.sampling,
            prompt_tokens=partial.prompt_tokens,
            token_ids=[list(partial.token_ids[r]) for r in rows],
            token_logprobs=[list(partial.token_logprobs[r]) for r in rows],
            finish=[partial.finish[r] for r in rows],
            hidden=partial.hidden[torch.tensor(list(rows), dtype=torch.long, device=self._device)],
            forward_tokens=partial.forward_tokens,
            live=kept,
            generator=partial.generator,
        )
        if kept:
            # Copying cache rows is a memory gather: the prefix is not run through the model again.
            identity = gather.numel() == len(partial.live) and bool(
                torch.equal(gather, torch.arange(len(partial.live), device=self._device))
            )
            cache, attention, next_position, logits = partial.live_tensors()
            selected.cache = cache if share and identity else _copy_cache(cache, gather)
            selected.attention = attention[gather]
            selected.next_position = next_position[gather]
            selected.logits = logits[gather]
        return selected

    def _feed(self, partial: _Partial, chosen: torch.Tensor, done: torch.Tensor) -> None:
        """Run the chosen tokens, then drop the rows that finished from the cache.

        Finished rows are fed too, so their hidden state is the one after their final token
        (EOS or the max_tokens one): value and reward heads see the whole response."""
        _, attention, next_position, _ = partial.live_tensors()
        partial.attention = torch.cat([attention, attention.new_ones((len(partial.live), 1))], dim=-1)
        self._forward(partial, chosen.unsqueeze(-1), next_position.unsqueeze(-1))
        partial.next_position = next_position + 1
        if done.any():
            self._keep_live(partial, (~done).nonzero().squeeze(-1))

    @staticmethod
    def _keep_live(partial: _Partial, keep: torch.Tensor) -> None:
        """Keep only these cache rows (indices into `partial.live`); the others have finished."""
        partial.live = [partial.live[i] for i in keep.tolist()]
        if partial.live:
            cache, attention, next_position, logits = partial.live_tensors()
            cache.batch_select_indices(keep)
            partial.attention, partial.logits = attention[keep], logits[keep]
            partial.next_position = next_position[keep]

    def _record(self, partial: _Partial, chosen: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """Append one token per live row; mark and return the rows that finished."""
        sampling = partial.sampling
        for row, token, logprob in zip(partial.live, chosen.tolist(), logprobs.tolist()):
            partial.token_ids[row].append(token)
            partial.token_logprobs[row].append(logprob)
        stopped = torch.isin(chosen, self.eos_token_ids)
        if sampling.stop:
            window = stop_window(sampling.stop)
            tails = [partial.token_ids[row][-window:] for row in partial.live]
            texts = self.tokenizer.batch_decode(tails, skip_special_tokens=True)
            stopped |= torch.tensor([any(s in t for s in sampling.stop) for t in texts], device=self._device)
        done = []
        for row, hit_stop in zip(partial.live, stopped.tolist()):
            if hit_stop:
                partial.finish[row] = FinishReason.STOP
            elif len(partial.token_ids[row]) >= sampling.max_tokens:
                partial.finish[row] = FinishReason.LENGTH
            done.append(partial.finish[row] is not None)
        return torch.tensor(done, dtype=torch.bool, device=self._device)

    def _run(self, partial: _Partial, steps: int, cancel: threading.Event | None) -> None:
        """Up to `steps` sampled tokens for every live row, capped by sampling.max_tokens."""
        sampling = partial.sampling
        for _ in range(steps):
            if not partial.live:
                return
            check_cancelled(cancel)
            _, _, _, logits = partial.live_tensors()
            chosen, logprobs = draw(logits, sampling, partial.generator)
            self._feed(partial, chosen, self._record(partial, chosen, logprobs))

    # -- Policy interface -------------------------------------------------------------------------

    @torch.inference_mode()
    def sample(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> SampleBatch:
        if n < 1 or not prompts:
            raise ValueError("sample needs at least one prompt and n >= 1")
        with self._lock:
            check_cancelled(cancel)
            partial = self._begin(prompts, sampling)
            _, attention, _, _ = partial.live_tensors()
            prompt_tokens = attention.sum(-1).tolist()
            partial = self._select(partial, [p for p in range(len(prompts)) for _ in range(n)], share=True)
            self._run(partial, sampling.max_tokens, cancel)
        completions = [self.completion(partial, row) for row in range(partial.rows)]
        return SampleBatch(
            completions=[completions[i * n : (i + 1) * n] for i in range(len(prompts))],
            prompt_tokens=prompt_tokens,
            forward_tokens=partial.forward_tokens,
        )

    def begin(self, prompt: ChatPrompt, sampling: SamplingParams, cancel: threading.Event | None = None) -> _Partial:
        return self.begin_many([prompt], sampling, cancel)

    @torch.inference_mode()
    def begin_many(
        self, prompts: Sequence[ChatPrompt], sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> _Partial:
        if not prompts:
            raise ValueError("begin_many needs at least one prompt")
        with self._lock:
            check_cancelled(cancel)
            return self._begin(prompts, sampling)

    @torch.inference_mode()
    def extend(
        self, partial: PartialResponses, k: int, block_tokens: int, cancel: threading.Event | None = None
    ) -> _Partial:
        if k < 1 or block_tokens < 1:
            raise ValueError("extend needs k >= 1 and block_tokens >= 1")
        with self._lock:
            check_cancelled(cancel)
            children = self._select(owned(partial, _Partial), [r for r in range(partial.rows) for _ in range(k)])
            self._run(children, block_tokens, cancel)
            return children

    @torch.inference_mode()
    def select(self, partial: PartialResponses, rows: Sequence[int]) -> _Partial:
        with self._lock:
            return self._select(owned(partial, _Partial), rows)

    @torch.inference_mode()
    def next_token_logprobs(self, partial: PartialResponses) -> torch.Tensor:
        sampling = partial.sampling
        if sampling.greedy:
            return self._next_token(partial, lambda logits: torch.log_softmax(logits.float(), dim=-1))
        return self._next_token(partial, lambda logits: reference_logprobs(logits, sampling))

    @torch.inference_mode()
    def next_token_logits(self, partial: PartialResponses) -> torch.Tensor:
        return self._next_token(partial, lambda logits: logits.float())

    def _next_token(self, partial: PartialResponses, transform: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`transform` of the live rows' next-token logits, [R, V]; finished rows all -inf."""
        state = owned(partial, _Partial)
        logits = state.live_tensors()[3] if state.live else None
        vocab = logits.shape[-1] if logits is not None else int(self.model.config.vocab_size)
        result = torch.full((state.rows, vocab), float("-inf"), device=self._device)
        if logits is not None:
            result[torch.tensor(state.live, device=self._device)] = transform(logits)
        return result

    @torch.inference_mode()
    def append(
        self,
        partial: PartialResponses,
        tokens: Sequence[int],
        logprobs: Sequence[float],
        cancel: threading.Event | None = None,
    ) -> _Partial:
        partial = owned(partial, _Partial)
        with self._lock:
            check_cancelled(cancel)
            if partial.live:
                chosen = torch.tensor([tokens[row] for row in partial.live], device=self._device)
                chosen_logprobs = torch.tensor([logprobs[row] for row in partial.live], device=self._device)
                self._feed(partial, chosen, self._record(partial, chosen, chosen_logprobs))
            return partial

    @torch.inference_mode()
    def branch(
        self, partial: PartialResponses, tokens: Sequence[Sequence[int]], cancel: threading.Event | None = None
    ) -> _Partial:
        partial = owned(partial, _Partial)
        with self._lock:
            check_cancelled(cancel)
            parents = [r for r, row_tokens in enumerate(tokens) for _ in row_tokens]
            flat = [t for row_tokens in tokens for t in row_tokens]
            logprobs = self.next_token_logprobs(partial)
            children = self._select(partial, parents)
            if not children.live:
                return children
            chosen = torch.tensor([flat[row] for row in children.live], device=self._device)
            chosen_logprobs = logprobs[torch.tensor([parents[row] for row in children.live]), chosen]
            self._feed(children, chosen, self._record(children, chosen, chosen_logprobs))
            return children

    @torch.inference_mode()
    def feed_tokens(self, partial: _Partial, tokens: Sequence[Sequence[int]]) -> _Partial:
        """Teacher-force given tokens onto the live rows (row r gets tokens[r]) in one forward over
        their cached prefixes, recording each row's hidden state after its last token. Rows given
        fewer tokens than the longest (they ended) leave the cache. Only the cache and `hidden`
        are kept: this serves as hidden-state shadow of a backend that gives none (vLLM)."""
        with self._lock:
            lengths = torch.tensor([len(tokens[row]) for row in partial.live], dtype=torch.long, device=self._device)
            width = int(lengths.max()) if partial.live else 0
            if width == 0:
                return partial
            ids = torch.full(
                (len(partial.live), width), self.tokenizer.pad_token_id, dtype=torch.long, device=self._device
            )
            for i, row in enumerate(partial.live):
                ids[i, : len(tokens[row])] = torch.tensor(tokens[row], dtype=torch.long)
            offsets = torch.arange(width, device=self._device)
            fed = (offsets < lengths[:, None]).long()
            cache, attention, next_position, _ = partial.live_tensors()
            assert partial.hidden is not None
            partial.attention = torch.cat([attention, fed], dim=-1)
            out = self.model(
                input_ids=ids,
                attention_mask=partial.attention,
                position_ids=next_position[:, None] + offsets,
                past_key_values=cache,
                use_cache=True,
                output_hidden_states=True,
                logits_to_keep=1,
            )
            fed_rows = (lengths > 0).nonzero().squeeze(-1)
            last = out.hidden_states[-1][fed_rows, lengths[fed_rows] - 1].float()
            partial.hidden[torch.tensor(partial.live, device=self._device)[fed_rows]] = last
            partial.forward_tokens += int(lengths.sum())
            partial.next_position = next_position + lengths
            partial.logits = out.logits[:, -1, :]
            if bool((lengths < width).any()):  # a shorter row has padding in its cache: it ended
                self._keep_live(partial, (lengths == width).nonzero().squeeze(-1))
            return partial

    def partial_texts(self, partial: PartialResponses) -> list[str]:
        return response_texts(self.detokenize_many, partial.token_ids, self._eos, partial.sampling.stop)

    def completion(self, partial: PartialResponses, row: int) -> Completion:
        ids = partial.token_ids[row]
        finish = partial.finish[row] or FinishReason.LENGTH
        return Completion(self._text(ids, partial.sampling.stop), list(ids), list(partial.token_logprobs[row]), finish)

    @torch.inference_mode()
    def prefix_hidden_states(self, prompt: ChatPrompt, responses: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        prompt_ids = self.prompt_ids(prompt)
        sequences = [prompt_ids + list(r) for r in responses]
        width = max(len(s) for s in sequences)
        input_ids, attention = self._left_padded(sequences)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        with self._lock:
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                output_hidden_states=True,
                logits_to_keep=1,
            )
        hidden = out.hidden_states[-1].float()
        # Row t of each result: the state after t response tokens, i.e. at prompt position -1 + t.
        return [hidden[i, width - len(r) - 1 :, :].clone() for i, r in enumerate(responses)]


def _copy_cache(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding `rows` of `cache` (repeats allowed); the source stays usable."""
    copied = DynamicCache()
    for index, layer in enumerate(cache.layers):
        if not isinstance(layer, CacheLayerMixin) or layer.keys is None or layer.values is None:
            raise TypeError(f"cannot copy rows of a {type(layer).__name__} cache layer")
        copied.update(layer.keys[rows], layer.values[rows], index)
    return copied
