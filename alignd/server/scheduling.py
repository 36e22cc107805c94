"""Worker threads shared fairly: jobs wait in one queue per caller (API key) and workers take
them round-robin across callers, so a key with many requests queued does not make the others'
requests wait behind all of them."""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class FairExecutor:
    def __init__(self, max_workers: int, thread_name_prefix: str = "alignd-worker") -> None:
        self.max_workers = max_workers
        self.prefix = thread_name_prefix
        self._queues: OrderedDict[str, deque[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]] = OrderedDict()
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._idle = 0  # workers waiting for a job
        self._queued = 0  # jobs waiting for a worker
        self._shutdown = False

    def submit(self, key: str, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        with self._ready:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            self._queues.setdefault(key, deque()).append((future, fn, args))
            self._queued += 1
            # A new worker unless an idle one is left for this job (several submitted before
            # any waiting worker wakes up each need their own).
            if self._queued > self._idle and len(self._threads) < self.max_workers:
                thread = threading.Thread(target=self._work, name=f"{self.prefix}_{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
            self._ready.notify()
        return future

    def _next(self) -> tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None:
        """The oldest job of the key that has waited longest for a turn (None: shut down)."""
        with self._ready:
            while not self._queues and not self._shutdown:
                self._idle += 1
                self._ready.wait()
                self._idle -= 1
            if not self._queues:
                return None
            key, queue = next(iter(self._queues.items()))
            job = queue.popleft()
            self._queued -= 1
            del self._queues[key]
            if queue:
                self._queues[key] = queue  # back of the line
            return job

    def _work(self) -> None:
        while (job := self._next()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            try:
                result = fn(*args)
            except BaseException as error:
                future.set_exception(error)
            else:
                future.set_result(result)
            del job, future, fn, args  # a finished job's frames must not outlive it

    def shutdown(self, cancel_futures: bool = True) -> None:
        """Workers finish their job and stop; queued jobs are cancelled."""
        with self._ready:
            self._shutdown = True
            if cancel_futures:
                for queue in self._queues.values():
                    for future, _, _ in queue:
                        future.cancel()
                self._queues.clear()
                self._queued = 0
            self._ready.notify_all()
