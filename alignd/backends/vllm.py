"""Policy on vLLM's async engine, in-process: continuous batching across concurrent requests,
automatic prefix caching, and vLLM's own tensor/pipeline/data parallelism for big models.

The engine runs on its own event loop thread; strategies call this policy from worker threads,
so every call submits coroutines to that loop and waits. What it serves:
- `sample`: one engine request per prompt with `n` and the sampled token's log-probability under
  the processed (temperature, top-k, top-p) distribution, i.e. pi_ref as the KL figures need;
- `extend`: one request per row with `n=k` and `max_tokens=B`, prompt = prompt + the row's tokens
  as token ids; prefix caching finds the shared prefix in the KV cache, so a block does not
  re-encode it (`prefix_cache_hit_rate` reports what the engine found);
- no per-token control (tokenwise controlled decoding, linear alignment): refused;
- preference vectors only as presets: vLLM serves LoRA adapters per request, each at the scale it
  was loaded with, so each (vector, eta) in `VLLMOptions.vector_presets` is loaded as its own
  adapter (vector_presets.py) and a request may steer with one vector at one of those strengths;
  other strengths and mixes are refused (FAILED_PRECONDITION);
- hidden states for value heads only with a *shadow* attached (`attach_hidden_states`): a
  transformers copy of the model that follows each partial response with its own KV cache and is
  fed each block's sampled tokens (K x B tokens per block, the prefix never re-encoded).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignd.backends.base import (
    Capability,
    ChatPrompt,
    Completion,
    FinishReason,
    PartialResponses,
    Policy,
    SampleBatch,
    SamplingParams,
    Steering,
    check_cancelled,
    owned,
)
from alignd.backends.text import TokenizerText, eos_token_ids, response_text, response_texts, stop_window
from alignd.backends.vector_presets import DEFAULT_PRESETS, preset_name, write_presets
from alignd.errors import Cancelled, FailedPrecondition

if TYPE_CHECKING:  # vllm is imported when the engine starts, not with this module
    from vllm import SamplingParams as EngineSampling
    from vllm.lora.request import LoRARequest

    from alignd.backends.preference_vectors import PreferenceVectors

log = logging.getLogger("alignd.vllm")

# Fraction of memory vLLM may take for weights and KV cache. On the CPU build it is a share of
# the NUMA node's RAM and vLLM's GPU default (0.92) does not fit beside anything else.
CPU_MEMORY_UTILIZATION = 0.25
# Prefix caching reuses whole KV blocks. vLLM's CPU default is 128 tokens, so a short prompt plus a
# few blocks of 8 tokens never fills one; 32 is the smallest its CPU attention accepts.
CPU_BLOCK_SIZE = 32
POLL_SECONDS = 0.05  # how often a waiting caller looks at its cancel event


@dataclass(frozen=True)
class VLLMOptions:
    """Engine options passed through to vLLM (`alignd serve --tensor-parallel-size ...`)."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float | None = None  # None: vLLM's default on GPUs, 0.25 on CPUs
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    block_size: int | None = None  # KV-cache block in tokens; None: vLLM's default on GPUs, 32 on CPUs
    enable_prefix_caching: bool = True
    enforce_eager: bool = False
    # Strengths each preference vector is served at (one LoRA adapter each); with vectors loaded,
    # the engine runs with LoRA enabled, which on CPUs turns off vLLM's graph compilation.
    vector_presets: tuple[float, ...] = DEFAULT_PRESETS
    extra: dict[str, Any] = field(default_factory=dict)  # any other AsyncEngineArgs field


class EngineStartError(RuntimeError):
    """The vLLM engine did not start (reported as one line by `alignd serve`)."""


@dataclass
class _Partial(PartialResponses):
    prompt_ids: list[list[int]] = field(default_factory=list)  # each row's prompt, as token ids
    blocks: int = 0  # extend calls so far: seeds each block's draws differently
    shadow: PartialResponses | None = None  # the hidden-state shadow's rows, aligned with ours


class VLLMPolicy(TokenizerText, Policy):
    capabilities = frozenset({Capability.SAMPLE, Capability.EXTEND})

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        model_name: str | None = None,
        dtype: str = "float32",
        options: VLLMOptions = VLLMOptions(),
        seed: int = 0,
        vectors: PreferenceVectors | None = None,
    ) -> None:
        # vLLM reports usage statistics over the network unless told not to; a server should not.
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        try:
            import torch
            from transformers import AutoTokenizer
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.lora.request import LoRARequest
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as error:
            raise EngineStartError(f"the vllm backend needs vLLM installed ({error}); see README: Install") from None
        self.checkpoint = Path(checkpoint)
        self.model_name = model_name or self.checkpoint.name
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        self._tokenizer_lock = threading.Lock()
        self.options = options
        self.dtype = dtype
        on_gpu = torch.cuda.is_available()
        self.device = "cuda" if on_gpu else "cpu"
        utilization = options.gpu_memory_utilization
        block_size = options.block_size
        if not on_gpu:
            utilization = CPU_MEMORY_UTILIZATION if utilization is None else utilization
            block_size = CPU_BLOCK_SIZE if block_size is None else block_size
        args: dict[str, Any] = dict(
            model=str(checkpoint),
            tokenizer=str(checkpoint),
            dtype=dtype,
            seed=seed,
            # KL figures need log pi_ref under the sampling distribution, not the raw model's.
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=options.enable_prefix_caching,
            enforce_eager=options.enforce_eager,
            tensor_parallel_size=options.tensor_parallel_size,
            pipeline_parallel_size=options.pipeline_parallel_size,
            data_parallel_size=options.data_parallel_size,
        )
        for name in ("max_model_len", "max_num_seqs"):
            if getattr(options, name) is not None:
                args[name] = getattr(options, name)
        if block_size is not None:
            args["block_size"] = block_size
        if utilization is not None:
            args["gpu_memory_utilization"] = utilization
        self.preference_vectors = vectors
        self._adapters: dict[tuple[str, float], LoRARequest] = {}
        self._adapter_folder: str | None = None
        if vectors is not None:
            presets = tuple(sorted({float(eta) for eta in options.vector_presets if eta != 0.0}))
            rank = max(max(d.down.shape[0] for d in layers.values()) for layers in vectors.deltas.values())
            ranks = [r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank]
            if not ranks:
                raise EngineStartError(f"preference vectors of rank {rank}: vLLM serves LoRA ranks up to 512")
            self._adapter_folder = tempfile.mkdtemp(prefix="alignd-vector-presets-")
            try:
                folders = write_presets(vectors, presets, Path(self._adapter_folder), str(checkpoint))
            except BaseException:
                self._remove_adapters()
                raise
            self._adapters = {
                key: LoRARequest(preset_name(*key), i + 1, str(folder))
                for i, (key, folder) in enumerate(folders.items())
            }
            self.vectors = dict(vectors.infos)
            self.vector_presets = {name: presets for name in vectors.names}
            args["enable_lora"] = True
            args["max_lora_rank"] = ranks[0]
            args["max_loras"] = max(1, min(len(self._adapters), 8))
        args.update(options.extra)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="alignd-vllm-loop", daemon=True)
        self._thread.start()

        async def start() -> Any:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

        try:
            self.engine = asyncio.run_coroutine_threadsafe(start(), self._loop).result()
        except Exception as error:
            self._stop_loop()
            self._remove_adapters()
            raise EngineStartError(
                f"vLLM engine failed to start: {type(error).__name__}: {error} (the engine's log above has the cause)"
            ) from None
        self.context_length = int(self.engine.model_config.max_model_len)
        hf_config = getattr(self.engine.model_config, "hf_config", None)
        self.eos_token_ids = eos_token_ids(self.tokenizer, hf_config)
        # The width heads must have, checked at start-up even when no shadow is attached.
        self.hidden_size = getattr(hf_config, "hidden_size", None)
        self._ids = itertools.count()
        self._stats_lock = threading.Lock()
        self.prompt_tokens_seen = 0  # prompt tokens of every engine request
        self.prompt_tokens_cached = 0  # of those, found in the prefix cache by the engine
        self._shadow: Any = None  # a TransformersPolicy (needs begin_many, select, feed_tokens)

    def check_steering(self, steering: Steering) -> None:
        if steering and self._adapter(steering) is None:
            raise FailedPrecondition(
                "the vllm backend serves preference vectors only as presets: one vector at a strength in "
                f"{sorted({eta for _, eta in self._adapters})} (vllm.vector_presets); the transformers "
                "backend serves any strengths and mixes"
            )

    def _adapter(self, steering: Steering) -> LoRARequest | None:
        """The preset adapter of a one-vector steering (None: unsteered, or no such preset)."""
        if len(steering) != 1:
            return None
        name, eta = steering[0]
        return self._adapters.get((name, float(eta)))

    def attach_hidden_states(self, shadow: Any) -> None:
        """Give value heads hidden states: `shadow` (a transformers policy on the same checkpoint)
        follows every partial response with its own KV cache. Costs the shadow's forward over
        the prompt once and K x B tokens per block; the engine does the sampling."""
        if Capability.HIDDEN_STATES not in shadow.capabilities:
            raise ValueError("the shadow policy must give hidden states")
        self._shadow = shadow
        self.hidden_size = shadow.hidden_size
        self.capabilities = VLLMPolicy.capabilities | {Capability.HIDDEN_STATES}

    def prefix_hidden_states(self, prompt: ChatPrompt, responses: Sequence[Sequence[int]]) -> list[Any]:
        if self._shadow is None:
            raise self._missing(Capability.HIDDEN_STATES)
        return self._shadow.prefix_hidden_states(prompt, responses)

    # -- text ---------------------------------------------------------------------------------

    def _text(self, ids: Sequence[int], stops: Sequence[str]) -> str:
        return response_text(self.detokenize, ids, self.eos_token_ids, stops)

    # -- engine requests --------------------------------------------------------------------------

    def _params(self, sampling: SamplingParams, n: int, max_tokens: int, seed: int | None) -> EngineSampling:
        from vllm import SamplingParams as EngineSampling
        from vllm.sampling_params import RequestOutputKind

        return EngineSampling(
            # vLLM refuses n > 1 when greedy; the n greedy answers are one answer, read n times.
            n=1 if sampling.greedy else n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=max_tokens,
            stop=list(sampling.stop) or None,
            seed=seed,
            logprobs=0,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    async def _generate(self, prompt_ids: list[int], params: EngineSampling, adapter: LoRARequest | None) -> Any:
        request_id = f"alignd-{next(self._ids)}"
        final = None
        try:
            generate = self.engine.generate({"prompt_token_ids": prompt_ids}, params, request_id, lora_request=adapter)
            async for output in generate:
                final = output
        except asyncio.CancelledError:
            await self.engine.abort(request_id)  # the caller went away: free the engine's slots now
            raise
        if final is None:
            raise RuntimeError(f"vLLM request {request_id} ended without an output")
        with self._stats_lock:
            self.prompt_tokens_seen += len(prompt_ids)
            self.prompt_tokens_cached += int(final.num_cached_tokens or 0)
        return final

    def _run_all(
        self, requests: list[tuple[list[int], EngineSampling]], steering: Steering, cancel: threading.Event | None
    ) -> list[Any]:
        """Submit all requests at once (the engine batches them), with the steering's preset
        adapter, and wait; a set `cancel` aborts them in the engine and raises Cancelled."""
        check_cancelled(cancel)
        self.check_steering(steering)
        adapter = self._adapter(steering)

        async def gather() -> list[Any]:
            return await asyncio.gather(*(self._generate(ids, params, adapter) for ids, params in requests))

        future: Future = asyncio.run_coroutine_threadsafe(gather(), self._loop)
        while True:
            try:
                return future.result(timeout=POLL_SECONDS)
            except TimeoutError:
                if cancel is not None and cancel.is_set():
                    future.cancel()  # cancels the gather: each _generate aborts its engine request
                    raise Cancelled("request cancelled; aborted in the engine") from None

    @staticmethod
    def _choices(output: Any, n: int) -> list[Any]:
        """The n choices of a request output (one greedy answer stands for all n)."""
        return [output.outputs[j % len(output.outputs)] for j in range(n)]

    def _completion(self, output: Any) -> tuple[list[int], list[float], FinishReason]:
        ids = list(output.token_ids)
        # logprobs=0: one entry per position, holding the sampled token.
        logprobs = [float(step[token].logprob) for step, token in zip(output.logprobs or [], ids)]
        finish = FinishReason.STOP if output.finish_reason == "stop" else FinishReason.LENGTH
        return ids, logprobs, finish

    # -- Policy interface -------------------------------------------------------------------------

    def sample(
        self, prompts: Sequence[ChatPrompt], n: int, sampling: SamplingParams, cancel: threading.Event | None = None
    ) -> SampleBatch:
        if n < 1 or not prompts:
            raise ValueError("sample needs at least one prompt and n >= 1")
        encoded = [self.prompt_ids(p) for p in prompts]
        params = self._params(sampling, n, sampling.max_tokens, sampling.seed)
        outputs = self._run_all([(ids, params) for ids in encoded], sampling.steering, cancel)
        completions, forward = [], 0
        for ids, output in zip(encoded, outputs):
            row = []
            for choice in self._choices(output, n):
                tokens, logprobs, finish = self._completion(choice)
                row.append(Completion(self._text(tokens, sampling.stop), tokens, logprobs, finish))
                forward += len(tokens)
            completions.append(row)
            forward += len(ids) - int(output.num_cached_tokens or 0)
        return SampleBatch(completions, [len(ids) for ids in encoded], forward)

    def begin(self, prompt: ChatPrompt, sampling: SamplingParams, cancel: threading.Event | None = None) -> _Partial:
        return self.begin_many([prompt], sampling, cancel)

    def begin_many(
        self,
        prompts: Sequence[ChatPrompt],
        sampling: SamplingParams,
        cancel: threading.Event | None = None,
        *,
        steering: Sequence[Steering] | None = None,
    ) -> _Partial:
        # Nothing runs yet: the first extend sends the prompts, and prefix caching keeps them.
        if not prompts:
            raise ValueError("begin_many needs at least one prompt")
        if steering is not None and any(s != sampling.steering for s in steering):
            raise self._missing(Capability.ROW_STEERING)
        check_cancelled(cancel)
        prompts = [self.encode(p) for p in prompts]  # the shadow reuses the ids
        ids = [self.prompt_ids(p) for p in prompts]
        rows = len(prompts)
        shadow = self._shadow.begin_many(prompts, sampling, cancel) if self._shadow is not None else None
        return _Partial(
            prompt=prompts[0],
            sampling=sampling,
            prompt_tokens=sum(len(i) for i in ids),
            token_ids=[[] for _ in range(rows)],
            token_logprobs=[[] for _ in range(rows)],
            finish=[None] * rows,
            hidden=shadow.hidden if shadow is not None else None,
            prompt_ids=ids,
            forward_tokens=shadow.forward_tokens if shadow is not None else 0,
            shadow=shadow,
        )

    def extend(
        self, partial: PartialResponses, k: int, block_tokens: int, cancel: threading.Event | None = None
    ) -> _Partial:
        if k < 1 or block_tokens < 1:
            raise ValueError("extend needs k >= 1 and block_tokens >= 1")
        partial = owned(partial, _Partial)
        sampling = partial.sampling
        live = [r for r in range(partial.rows) if partial.finish[r] is None]
        requests = []
        for r in live:
            left = sampling.max_tokens - len(partial.token_ids[r])
            # Every block draws fresh: a seeded request would repeat its first block's draws.
            seed = None if sampling.seed is None else hash((sampling.seed, partial.blocks, r)) & 0x7FFFFFFF
            requests.append(
                (partial.prompt_ids[r] + partial.token_ids[r], self._params(sampling, k, min(block_tokens, left), seed))
            )
        outputs = dict(zip(live, self._run_all(requests, sampling.steering, cancel)))
        children = _Partial(
            prompt=partial.prompt,
            sampling=sampling,
            prompt_tokens=partial.prompt_tokens,
            token_ids=[],
            token_logprobs=[],
            finish=[],
            hidden=None,
            forward_tokens=partial.forward_tokens,
            blocks=partial.blocks + 1,
        )
        for r in range(partial.rows):
            output = outputs.get(r)
            if output is not None:
                children.forward_tokens += len(output.prompt_token_ids) - int(output.num_cached_tokens or 0)
            choices = self._choices(output, k) if output is not None else [None] * k
            for choice in choices:
                tokens, logprobs, finish = (
                    list(partial.token_ids[r]),
                    list(partial.token_logprobs[r]),
                    partial.finish[r],
                )
                if choice is not None:
                    new_ids, new_logprobs, engine_finish = self._completion(choice)
                    tokens += new_ids
                    logprobs += new_logprobs
                    children.forward_tokens += len(new_ids)
                    finish = self._finish(tokens, engine_finish, sampling)
                children.prompt_ids.append(partial.prompt_ids[r])
                children.token_ids.append(tokens)
                children.token_logprobs.append(logprobs)
                children.finish.append(finish)
        if partial.shadow is not None:
            # The shadow copies each parent's cache to its k children and reads the new tokens.
            shadow = self._shadow.select(partial.shadow, [r for r in range(partial.rows) for _ in range(k)])
            before = shadow.forward_tokens
            new = [ids[len(partial.token_ids[c // k]) :] for c, ids in enumerate(children.token_ids)]
            children.shadow = self._shadow.feed_tokens(shadow, new)
            children.hidden = children.shadow.hidden
            children.forward_tokens += children.shadow.forward_tokens - before
        return children

    def _finish(self, tokens: list[int], engine_finish: FinishReason, sampling: SamplingParams) -> FinishReason | None:
        """EOS or a stop sequence ends the row; so does max_tokens. A block that merely used its
        B tokens ("length" from the engine) leaves the row open."""
        if tokens and tokens[-1] in self.eos_token_ids:
            return FinishReason.STOP
        if sampling.stop:
            # A stop sequence may straddle two blocks, where the engine (seeing one block) misses it.
            tail = self.detokenize(tokens[-stop_window(sampling.stop) * 2 :])
            if engine_finish == FinishReason.STOP or any(s in tail for s in sampling.stop):
                return FinishReason.STOP
        elif engine_finish == FinishReason.STOP:
            return FinishReason.STOP
        if len(tokens) >= sampling.max_tokens:
            return FinishReason.LENGTH
        return None

    def select(self, partial: PartialResponses, rows: Sequence[int]) -> _Partial:
        partial = owned(partial, _Partial)
        shadow = self._shadow.select(partial.shadow, rows) if partial.shadow is not None else None
        return _Partial(
            prompt=partial.prompt,
            sampling=partial.sampling,
            prompt_tokens=partial.prompt_tokens,
            token_ids=[list(partial.token_ids[r]) for r in rows],
            token_logprobs=[list(partial.token_logprobs[r]) for r in rows],
            finish=[partial.finish[r] for r in rows],
            hidden=shadow.hidden if shadow is not None else None,
            forward_tokens=partial.forward_tokens,
            prompt_ids=[partial.prompt_ids[r] for r in rows],
            blocks=partial.blocks,
            shadow=shadow,
        )

    def partial_texts(self, partial: PartialResponses) -> list[str]:
        return response_texts(self.detokenize_many, partial.token_ids, self.eos_token_ids, partial.sampling.stop)

    def completion(self, partial: PartialResponses, row: int) -> Completion:
        ids = partial.token_ids[row]
        finish = partial.finish[row] or FinishReason.LENGTH
        return Completion(self._text(ids, partial.sampling.stop), list(ids), list(partial.token_logprobs[row]), finish)

    # -- engine state -----------------------------------------------------------------------------

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Share of prompt tokens (prompts and block prefixes) the engine found in its prefix cache."""
        with self._stats_lock:
            return self.prompt_tokens_cached / self.prompt_tokens_seen if self.prompt_tokens_seen else 0.0

    def unfinished_requests(self) -> int:
        """Requests the engine is still running or holding (0 once everything ended or was aborted)."""
        return int(self.engine.get_num_unfinished_requests())

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self.engine.shutdown()
            self.engine = None  # collected now, not by __del__ during interpreter exit
        finally:
            self._stop_loop()
            self._remove_adapters()

    def _remove_adapters(self) -> None:
        if self._adapter_folder is not None:
            shutil.rmtree(self._adapter_folder, ignore_errors=True)
            self._adapter_folder = None

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
