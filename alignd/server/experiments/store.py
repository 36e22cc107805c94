"""The experiment store: SQLite in WAL mode, written by one writer task.

Writes (served requests, feedback, experiment definitions) go through a bounded queue to a writer
task that applies them in batches, one transaction and one fsync per batch (group commit), and
resolves each caller's future only after the COMMIT. A handler awaits that future before it
answers, so a response the client received is always on disk: a SIGKILL can lose only requests
whose answers were never sent. A full queue makes callers wait (counted in metrics), never drops.
Reads open their own connections: WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignd.errors import AligndError, AlreadyExists, InvalidArgument, NotFound, Unavailable
from alignd.server.metrics import Metrics

log = logging.getLogger("alignd.experiments")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,          -- alignd.v1.Experiment as JSON
    source TEXT NOT NULL,              -- "config" or "rpc"
    created_unix REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_unix REAL NOT NULL,
    strategy TEXT NOT NULL,
    params TEXT NOT NULL,              -- the strategy's validated parameters, JSON
    sampling TEXT NOT NULL,            -- the sampling settings applied, JSON
    weights TEXT NOT NULL,             -- normalised preference weights, JSON
    rewards TEXT NOT NULL,             -- reward per objective, JSON
    weighted_score REAL,               -- NULL where it was not finite (SQLite stores NaN as NULL)
    latency_seconds REAL NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    generated_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS requests_by_experiment ON requests (experiment, arm);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL REFERENCES requests (request_id),
    kind TEXT NOT NULL,                -- "thumbs", "rating" or "preference"
    key TEXT NOT NULL,
    other_request_id TEXT NOT NULL,    -- preference: the other request of the pair, else ''
    value REAL NOT NULL,               -- thumbs 1/0, the rating, preference 1 if request_id won
    updated_unix REAL NOT NULL,
    PRIMARY KEY (request_id, kind, key, other_request_id)
);
"""


@dataclass(frozen=True)
class RequestRecord:
    request_id: str
    experiment: str
    arm: str
    subject: str
    created_unix: float
    strategy: str
    params: dict[str, Any]
    sampling: dict[str, Any]
    weights: dict[str, float]
    rewards: dict[str, float]
    weighted_score: float
    latency_seconds: float
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str


@dataclass(frozen=True)
class Feedback:
    request_id: str
    kind: str  # "thumbs" | "rating" | "preference"
    value: float  # thumbs: 1 up / 0 down; rating; preference: ignored (request_id won)
    key: str = ""
    preferred_over: str = ""


@dataclass(frozen=True)
class StoredExperiment:
    name: str
    definition: str
    source: str
    created_unix: float


@dataclass(frozen=True)
class ExperimentRows:
    """What a report needs: per request (arm, subject, rewards, weighted score, latency, tokens) and
    per feedback (the request's arm and subject, kind, value; preferences with the other arm)."""

    requests: list[tuple[str, str, dict[str, float], float, float, int]]  # NaN where not finite
    feedback: list[tuple[str, str, str, float, str | None]]  # arm, subject, kind, value, other arm


Write = Callable[[sqlite3.Connection], Any]


def _connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN/COMMIT in the writer).
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    connection.execute("PRAGMA busy_timeout = 30000")
    return connection


class ExperimentStore:
    def __init__(
        self,
        path: str | Path,
        metrics: Metrics | None = None,
        *,
        queue_size: int = 1024,
        batch_size: int = 256,
        write_timeout: float = 30.0,
    ) -> None:
        self.path = str(path)
        self.metrics = metrics or Metrics()
        self.batch_size = batch_size
        self.write_timeout = write_timeout
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._writer_connection = _connect(self.path)
        self._setup(self._writer_connection)
        self._queue: asyncio.Queue[tuple[Write, asyncio.Future] | None] = asyncio.Queue(maxsize=queue_size)
        # One thread owns the write connection; reads get their own threads and connections.
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignd-store-write")
        self._read_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="alignd-store-read")
        self._writer: asyncio.Task | None = None
        self._closing = False

    @staticmethod
    def _setup(connection: sqlite3.Connection) -> None:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise Unavailable(f"experiment store: cannot use WAL mode (got {mode!r})")
        # FULL: each group commit fsyncs the WAL, so an acknowledged record survives power loss too.
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise Unavailable(
                f"experiment store: schema version {version} is newer than this server's {SCHEMA_VERSION}"
            )
        connection.executescript(SCHEMA)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer task on the running event loop."""
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="alignd-store-writer")

    async def close(self) -> None:
        """Apply everything queued, then stop the writer and close the connection."""
        self._closing = True  # writes submitted from now on are refused, not left waiting
        if self._writer is not None:
            if not self._writer.done():
                await self._queue.put(None)
                await self._writer
            self._writer = None
        while not self._queue.empty():  # only if the writer had died: answer, never leave hanging
            item = self._queue.get_nowait()
            if item is not None and not item[1].done():
                item[1].set_exception(Unavailable("experiment store: closed before this write"))
        self._write_thread.submit(self._writer_connection.close).result()
        self._write_thread.shutdown()
        self._read_threads.shutdown(wait=False, cancel_futures=True)

    # -- writes ----------------------------------------------------------------------------

    async def record_request(self, record: RequestRecord) -> None:
        def write(connection: sqlite3.Connection) -> None:
            try:
                connection.execute(
                    "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.request_id,
                        record.experiment,
                        record.arm,
                        record.subject,
                        record.created_unix,
                        record.strategy,
                        json.dumps(record.params),
                        json.dumps(record.sampling),
                        json.dumps(record.weights),
                        json.dumps(record.rewards),
                        record.weighted_score,
                        record.latency_seconds,
                        record.prompt_tokens,
                        record.generated_tokens,
                        record.finish_reason,
                    ),
                )
            except sqlite3.IntegrityError as error:
                if error.sqlite_errorname == "SQLITE_CONSTRAINT_PRIMARYKEY":
                    raise AlreadyExists(f"request_id: {record.request_id!r} is already recorded") from None
                raise

        await self._submit(write)
        self.metrics.experiment_records.labels(record.experiment, record.arm).inc()

    async def record_feedback(self, feedback: Feedback) -> bool:
        """Insert or replace; True when an earlier feedback with the same identity was replaced."""

        def write(connection: sqlite3.Connection) -> bool:
            experiment = _experiment_of(connection, feedback.request_id, "request_id")
            request_id, other, value = feedback.request_id, "", feedback.value
            if feedback.kind == "preference":
                other_experiment = _experiment_of(connection, feedback.preferred_over, "preferred_over")
                if other_experiment != experiment:
                    raise InvalidArgument(
                        "preferred_over",
                        f"request {feedback.preferred_over!r} belongs to experiment "
                        f"{other_experiment!r}, not {experiment!r}",
                    )
                # One row per unordered pair, so "A over B" then "B over A" replaces, not contradicts.
                request_id, other = sorted((feedback.request_id, feedback.preferred_over))
                value = 1.0 if request_id == feedback.request_id else 0.0
            identity = (request_id, feedback.kind, feedback.key, other)
            replaced = (
                connection.execute(
                    "SELECT 1 FROM feedback WHERE request_id = ? AND kind = ? AND key = ? AND other_request_id = ?",
                    identity,
                ).fetchone()
                is not None
            )
            connection.execute(
                "INSERT OR REPLACE INTO feedback VALUES (?, ?, ?, ?, ?, ?)", (*identity, value, time.time())
            )
            return replaced

        return await self._submit(write)

    async def save_experiment(
        self, name: str, definition: str, source: str, created_unix: float, *, replace: bool
    ) -> None:
        def write(connection: sqlite3.Connection) -> None:
            verb = "INSERT OR REPLACE" if replace else "INSERT"
            try:
                connection.execute(
                    f"{verb} INTO experiments VALUES (?, ?, ?, ?)", (name, definition, source, created_unix)
                )
            except sqlite3.IntegrityError as error:
                if error.sqlite_errorname == "SQLITE_CONSTRAINT_PRIMARYKEY":
                    raise AlreadyExists(f"name: an experiment named {name!r} exists") from None
                raise

        await self._submit(write)

    async def _submit(self, write: Write) -> Any:
        if self._writer is None or self._writer.done() or self._closing:
            raise Unavailable("experiment store: not running (closing, or its writer stopped: see the server log)")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((write, future))
        except asyncio.QueueFull:
            self.metrics.store_queue_full.inc()
            log.warning("experiment store queue full (%d writes): waiting", self._queue.maxsize)
            try:
                await asyncio.wait_for(self._queue.put((write, future)), self.write_timeout)
            except TimeoutError:
                raise Unavailable(f"experiment store: write queue full for {self.write_timeout:g} s") from None
        self.metrics.store_queue_depth.set(self._queue.qsize())
        return await future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            item = await self._queue.get()
            batch: list[tuple[Write, asyncio.Future]] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= self.batch_size or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            stopping = item is None
            self.metrics.store_queue_depth.set(self._queue.qsize())
            if not batch:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._write_thread, self._apply, [w for w, _ in batch])
            except Exception as error:  # a bug in _apply itself: fail this batch, keep the writer alive
                log.exception("experiment store batch failed")
                results = [Unavailable(f"experiment store: {error}")] * len(batch)
            self.metrics.store_commit_seconds.observe(time.perf_counter() - started)
            for (_, future), result in zip(batch, results):
                if future.done():  # the caller was cancelled; the write itself stands
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)

    def _apply(self, writes: list[Write]) -> list[Any]:
        """One transaction; each write in a savepoint so one refused write leaves the others."""
        connection = self._writer_connection
        results: list[Any] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for write in writes:
                connection.execute("SAVEPOINT write")
                try:
                    results.append(write(connection))
                except Exception as error:  # refused (AligndError) or failed: only this write is undone
                    connection.execute("ROLLBACK TO write")
                    if not isinstance(error, AligndError):
                        log.exception("experiment store write failed")
                        self.metrics.store_errors.inc()
                        error = Unavailable(f"experiment store: {error}")
                    results.append(error)
                connection.execute("RELEASE write")
            connection.execute("COMMIT")
        except sqlite3.Error as error:
            log.exception("experiment store commit failed")
            self.metrics.store_errors.inc()
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            return [Unavailable(f"experiment store: {error}")] * len(writes)
        return results

    # -- reads -----------------------------------------------------------------------------

    async def _read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            connection = _connect(self.path)
            try:
                return query(connection)
            finally:
                connection.close()

        return await asyncio.get_running_loop().run_in_executor(self._read_threads, run)

    async def has_request(self, request_id: str) -> bool:
        return await self._read(
            lambda c: c.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone() is not None
        )

    async def experiments(self) -> list[StoredExperiment]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT name, definition, source, created_unix FROM experiments ORDER BY created_unix, name"
            ).fetchall()
        )
        return [StoredExperiment(*row) for row in rows]

    async def rows(self, experiment: str) -> ExperimentRows:
        def query(connection: sqlite3.Connection) -> ExperimentRows:
            connection.execute("BEGIN")  # one snapshot for both queries
            requests = [
                (arm, subject, json.loads(rewards), math.nan if score is None else score, latency, tokens)
                for arm, subject, rewards, score, latency, tokens in connection.execute(
                    "SELECT arm, subject, rewards, weighted_score, latency_seconds, generated_tokens "
                    "FROM requests WHERE experiment = ? ORDER BY created_unix",
                    (experiment,),
                )
            ]
            feedback = connection.execute(
                "SELECT r.arm, r.subject, f.kind, f.value, o.arm FROM feedback f JOIN requests r USING (request_id) "
                "LEFT JOIN requests o ON o.request_id = f.other_request_id WHERE r.experiment = ?",
                (experiment,),
            ).fetchall()
            connection.execute("COMMIT")
            return ExperimentRows(requests, feedback)

        return await self._read(query)


def _experiment_of(connection: sqlite3.Connection, request_id: str, field: str) -> str:
    row = connection.execute("SELECT experiment FROM requests WHERE request_id = ?", (request_id,)).fetchone()
    if row is None:
        raise NotFound(f"{field}: no recorded experiment request {request_id!r}")
    return row[0]
