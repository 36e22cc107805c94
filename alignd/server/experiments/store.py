"""The experiment store: SQLite (embedded) or PostgreSQL (shared by replicas), written by one
writer task.

Writes (served requests, feedback, experiment definitions) go through a bounded queue to a writer
task that applies them in batches, one transaction and one flush per batch (group commit), and
resolves each caller's future only after the COMMIT. A handler awaits that future before it
answers, so a response the client received is always stored durably: a SIGKILL can lose only
requests whose answers were never sent. A full queue makes callers wait (counted in metrics),
never drops. Reads use their own connections (databases.py): they run beside the writer. A
database that cannot take work answers UNAVAILABLE; the writer reconnects for its next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignd.errors import AligndError, AlreadyExists, InvalidArgument, NotFound, Unavailable
from alignd.server.experiments.databases import Database, Session, one_line, open_database
from alignd.server.metrics import Metrics

log = logging.getLogger("alignd.experiments")


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


Write = Callable[[Session], Any]
IDLE_CHECK_SECONDS = 10.0  # a writer connection unused this long is checked before its next batch


class ExperimentStore:
    def __init__(
        self,
        location: str | Path | Database,
        metrics: Metrics | None = None,
        *,
        queue_size: int = 1024,
        batch_size: int = 256,
        write_timeout: float = 30.0,
    ) -> None:
        """`location`: a SQLite file path or a postgresql:// URL. Connects and migrates the schema
        (raising what the database raises, or Unavailable for a schema newer than this code's)."""
        self.database = location if isinstance(location, Database) else open_database(location)
        self.metrics = metrics or Metrics()
        self.batch_size = batch_size
        self.write_timeout = write_timeout
        self._session: Session | None = None
        try:
            self._session = self.database.connect()
            self.database.migrate(self._session)
        except BaseException:
            if self._session is not None:
                self._session.connection.close()
            self.database.close()
            raise
        self._queue: asyncio.Queue[tuple[Write, asyncio.Future] | None] = asyncio.Queue(maxsize=queue_size)
        # One thread owns the write connection; reads get their own threads and connections.
        self._write_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="alignd-store-write")
        self._read_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="alignd-store-read")
        self._writer: asyncio.Task | None = None
        self._closing = False
        self._last_used = time.monotonic()

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
        self._write_thread.submit(self._close_session).result()
        self._write_thread.shutdown()
        self._read_threads.shutdown(wait=False, cancel_futures=True)
        self.database.close()

    def _close_session(self) -> None:
        if self._session is not None:
            with contextlib.suppress(*self.database.errors):  # already lost
                self._session.connection.close()
            self._session = None

    # -- writes ----------------------------------------------------------------------------

    async def record_request(self, record: RequestRecord) -> None:
        def write(session: Session) -> Checked:
            cursor = session.execute(
                "INSERT INTO requests VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (request_id) DO NOTHING",
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
            return Checked(cursor, AlreadyExists(f"request_id: {record.request_id!r} is already recorded"))

        await self._submit(write)
        self.metrics.experiment_records.labels(record.experiment, record.arm).inc()

    async def record_feedback(self, feedback: Feedback) -> bool:
        """Insert or replace; True when an earlier feedback with the same identity was replaced."""

        def write(session: Session) -> bool:
            experiment = _experiment_of(session, feedback.request_id, "request_id")
            request_id, other, value = feedback.request_id, "", feedback.value
            if feedback.kind == "preference":
                other_experiment = _experiment_of(session, feedback.preferred_over, "preferred_over")
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
                session.execute(
                    "SELECT 1 FROM feedback WHERE request_id = ? AND kind = ? AND key = ? AND other_request_id = ?",
                    identity,
                ).fetchone()
                is not None
            )
            session.execute(
                "INSERT INTO feedback VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, kind, key, other_request_id) "
                "DO UPDATE SET value = excluded.value, updated_unix = excluded.updated_unix",
                (*identity, value, time.time()),
            )
            return replaced

        return await self._submit(write)

    async def save_experiment(
        self, name: str, definition: str, source: str, created_unix: float, *, replace: bool
    ) -> None:
        on_conflict = (
            "DO UPDATE SET definition = excluded.definition, source = excluded.source, "
            "created_unix = excluded.created_unix"
            if replace
            else "DO NOTHING"
        )

        def write(session: Session) -> Checked:
            cursor = session.execute(
                f"INSERT INTO experiments VALUES (?, ?, ?, ?) ON CONFLICT (name) {on_conflict}",
                (name, definition, source, created_unix),
            )
            return Checked(cursor, AlreadyExists(f"name: an experiment named {name!r} exists"))

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
        """One transaction for the batch. Writes refuse (AligndError) before they change anything,
        so the batch runs without savepoints; should one fail in the database or in code, the
        batch is replayed with each write in a savepoint, and only that write is undone."""
        database = self.database
        try:
            session = self._writer_session()
            try:
                results = self._transaction(session, writes, savepoints=False)
            except Exception:
                # Nothing of the batch committed (the COMMIT is its last statement): undo, on a
                # new connection if this one cannot be brought back, and replay with savepoints.
                if not self._rolled_back(session):
                    session = self._writer_session()
                results = self._transaction(session, writes, savepoints=True)
            self._last_used = time.monotonic()
            return results
        except database.errors as error:
            log.error("experiment store %s: batch of %d writes failed: %s", database.description, len(writes), error)
            self.metrics.store_errors.inc()
            if self._session is not None:
                self._rolled_back(self._session)
            return [Unavailable(f"experiment store: {database.scrub(one_line(error))}")] * len(writes)

    def _writer_session(self) -> Session:
        """The writer's connection: a new one after a loss, and checked first after a quiet spell
        (the server may have restarted meanwhile: better a new connection than a failed batch)."""
        session = self._session
        quiet = time.monotonic() - self._last_used > IDLE_CHECK_SECONDS
        if session is not None and quiet and not self.database.alive(session):
            self._close_session()
            session = None
        if session is None:
            session = self._session = self.database.connect()
        return session

    def _rolled_back(self, session: Session) -> bool:
        """Roll an open transaction back; False (the connection closed) when that cannot be done."""
        database = self.database
        try:
            if database.usable(session):
                if database.in_transaction(session):
                    session.execute("ROLLBACK")
                return True
        except database.errors:
            pass
        self._close_session()
        return False

    def _transaction(self, session: Session, writes: list[Write], *, savepoints: bool) -> list[Any]:
        results: list[Any] = []
        # Without savepoints the batch is pipelined: its statements and the COMMIT go out without
        # waiting for one another, and the checks on their row counts (Checked) run after.
        with contextlib.nullcontext() if savepoints else session.pipeline():
            session.execute(self.database.begin)
            for write in writes:
                if savepoints:
                    session.execute("SAVEPOINT write")
                try:
                    result = write(session)
                    results.append(result.outcome() if savepoints and isinstance(result, Checked) else result)
                except AligndError as error:  # refused: it changed nothing
                    results.append(error)
                except Exception as error:
                    if not savepoints:
                        raise  # _apply replays the batch with savepoints
                    session.execute("ROLLBACK TO SAVEPOINT write")
                    log.exception("experiment store write failed")
                    self.metrics.store_errors.inc()
                    results.append(Unavailable(f"experiment store: {one_line(error)}"))
                if savepoints:
                    session.execute("RELEASE SAVEPOINT write")
            session.execute("COMMIT")
        return [_outcome(result) for result in results]

    # -- reads -----------------------------------------------------------------------------

    async def _read(self, query: Callable[[Session], Any]) -> Any:
        def run() -> Any:
            try:
                return self.database.read(query)
            except self.database.errors as error:
                raise Unavailable(f"experiment store: {self.database.scrub(one_line(error))}") from None

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
        def query(session: Session) -> ExperimentRows:
            session.execute(self.database.snapshot)  # one snapshot for both queries
            requests = [
                (arm, subject, json.loads(rewards), math.nan if score is None else score, latency, tokens)
                for arm, subject, rewards, score, latency, tokens in session.execute(
                    "SELECT arm, subject, rewards, weighted_score, latency_seconds, generated_tokens "
                    "FROM requests WHERE experiment = ? ORDER BY created_unix",
                    (experiment,),
                )
            ]
            feedback = session.execute(
                "SELECT r.arm, r.subject, f.kind, f.value, o.arm FROM feedback f JOIN requests r USING (request_id) "
                "LEFT JOIN requests o ON o.request_id = f.other_request_id WHERE r.experiment = ?",
                (experiment,),
            ).fetchall()
            session.execute("COMMIT")
            return ExperimentRows(requests, [tuple(row) for row in feedback])

        return await self._read(query)


@dataclass(frozen=True)
class Checked:
    """An INSERT ... ON CONFLICT DO NOTHING whose row count says whether it was refused: read once
    its batch has run (in a pipeline the count arrives with the batch's results)."""

    cursor: Any
    refused: AligndError

    def outcome(self) -> AligndError | None:
        return self.refused if self.cursor.rowcount == 0 else None


def _outcome(result: Any) -> Any:
    return result.outcome() if isinstance(result, Checked) else result


def _experiment_of(session: Session, request_id: str, field: str) -> str:
    row = session.execute("SELECT experiment FROM requests WHERE request_id = ?", (request_id,)).fetchone()
    if row is None:
        raise NotFound(f"{field}: no recorded experiment request {request_id!r}")
    return row[0]
