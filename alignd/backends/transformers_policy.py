"""Policy on a plain transformers causal LM (the CPU default; CUDA when asked or present).

All decoding goes through one mechanism, `_Partial` plus `_run`:
- `begin` prefills each distinct prompt once;
- `select` gathers KV-cache rows (with repeats), so n candidates or K blocks share one prefill
  and a block never re-encodes its prefix;
- `_run` draws tokens for the live rows, drops rows that finish from the cache, and records each
  row's final-layer hidden state at its last token, which value heads read at no extra forward.

Every model call goes through one StepBatcher (step_batching.py): the one-token steps of
concurrent requests run as one forward over all their rows (`_run_steps`), their caches merged
into one buffer (kv_cache.py); their prompt prefills likewise; every other call runs alone in
its turn.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from alignd.backends.base import (
    Capability,
    ChatPrompt,
    Completion,
    FinishReason,
    MemoryHold,
    PartialResponses,
    Policy,
    SampleBatch,
    SamplingParams,
    Steering,
    check_cancelled,
    owned,
)
from alignd.backends.cpu_matmul import use_small_batch_linears
from alignd.backends.kv_cache import CacheMerger, KVCache
from alignd.backends.preference_vectors import PreferenceVectors
from alignd.backends.row_steering import RowSteering
from alignd.backends.step_batching import DECODE, StepBatcher, TokenBudget
from alignd.backends.text import TokenizerText, eos_token_ids, response_text, response_texts, stop_window
from alignd.errors import Cancelled, InvalidArgument
from alignd.sampling import RowStreams, draw, reference_logprobs

_PREFILL = "prefill"  # the batcher's kind for prompt prefills (empty caches), merged with each other
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """The dtype to load weights in. `auto` is bfloat16 on CUDA (where supported) and on CPUs
    with native bf16 arithmetic (AVX-512 BF16 or AMX), float32 elsewhere: without native support
    bf16 products are emulated, and a batched step runs slower than float32 (1.6x for 16 rows of
    SmolLM2 on an AVX-512 CPU without BF16, though one row ran in 0.8x: half the bytes to read)."""
    if dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(_DTYPES)}, not {dtype!r}")
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    capabilities = torch.cpu.get_capabilities()
    return "bfloat16" if capabilities.get("avx512_bf16") or capabilities.get("amx_bf16") else "float32"


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
    keys: np.ndarray  # uint64 [R]: each row's random stream
    streams: RowStreams  # issues the keys, shared by every partial of the request
    cache: KVCache | None = None
    attention: torch.Tensor | None = None  # [live, T]
    next_position: torch.Tensor | None = None  # [live]
    logits: torch.Tensor | None = None  # [live, V], next-token logits
    steer: torch.Tensor | None = None  # [live, vectors]: each row's preference-vector strengths

    def live_tensors(self) -> tuple[KVCache, torch.Tensor, torch.Tensor, torch.Tensor]:
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
        max_batch_tokens: int = 65_536,
        gather_seconds: float = 0.05,
        vectors: PreferenceVectors | None = None,
    ) -> None:
        """Load from a checkpoint folder, or wrap an in-memory model and tokenizer (tests).
        `dtype`: float32, bfloat16, float16, or auto (`resolve_dtype`).
        `small_batch_matmul`: on CPU, use the faster product for decoding steps (cpu_matmul.py).
        `max_batch_tokens`: key/value tokens (rows x length) that the requests decoding at once
        may hold together (`reserve`), and so one merged step; `gather_seconds`: longest wait
        for concurrent requests' next steps before a step runs without them (StepBatcher).
        `vectors`: preference vectors that requests may steer with, per row (row_steering.py)."""
        self._device = resolve_device(device)
        if model is None:
            if checkpoint is None:
                raise ValueError("either checkpoint or model is required")
            dtype = resolve_dtype(dtype, self._device)
            tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
            model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=_DTYPES[dtype])
        # transformers types `to` through functools.wraps, which reads the device as `self`.
        self.model = model.to(self._device).eval()  # type: ignore[arg-type]
        if small_batch_matmul and self._device.type == "cpu":
            use_small_batch_linears(self.model)
        self._steering = RowSteering(self.model, vectors) if vectors is not None else None
        if vectors is not None:
            self.vectors = dict(vectors.infos)
            self.capabilities = self.capabilities | {Capability.ROW_STEERING}
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
        self.dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        self._tokenizer_lock = threading.Lock()  # tokenizer calls come from several worker threads
        self._pad_id = int(self.tokenizer.pad_token_id)
        # One model call at a time, concurrent requests' decoding steps merged into one.
        self.batcher: StepBatcher[_Step] = StepBatcher(
            self._run_steps, max_tokens=max_batch_tokens, gather_seconds=gather_seconds
        )
        self._merger = CacheMerger()
        self.memory = TokenBudget(max_batch_tokens)

    def reserve(
        self, tokens: int, cancel: threading.Event | None = None
    ) -> contextlib.AbstractContextManager[MemoryHold]:
        return self.memory.hold(tokens, cancel)

    # -- text ---------------------------------------------------------------------------------

    def _text(self, ids: list[int], stops: Sequence[str]) -> str:
        return response_text(self.detokenize, ids, self._eos, stops)

    # -- the decoding mechanism ------------------------------------------------------------------

    def _forward(
        self,
        partial: _Partial,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        cancel: threading.Event | None = None,
    ) -> None:
        """Feed `input_ids` [live, width] to the live rows (their attention already covers them):
        a prefill (empty cache) joins the other pending prefills in one forward, a one-token step
        the other pending decoding steps."""
        assert partial.attention is not None and partial.cache is not None  # set by _begin
        rows, width = input_ids.shape
        prefill = partial.cache.length == 0
        assert prefill or width == 1, "only prefills feed several tokens through the batcher"
        partial.cache.reserve(width)
        kind = _PREFILL if prefill else DECODE
        self.batcher.step(
            _Step(partial, input_ids, positions),
            rows=rows,
            length=partial.attention.shape[1],
            kind=kind,
            cancel=cancel,
        )

    @torch.inference_mode()
    def _run_steps(self, steps: list[_Step]) -> None:
        """One forward for the steps of one or more requests (the batcher's call): a step alone on
        its own cache; prefills left-padded to the longest prompt, each request's cache then
        filled with its columns; decoding steps over their caches merged (`CacheMerger`), each
        request then given views of its rows."""
        first = steps[0].partial
        assert first.cache is not None
        steer = _merged_steer([step.partial.steer for step in steps], [step.input_ids.shape[0] for step in steps])
        if len(steps) == 1:
            logits, hidden = self._model_step(
                steps[0].input_ids, first.attention, steps[0].positions, first.cache, steer
            )
        elif first.cache.length == 0:
            width = max(step.input_ids.shape[1] for step in steps)
            pads = [width - step.input_ids.shape[1] for step in steps]
            merged = self._empty_cache(sum(step.input_ids.shape[0] for step in steps), width)
            logits, hidden = self._model_step(
                torch.cat([F.pad(step.input_ids, (pad, 0), value=self._pad_id) for step, pad in zip(steps, pads)]),
                torch.cat([F.pad(self._attention(step), (pad, 0)) for step, pad in zip(steps, pads)]),
                torch.cat([F.pad(step.positions, (pad, 0)) for step, pad in zip(steps, pads)]),
                merged,
                steer,
            )
            for step, rows, pad in zip(steps, _spans(steps), pads):
                assert step.partial.cache is not None
                step.partial.cache.fill(merged, rows, pad)
        else:
            caches = [step.partial.live_tensors()[0] for step in steps]
            merged, spans, pads = self._merger.merge(caches)
            logits, hidden = self._model_step(
                torch.cat([step.input_ids for step in steps]),
                torch.cat([F.pad(self._attention(step), (pad, 0)) for step, pad in zip(steps, pads)]),
                torch.cat([step.positions for step in steps]),
                merged,
                steer,
            )
            self._merger.hand_back(merged, caches, spans, pads)
        for step, rows in zip(steps, _spans(steps)):
            # A merged batch's rows are copied out: a view would keep the whole batch's logits.
            self._take_outputs(step, logits[rows] if len(steps) == 1 else logits[rows].clone(), hidden[rows])

    def _model_step(
        self,
        input_ids: torch.Tensor,
        attention: torch.Tensor | None,
        positions: torch.Tensor,
        cache: KVCache,
        steer: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward of `input_ids` over `cache` (advanced past them), each row steered by its
        strengths in `steer`: the next-token logits and the final-layer hidden state at the last
        position of every row."""
        with self._steered(steer):
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
                output_hidden_states=True,
                logits_to_keep=1,
            )
        cache.advance(input_ids.shape[1])
        return out.logits[:, -1, :], out.hidden_states[-1][:, -1, :]

    def _steered(self, steer: torch.Tensor | None) -> contextlib.AbstractContextManager[None]:
        """The forward inside runs each row with its strengths `steer` [rows, vectors] (None: unsteered)."""
        return self._steering.rows(steer) if self._steering is not None else contextlib.nullcontext()

    @staticmethod
    def _attention(step: _Step) -> torch.Tensor:
        assert step.partial.attention is not None
        return step.partial.attention

    def _empty_cache(self, rows: int, capacity: int) -> KVCache:
        return KVCache.empty(self.model.config.get_text_config(), rows, capacity, self.model.dtype, self._device)

    def _take_outputs(self, step: _Step, logits: torch.Tensor, hidden: torch.Tensor) -> None:
        partial = step.partial
        assert partial.attention is not None and partial.hidden is not None
        partial.logits = logits
        partial.hidden[torch.tensor(partial.live, device=self._device)] = hidden.float()
        partial.forward_tokens += int(partial.attention[:, -step.input_ids.shape[1] :].sum())

    def _begin(
        self,
        prompts: Sequence[ChatPrompt],
        sampling: SamplingParams,
        cancel: threading.Event | None,
        steering: Sequence[Steering] | None = None,
    ) -> _Partial:
        input_ids, attention = self._left_padded([self.prompt_ids(p) for p in prompts])
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        rows = len(prompts)
        streams = RowStreams(sampling.seed)
        partial = _Partial(
            prompt=prompts[0],
            sampling=sampling,
            prompt_tokens=int(attention.sum()),
            token_ids=[[] for _ in range(rows)],
            token_logprobs=[[] for _ in range(rows)],
            finish=[None] * rows,
            hidden=torch.zeros((rows, self.hidden_size), device=self._device),
            live=list(range(rows)),
            # Room for the whole response (plus its final token, which is fed for the hidden state).
            cache=self._empty_cache(rows, input_ids.shape[1] + sampling.max_tokens + 1),
            attention=attention,
            next_position=positions[:, -1] + 1,
            keys=streams.new(rows),
            streams=streams,
            steer=self._strengths(steering if steering is not None else [sampling.steering] * rows),
        )
        self._forward(partial, input_ids, positions, cancel)
        return partial

    def _strengths(self, rows: Sequence[Steering]) -> torch.Tensor | None:
        """Per-row strengths [rows, vectors] for the steering hooks; None when no row is steered."""
        for steering in rows:
            for name, _ in steering:
                if name not in self.vectors:
                    raise InvalidArgument(
                        "preference_vectors", f"unknown preference vector {name!r}; available: {sorted(self.vectors)}"
                    )
        if self._steering is None:
            return None
        return self._steering.strengths([dict(steering) for steering in rows], self._device)

    def _left_padded(self, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, width] left-padded with the pad token, and their attention mask."""
        width = max(len(s) for s in sequences)
        pad = self._pad_id
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
            keys=partial.streams.copies(partial.keys, rows),
            streams=partial.streams,
        )
        if kept:
            # Copying cache rows is a memory gather: the prefix is not run through the model again.
            identity = gather.numel() == len(partial.live) and bool(
                torch.equal(gather, torch.arange(len(partial.live), device=self._device))
            )
            cache, attention, next_position, logits = partial.live_tensors()
            # Room for the longest remaining response, plus its final token.
            room = partial.sampling.max_tokens + 1 - min(len(selected.token_ids[i]) for i in kept)
            selected.cache = cache if share and identity else cache.select(gather, room)
            selected.attention = attention[gather]
            selected.next_position = next_position[gather]
            selected.logits = logits[gather]
            selected.steer = partial.steer[gather] if partial.steer is not None else None
        return selected

    def _feed(
        self, partial: _Partial, chosen: torch.Tensor, done: torch.Tensor, cancel: threading.Event | None
    ) -> None:
        """Run the chosen tokens, then drop the rows that finished from the cache.

        Finished rows are fed too, so their hidden state is the one after their final token
        (EOS or the max_tokens one): value and reward heads see the whole response."""
        _, attention, next_position, _ = partial.live_tensors()
        partial.attention = torch.cat([attention, attention.new_ones((len(partial.live), 1))], dim=-1)
        self._forward(partial, chosen.unsqueeze(-1), next_position.unsqueeze(-1), cancel)
        partial.next_position = next_position + 1
        if done.any():
            self._keep_live(partial, (~done).nonzero().squeeze(-1))

    @staticmethod
    def _keep_live(partial: _Partial, keep: torch.Tensor) -> None:
        """Keep only these cache rows (indices into `partial.live`); the others have finished."""
        partial.live = [partial.live[i] for i in keep.tolist()]
        if partial.live:
            cache, attention, next_position, logits = partial.live_tensors()
            cache.keep(keep)
            partial.attention, partial.logits = attention[keep], logits[keep]
            partial.next_position = next_position[keep]
            partial.steer = partial.steer[keep] if partial.steer is not None else None

    def _record(self, partial: _Partial, chosen: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
        """Append one token per live row; mark and return the rows that finished."""
        sampling = partial.sampling
        for row, token, logprob in zip(partial.live, chosen.tolist(), logprobs.tolist()):
            partial.token_ids[row].append(token)
            partial.token_logprobs[row].append(logprob)
        stopped = torch.isin(chosen, self.eos_token_ids)
        if sampling.stop:
            window = stop_window(sampling.stop)
            texts = self.detokenize_many([partial.token_ids[row][-window:] for row in partial.live])
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
        before = sum(len(ids) for ids in partial.token_ids)
        try:
            with self.batcher.session():
                for _ in range(steps):
                    if not partial.live:
                        return
                    check_cancelled(cancel)
                    _, _, _, logits = partial.live_tensors()
                    positions = np.array([len(partial.token_ids[row]) for row in partial.live])
                    chosen, logprobs = draw(logits, sampling, partial.keys[partial.live], positions)
                    self._feed(partial, chosen, self._record(partial, chosen, logprobs), cancel)
        except Cancelled as stopped:
            # What was generated before the stop still counts (against the caller's token quota).
            stopped.generated = sum(len(ids) for ids in partial.token_ids) - before
            raise

    # -- Policy interface -------------------------------------------------------------------------

    @torch.inference_mode()
    def sample(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> SampleBatch:
        if n < 1 or not prompts:
            raise ValueError("sample needs at least one prompt and n >= 1")
        check_cancelled(cancel)
        partial = self._begin(prompts, sampling, cancel)
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
        self,
        prompts: Sequence[ChatPrompt],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        steering: Sequence[Steering] | None = None,
    ) -> _Partial:
        if not prompts:
            raise ValueError("begin_many needs at least one prompt")
        if steering is not None and len(steering) != len(prompts):
            raise ValueError("begin_many needs one steering per prompt")
        check_cancelled(cancel)
        return self._begin(prompts, sampling, cancel, steering)

    @torch.inference_mode()
    def extend(
        self, partial: PartialResponses, k: int, block_tokens: int, cancel: threading.Event | None = None
    ) -> _Partial:
        if k < 1 or block_tokens < 1:
            raise ValueError("extend needs k >= 1 and block_tokens >= 1")
        check_cancelled(cancel)
        children = self._select(owned(partial, _Partial), [r for r in range(partial.rows) for _ in range(k)])
        self._run(children, block_tokens, cancel)
        return children

    @torch.inference_mode()
    def advance(self, partial: PartialResponses, tokens: int, cancel: threading.Event | None = None) -> _Partial:
        if tokens < 1:
            raise ValueError("advance needs tokens >= 1")
        check_cancelled(cancel)
        partial = owned(partial, _Partial)
        self._run(partial, tokens, cancel)  # in place: the cache grows, nothing is copied
        return partial

    @torch.inference_mode()
    def select(self, partial: PartialResponses, rows: Sequence[int]) -> _Partial:
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
        check_cancelled(cancel)
        if partial.live:
            chosen = torch.tensor([tokens[row] for row in partial.live], device=self._device)
            chosen_logprobs = torch.tensor([logprobs[row] for row in partial.live], device=self._device)
            self._feed(partial, chosen, self._record(partial, chosen, chosen_logprobs), cancel)
        return partial

    @torch.inference_mode()
    def branch(
        self, partial: PartialResponses, tokens: Sequence[Sequence[int]], cancel: threading.Event | None = None
    ) -> _Partial:
        partial = owned(partial, _Partial)
        check_cancelled(cancel)
        parents = [r for r, row_tokens in enumerate(tokens) for _ in row_tokens]
        flat = [t for row_tokens in tokens for t in row_tokens]
        logprobs = self.next_token_logprobs(partial)
        children = self._select(partial, parents)
        if not children.live:
            return children
        chosen = torch.tensor([flat[row] for row in children.live], device=self._device)
        chosen_logprobs = logprobs[torch.tensor([parents[row] for row in children.live]), chosen]
        self._feed(children, chosen, self._record(children, chosen, chosen_logprobs), cancel)
        return children

    @torch.inference_mode()
    def feed_tokens(self, partial: _Partial, tokens: Sequence[Sequence[int]]) -> _Partial:
        """Teacher-force given tokens onto the live rows (row r gets tokens[r]) in one forward over
        their cached prefixes, recording each row's hidden state after its last token. Rows given
        fewer tokens than the longest (they ended) leave the cache. Only the cache and `hidden`
        are kept: this serves as hidden-state shadow of a backend that gives none (vLLM)."""
        lengths = torch.tensor([len(tokens[row]) for row in partial.live], dtype=torch.long, device=self._device)
        width = int(lengths.max()) if partial.live else 0
        if width == 0:
            return partial
        ids = torch.full((len(partial.live), width), self._pad_id, dtype=torch.long, device=self._device)
        for i, row in enumerate(partial.live):
            ids[i, : len(tokens[row])] = torch.tensor(tokens[row], dtype=torch.long)
        offsets = torch.arange(width, device=self._device)
        fed = (offsets < lengths[:, None]).long()
        cache, attention, next_position, _ = partial.live_tensors()
        assert partial.hidden is not None
        partial.attention = torch.cat([attention, fed], dim=-1)
        cache.reserve(width)

        def forward() -> Any:
            with self._steered(partial.steer):  # the rows' own policies, as when they were prefilled
                return self.model(
                    input_ids=ids,
                    attention_mask=partial.attention,
                    position_ids=next_position[:, None] + offsets,
                    past_key_values=cache,
                    use_cache=True,
                    output_hidden_states=True,
                    logits_to_keep=1,
                )

        out: Any = self.batcher.alone(forward)
        cache.advance(width)
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
        out: Any = self.batcher.alone(
            lambda: self.model(
                input_ids=input_ids,
                attention_mask=attention,
                position_ids=positions,
                output_hidden_states=True,
                logits_to_keep=1,
            )
        )
        hidden = out.hidden_states[-1].float()
        # Row t of each result: the state after t response tokens, i.e. at prompt position -1 + t.
        return [hidden[i, width - len(r) - 1 :, :].clone() for i, r in enumerate(responses)]


@dataclass(eq=False)
class _Step:
    """One request's pending forward: `input_ids` [live, width] fed to `partial`'s live rows."""

    partial: _Partial
    input_ids: torch.Tensor
    positions: torch.Tensor


def _spans(steps: Sequence[_Step]) -> list[slice]:
    """Each step's rows in a forward over all of them, in step order."""
    spans, start = [], 0
    for step in steps:
        spans.append(slice(start, start + step.input_ids.shape[0]))
        start += step.input_ids.shape[0]
    return spans


def _merged_steer(steers: Sequence[torch.Tensor | None], rows: Sequence[int]) -> torch.Tensor | None:
    """The strengths of a merged forward's rows, in step order (unsteered steps' rows zero)."""
    present = [steer for steer in steers if steer is not None]
    if not present:
        return None
    if len(steers) == 1:
        return present[0]
    zeros = present[0].new_zeros
    return torch.cat(
        [steer if steer is not None else zeros((count, present[0].shape[1])) for steer, count in zip(steers, rows)]
    )
