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

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch.nn.utils.rnn import pad_sequence

from alignd.config import MAX_COALESCE_MS, EngineOptions

log = logging.getLogger("alignd.scoring")


class EngineModel(ABC):
    """A model the engine runs: padded token ids -> one float row per sequence.

    A model that can read a shared prefix once (`shares_prefix`: a decoder with a key/value
    cache) also implements `prefix_state` and `forward_after`. A model that schedules its own
    batches (`schedules_itself`: vLLM's pooling runner) gets each round's sequences in one
    `forward_sequences` call instead of padded micro-batches."""

    key: Hashable  # identity: one copy per engine
    pad_id: int
    device: torch.device
    shares_prefix: bool = False
    schedules_itself: bool = False

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Outputs [B, K] for right-padded `input_ids` [B, T] (mask 1 on real tokens)."""

    def prefix_state(self, prefix_ids: torch.Tensor) -> Any:
        """What the model keeps of a prefix [1, P] (its key/value cache)."""
        raise NotImplementedError

    def forward_after(self, state: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Outputs [B, K] for right-padded continuations [B, T] of the prefix in `state`."""
        raise NotImplementedError

    def forward_sequences(self, sequences: list[Sequence[int]]) -> torch.Tensor:
        """Outputs [N, K] for unpadded sequences, in order (`schedules_itself` models)."""
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
        if not 0 <= self.options.coalesce_ms <= MAX_COALESCE_MS:
            raise ValueError(f"coalesce_ms must be from 0 to {MAX_COALESCE_MS}, got {self.options.coalesce_ms}")
        self._models: dict[Hashable, EngineModel] = {}
        self._building = threading.Lock()  # loads models; submissions go on meanwhile
        self._queue: list[_Job] = []
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False
        self.forwards = 0  # forwards run, for tests and benchmarks
        self.rounds = 0

    def model(self, key: Hashable, build: Callable[[], M]) -> M:
        """The engine's copy of the model with this key, built on first use."""
        with self._building:
            if self._closed:
                raise RuntimeError("the scoring engine is closed")
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
        """Finish what is queued, stop the worker, then close the models that hold processes
        (those with a `close`: vLLM's runner)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._worker is not None:
            self._worker.join()
        with self._building:
            models = list(self._models.values())
        for model in models:
            close = getattr(model, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # the others still close
                    log.exception("closing %s failed", type(model).__name__)

    # -- the worker ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            jobs = self._next_round()
            if jobs is None:
                return
            self.rounds += 1
            by_model: dict[int, list[_Job]] = {}
            for job in jobs:
                by_model.setdefault(id(job.model), []).append(job)
            for group in by_model.values():
                self._finish(group)

    def _finish(self, group: list[_Job]) -> None:
        """Run one model's jobs and wake their callers, whatever happens. When a shared forward
        fails, each job is retried alone, so that only the requests that fail alone get the
        error (one bad input does not fail the requests coalesced with it)."""
        try:
            for job, result in zip(group, self._forward_all(group[0].model, group)):
                job.result = result
        except BaseException as error:
            if len(group) == 1:
                group[0].error = error
            else:
                for job in group:
                    self._finish([job])
                return
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
        if model.schedules_itself:
            outputs = model.forward_sequences([s for job in jobs for s in job.full()]).float().cpu()
            self.forwards += 1
            return [out.clone() for out in torch.split(outputs, [len(job.sequences) for job in jobs])]
        groups = self._plan(model, jobs)
        results: dict[int, torch.Tensor] = {}
        for prefix, group in groups:
            state = model.prefix_state(torch.tensor([prefix], device=model.device)) if prefix else None
            sequences = [s for job in group for s in (job.sequences if prefix else job.full())]
            outputs = self._forward_sequences(model, sequences, state, len(prefix))
            for job, out in zip(group, torch.split(outputs, [len(job.sequences) for job in group])):
                results[id(job)] = out.clone()  # not a view keeping the whole round's outputs alive
        return [results[id(job)] for job in jobs]

    def _plan(self, model: EngineModel, jobs: list[_Job]) -> list[tuple[tuple[int, ...], list[_Job]]]:
        """(prefix, jobs) groups to run: by shared prefix, or all together with no prefix,
        whichever computes fewer (padded) tokens, a prefix counting once.

        Fewer tokens is what decides on the CPU, where these models are compute-bound
        (benchmarks/scoring.py): concurrent requests with different prompts then usually run one
        prompt group after another in the same round, rather than in one forward."""
        together: list[tuple[tuple[int, ...], list[_Job]]] = [((), jobs)]
        if not model.shares_prefix or not any(job.prefix for job in jobs):
            return together
        by_prefix: dict[tuple[int, ...], list[_Job]] = {}
        for job in jobs:
            by_prefix.setdefault(job.prefix, []).append(job)
        split = list(by_prefix.items())
        cost_split = sum(len(p) + self._padded([len(s) for j in g for s in j.sequences], len(p)) for p, g in split)
        cost_together = self._padded([len(j.prefix) + len(s) for j in jobs for s in j.sequences])
        return split if cost_split < cost_together else together

    def _padded(self, lengths: list[int], prefix: int = 0) -> int:
        """Tokens computed for sequences of these lengths (after a prefix of `prefix` tokens)."""
        ordered = sorted(lengths)
        batches = self._micro_batches(list(range(len(ordered))), ordered, prefix)
        return sum(len(b) * ordered[b[-1]] for b in batches)

    def _forward_sequences(
        self, model: EngineModel, sequences: list[Sequence[int]], state: Any, prefix: int
    ) -> torch.Tensor:
        """Length-sorted micro-batches of the sequences (after the `prefix` tokens in `state`,
        if any); outputs in input order."""
        lengths = torch.tensor([len(s) for s in sequences])
        order = torch.argsort(lengths, stable=True).tolist()
        outputs: torch.Tensor | None = None
        for batch in self._micro_batches(order, lengths.tolist(), prefix):
            batch_index = torch.tensor(batch)
            ids, mask = pad_batch([sequences[i] for i in batch], model.pad_id, model.device)
            out = (model.forward(ids, mask) if state is None else model.forward_after(state, ids, mask)).float().cpu()
            self.forwards += 1
            if outputs is None:
                outputs = torch.empty((len(sequences), out.shape[1]), dtype=torch.float32)
            outputs[batch_index] = out
        assert outputs is not None
        return outputs

    def _micro_batches(self, order: list[int], lengths: list[int], prefix: int = 0) -> list[list[int]]:
        """Consecutive runs of the length-sorted rows, each at most max_batch_tokens padded
        tokens, a shared prefix counted in every row (each row holds its own copy of the
        prefix's keys and values); a row longer than the budget runs alone."""
        budget = self.options.max_batch_tokens
        batches: list[list[int]] = []
        current: list[int] = []
        for index in order:
            if current and (len(current) + 1) * (prefix + lengths[index]) > budget:
                batches.append(current)
                current = []
            current.append(index)
        if current:
            batches.append(current)
        return batches


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids [B, T] and their attention mask (1 on real tokens)."""
    ids = pad_sequence(
        [torch.as_tensor(s, dtype=torch.long) for s in sequences], batch_first=True, padding_value=pad_id
    )
    lengths = torch.tensor([len(s) for s in sequences])
    mask = (torch.arange(ids.shape[1]) < lengths.unsqueeze(1)).long()
    return ids.to(device), mask.to(device)


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
