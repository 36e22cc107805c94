"""The scoring engine: every forward of a model-based objective runs here, batched.

Request threads hand the engine token sequences for a model and wait. One worker thread takes
everything queued, groups it by model, sorts each model's sequences by length and cuts them into
micro-batches of at most `max_batch_tokens` padded tokens (sorted, a batch pads to nearly its own
length), runs them under `torch.inference_mode`, and gives each caller its rows in its own order.

Concurrent requests share forwards: what arrives while a forward runs, or within `coalesce_ms` of
the first sequence of a round, goes into the next round. The wait is bounded, and skipped once a
round has a full batch of tokens waiting.

Sequences of one request usually share a prefix (the rendered prompt). A model that keeps a
key/value cache reads it once and each sequence's rest after it, when that pads to fewer tokens
than sorting full sequences together (requests with different prompts coalesce best as full
sequences; one request's candidates with one prompt, after it).

A model is loaded once per engine however many objectives read it (`EngineModel.key`): two
objectives on two outputs of one checkpoint share its copy, and one forward serves both.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch.nn.utils.rnn import pad_sequence


@dataclass(frozen=True)
class EngineOptions:
    """The `[scoring]` table of the server config."""

    max_batch_tokens: int = 8192  # padded tokens (rows x longest row) per forward
    coalesce_ms: float = 2.0  # how long a round waits for more requests' sequences


class EngineModel(ABC):
    """A model the engine runs: padded token ids -> one float row per sequence.

    A model that can read a shared prefix once (`shares_prefix`: a decoder with a key/value
    cache) also implements `prefix_state` and `forward_after`."""

    key: Hashable  # identity: one copy per engine
    pad_id: int
    device: torch.device
    shares_prefix: bool = False

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Outputs [B, K] for right-padded `input_ids` [B, T] (mask 1 on real tokens)."""

    def prefix_state(self, prefix_ids: torch.Tensor) -> Any:
        """What the model keeps of a prefix [1, P] (its key/value cache)."""
        raise NotImplementedError

    def forward_after(self, state: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Outputs [B, K] for right-padded continuations [B, T] of the prefix in `state`."""
        raise NotImplementedError


M = TypeVar("M", bound=EngineModel)


@dataclass(eq=False)
class _Job:
    model: EngineModel
    sequences: Sequence[Sequence[int]]  # after `prefix`
    submitted: float
    prefix: tuple[int, ...] = ()
    done: threading.Event = field(default_factory=threading.Event)
    result: torch.Tensor | None = None
    error: BaseException | None = None

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences) + len(self.prefix) * len(self.sequences)

    def full(self) -> list[Sequence[int]]:
        return [[*self.prefix, *s] for s in self.sequences] if self.prefix else list(self.sequences)


class ScoringEngine:
    def __init__(self, options: EngineOptions | None = None) -> None:
        self.options = options or EngineOptions()
        if self.options.max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1, got {self.options.max_batch_tokens}")
        if not 0 <= self.options.coalesce_ms < float("inf"):
            raise ValueError(f"coalesce_ms must be a number >= 0, got {self.options.coalesce_ms}")
        self._models: dict[Hashable, EngineModel] = {}
        self._queue: list[_Job] = []
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.forwards = 0  # forwards run, for tests and benchmarks
        self.rounds = 0

    def model(self, key: Hashable, build: Callable[[], M]) -> M:
        """The engine's copy of the model with this key, built on first use."""
        with self._cond:
            if key not in self._models:
                self._models[key] = build()
            return self._models[key]  # type: ignore[return-value]

    @property
    def models(self) -> tuple[EngineModel, ...]:
        return tuple(self._models.values())

    def run(self, model: EngineModel, sequences: Sequence[Sequence[int]], prefix: Sequence[int] = ()) -> torch.Tensor:
        """The model's outputs for the sequences (each read after `prefix`, which they share),
        [N, K] float32 on the CPU, in input order. Blocks until the forwards that carry them
        have run; raises what the forward raised."""
        if not sequences:
            raise ValueError("the engine needs at least one sequence")
        if any(len(s) == 0 for s in sequences):
            raise ValueError("every sequence needs at least one token")
        job = _Job(model, sequences, time.monotonic(), tuple(prefix))
        with self._cond:
            if self._closed:
                raise RuntimeError("the scoring engine is closed")
            self._queue.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name="alignd-scoring", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def close(self) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join()

    # -- the worker ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            jobs = self._next_round()
            if jobs is None:
                return
            self.rounds += 1
            by_model: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                by_model.setdefault(job.model.key, []).append(job)
            for group in by_model.values():
                try:
                    results = self._forward_all(group[0].model, group)
                except BaseException as error:  # handed to every caller of the group
                    for job in group:
                        job.error = error
                else:
                    for job, result in zip(group, results):
                        job.result = result
                for job in group:
                    job.done.set()

    def _next_round(self) -> list[_Job] | None:
        """Wait for work, then up to `coalesce_ms` after the oldest job for more (less once a
        full batch of tokens waits); take everything queued."""
        window = self.options.coalesce_ms / 1000.0
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            deadline = self._queue[0].submitted + window
            while not self._closed and sum(j.tokens for j in self._queue) < self.options.max_batch_tokens:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            jobs, self._queue = self._queue, []
            return jobs

    @torch.inference_mode()
    def _forward_all(self, model: EngineModel, jobs: list[_Job]) -> list[torch.Tensor]:
        """Every job of one model, outputs per job. Jobs sharing a prefix read it once when that
        pads to fewer tokens than sorting all full sequences together (`_plan`)."""
        groups = self._plan(model, jobs)
        results: dict[int, torch.Tensor] = {}
        for prefix, group in groups:
            state = model.prefix_state(torch.tensor([prefix], device=model.device)) if prefix else None
            sequences = [s for job in group for s in (job.sequences if prefix else job.full())]
            outputs = self._forward_sequences(model, sequences, state)
            for job, out in zip(group, torch.split(outputs, [len(job.sequences) for job in group])):
                results[id(job)] = out
        return [results[id(job)] for job in jobs]

    def _plan(self, model: EngineModel, jobs: list[_Job]) -> list[tuple[tuple[int, ...], list[_Job]]]:
        """(prefix, jobs) groups to run: by shared prefix, or all together with no prefix,
        whichever pads to fewer tokens (a prefix counts once)."""
        together: list[tuple[tuple[int, ...], list[_Job]]] = [((), jobs)]
        if not model.shares_prefix or not any(job.prefix for job in jobs):
            return together
        by_prefix: dict[tuple[int, ...], list[_Job]] = {}
        for job in jobs:
            by_prefix.setdefault(job.prefix, []).append(job)
        split = list(by_prefix.items())
        cost_split = sum(len(p) + self._padded([len(s) for j in g for s in j.sequences]) for p, g in split)
        cost_together = self._padded([len(j.prefix) + len(s) for j in jobs for s in j.sequences])
        return split if cost_split < cost_together else together

    def _padded(self, lengths: list[int]) -> int:
        ordered = sorted(lengths)
        return sum(len(b) * ordered[b[-1]] for b in self._micro_batches(list(range(len(ordered))), ordered))

    def _forward_sequences(self, model: EngineModel, sequences: list[Sequence[int]], state: Any) -> torch.Tensor:
        """Length-sorted micro-batches of the sequences (after the prefix in `state`, if any);
        outputs in input order."""
        lengths = torch.tensor([len(s) for s in sequences])
        order = torch.argsort(lengths, stable=True).tolist()
        outputs: torch.Tensor | None = None
        for batch in self._micro_batches(order, lengths.tolist()):
            batch_index = torch.tensor(batch)
            ids = pad_sequence(
                [torch.as_tensor(sequences[i], dtype=torch.long) for i in batch],
                batch_first=True,
                padding_value=model.pad_id,
            )
            mask = (torch.arange(ids.shape[1]) < lengths[batch_index].unsqueeze(1)).long()
            ids, mask = ids.to(model.device), mask.to(model.device)
            out = (model.forward(ids, mask) if state is None else model.forward_after(state, ids, mask)).float().cpu()
            self.forwards += 1
            if outputs is None:
                outputs = torch.empty((len(sequences), out.shape[1]), dtype=torch.float32)
            outputs[batch_index] = out
        assert outputs is not None
        return outputs

    def _micro_batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Consecutive runs of the length-sorted rows, each at most max_batch_tokens padded
        tokens (a row longer than that runs alone)."""
        budget = self.options.max_batch_tokens
        batches: list[list[int]] = []
        current: list[int] = []
        for index in order:
            if current and (len(current) + 1) * lengths[index] > budget:
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
        return batches


_default: ScoringEngine | None = None
_default_lock = threading.Lock()


def default_engine() -> ScoringEngine:
    """The process's engine with default options, for objectives built outside a server
    (training, benchmarks, tests); the server builds its own from the config."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ScoringEngine()
        return _default
