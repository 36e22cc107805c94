"""Coalescing the decoding steps of concurrent requests into one forward pass.

Each request decodes in its own worker thread and calls the policy as if it had the model to
itself. A decoding step of a few rows costs about as much as a step of one row (it reads every
weight either way), so the transformers backend hands each model call to a `StepBatcher` as a
job: the jobs of one kind pending at the same moment (one-token decoding steps; prompt
prefills) run as one forward, and each thread gets its own rows back. Other model calls
(teacher forcing, training) run alone, in their turn.

Scheduling is leader/follower, with no thread of its own: a thread whose job is pending and
finds the model idle becomes the leader. It waits briefly for the other requests that are in a
decoding loop (`session`) to queue their next step, takes the queue in arrival order up to the
token budget, runs it, and hands results back. Every job pending when a forward starts is in it
(if it is of the kind that runs) unless the budget is full, and then it is among the first of
the next: a long request cannot starve short ones, and no request waits more than a step or two
for its turn.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from alignd.backends.base import MemoryHold
from alignd.errors import Cancelled

Step = TypeVar("Step")


@dataclass
class BatchStats:
    """What the batcher has done since it was made (read by tests, benchmarks and metrics)."""

    forwards: int = 0  # model calls made
    steps: int = 0  # one-token steps run (merged or not)
    max_steps_per_forward: int = 0
    max_rows_per_forward: int = 0
    max_tokens_per_forward: int = 0  # rows x longest key/value length of a merged forward
    merged_by_kind: Counter[str] = field(default_factory=Counter)  # merged forwards of each kind

    @property
    def merged_forwards(self) -> int:
        """Model calls that carried steps of two or more requests."""
        return sum(self.merged_by_kind.values())


DECODE = "decode"  # the kind of job that decoding sessions loop on


@dataclass(eq=False)
class _Job(Generic[Step]):
    step: Step | None  # a step that merges with steps of its kind, or
    alone: Callable[[], object] | None  # a model call that runs by itself
    kind: str
    rows: int
    length: int  # key/value length of the step's rows, the new token included
    cancel: threading.Event | None
    thread: int = field(default_factory=threading.get_ident)
    done: bool = False
    result: object = None
    error: BaseException | None = None


class StepBatcher(Generic[Step]):
    """Runs the model calls of many threads one at a time, merging steps of one kind.

    `run_steps(steps)` makes one forward for a list of steps of one kind (the policy's merged
    forward; a single step runs as it would alone). `max_tokens` caps a merged forward's
    key/value memory: its rows x its longest key/value length, as `limits.max_batch_tokens` caps
    a request's. A step over the cap by itself still runs, alone. `gather_seconds` bounds how long
    the leader waits for requests in a decoding loop to queue their next decoding step.
    """

    def __init__(
        self, run_steps: Callable[[list[Step]], None], *, max_tokens: int, gather_seconds: float = 0.05
    ) -> None:
        if max_tokens < 1 or gather_seconds < 0:
            raise ValueError("StepBatcher needs max_tokens >= 1 and gather_seconds >= 0")
        self._run_steps = run_steps
        self.max_tokens = max_tokens
        self.gather_seconds = gather_seconds
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._queue: list[_Job[Step]] = []
        self._leading = False
        self._sessions: Counter[int] = Counter()  # threads in a decoding loop -> nesting depth

    @contextmanager
    def session(self) -> Iterator[None]:
        """Marks the calling thread as decoding step after step: while it is inside, a leader
        waits (up to gather_seconds) for its next step before running a forward without it."""
        me = threading.get_ident()
        with self._cond:
            self._sessions[me] += 1
        try:
            yield
        finally:
            with self._cond:
                self._sessions[me] -= 1
                if self._sessions[me] == 0:
                    del self._sessions[me]
                self._cond.notify_all()

    def step(
        self, step: Step, *, rows: int, length: int, kind: str = DECODE, cancel: threading.Event | None = None
    ) -> None:
        """Run a step of `rows` rows whose keys/values will be `length` long, merged with the
        other pending steps of its `kind`; returns when it has run. A request cancelled while its
        step waits gets alignd.errors.Cancelled without running it."""
        self._submit(_Job(step, None, kind, rows, length, cancel))

    def alone(self, call: Callable[[], object], *, cancel: threading.Event | None = None) -> object:
        """Run a model call by itself, in its turn among the pending steps; returns its result."""
        return self._submit(_Job(None, call, "", 0, 0, cancel))

    # -- the leader ------------------------------------------------------------------------------

    def _submit(self, job: _Job[Step]) -> object:
        with self._cond:
            self._queue.append(job)
            self._cond.notify_all()
            while not job.done:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch: list[_Job[Step]] = []
                try:
                    self._gather()
                    batch = self._take()
                    self._cond.release()
                    try:
                        self._execute(batch)
                    finally:
                        self._cond.acquire()
                finally:
                    for taken in batch:
                        taken.done = True
                    self._leading = False
                    self._cond.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _gather(self) -> None:
        """When the next job is a decoding step: wait until every thread in a decoding session
        has a job queued, the queued steps fill the token budget, or gather_seconds pass."""
        deadline = time.monotonic() + self.gather_seconds
        while self._queue and self._queue[0].kind == DECODE:
            queued = {job.thread for job in self._queue}
            if all(thread in queued for thread in self._sessions):
                return
            if self._cost([job for job in self._queue if job.kind == DECODE]) >= self.max_tokens:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    @staticmethod
    def _cost(jobs: Sequence[_Job[Step]]) -> int:
        """Key/value tokens of a merged forward: every row padded to the longest."""
        return sum(job.rows for job in jobs) * max((job.length for job in jobs), default=0)

    def _take(self) -> list[_Job[Step]]:
        """The next forward's jobs, removed from the queue: the first job alone if it runs alone,
        else the queued steps of its kind in arrival order while they fit the budget (at least
        one)."""
        kind = self._queue[0].kind
        if self._queue[0].alone is not None:
            return [self._queue.pop(0)]
        batch: list[_Job[Step]] = []
        rows = length = 0
        for job in self._queue:
            if job.kind != kind:
                continue
            rows, length = rows + job.rows, max(length, job.length)
            if batch and rows * length > self.max_tokens:  # `_cost` of the batch with this job
                break
            batch.append(job)
        taken = set(map(id, batch))
        self._queue = [job for job in self._queue if id(job) not in taken]
        return batch

    def _execute(self, batch: list[_Job[Step]]) -> None:
        """Run the batch outside the lock; errors go to the jobs they belong to."""
        live = []
        for job in batch:
            if job.cancel is not None and job.cancel.is_set():
                job.error = Cancelled("request cancelled; decoding stopped")
            else:
                live.append(job)
        if not live:
            return
        if live[0].alone is not None:
            try:
                live[0].result = live[0].alone()
            except BaseException as error:
                live[0].error = error
            self.stats.forwards += 1
            return
        try:
            self._run_steps([job.step for job in live if job.step is not None])
        except BaseException as error:
            for job in live:
                job.error = error
        self.stats.forwards += 1
        self.stats.steps += len(live)
        self.stats.merged_by_kind[live[0].kind] += len(live) > 1
        self.stats.max_steps_per_forward = max(self.stats.max_steps_per_forward, len(live))
        self.stats.max_rows_per_forward = max(self.stats.max_rows_per_forward, sum(job.rows for job in live))
        self.stats.max_tokens_per_forward = max(self.stats.max_tokens_per_forward, self._cost(live))


class TokenBudget:
    """Key/value memory shared by the requests decoding at once, in tokens. A request holds its
    worst case (sequences x (prompt + max_tokens)) while it decodes; one that does not fit waits,
    in arrival order, so a large request is not overtaken for ever by small ones."""

    def __init__(self, tokens: int) -> None:
        if tokens < 1:
            raise ValueError("TokenBudget needs tokens >= 1")
        self.total = self.free = tokens
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()

    @contextmanager
    def hold(self, tokens: int, cancel: threading.Event | None = None) -> Iterator[MemoryHold]:
        """Hold `tokens` (at most the whole budget) until the block ends, or until released; a
        request cancelled while it waits gets alignd.errors.Cancelled."""
        tokens = min(tokens, self.total)
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            try:
                while self._waiting[0] is not ticket or self.free < tokens:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("request cancelled while waiting for memory")
                    self._cond.wait(0.05)
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()
            self.free -= tokens
        held = _Held(self, tokens)
        try:
            yield held
        finally:
            held.release(held.tokens)

    def _give_back(self, held: _Held, tokens: int) -> None:
        with self._cond:
            tokens = min(max(tokens, 0), held.tokens)
            held.tokens -= tokens
            self.free += tokens
            self._cond.notify_all()


class _Held(MemoryHold):
    def __init__(self, budget: TokenBudget, tokens: int) -> None:
        self.budget, self.tokens = budget, tokens

    def release(self, tokens: int) -> None:
        self.budget._give_back(self, tokens)
