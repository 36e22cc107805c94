"""The databases the experiment store runs on: SQLite (a file, the embedded default) and
PostgreSQL (a server that replicas on several hosts share).

The store writes portable SQL with `?` placeholders through a `Session`; each database says how
to connect, begin, lock for migrations and recognise its errors. The schema is versioned in the
`alignd_schema` table and built by the ordered `MIGRATIONS`, on both databases alike.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from alignd.errors import Unavailable

# Ordered migrations: version n's statements take a version n-1 database to version n. Append,
# never edit a released one. Portable SQL: DOUBLE PRECISION is a float8 on PostgreSQL (its REAL
# is a float4) and a REAL on SQLite.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE IF NOT EXISTS experiments (
                name TEXT PRIMARY KEY,
                definition TEXT NOT NULL,          -- alignd.v1.Experiment as JSON
                source TEXT NOT NULL,              -- "config" or "rpc"
                created_unix DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE IF NOT EXISTS requests (
                request_id TEXT PRIMARY KEY,
                experiment TEXT NOT NULL,
                arm TEXT NOT NULL,
                subject TEXT NOT NULL,
                created_unix DOUBLE PRECISION NOT NULL,
                strategy TEXT NOT NULL,
                params TEXT NOT NULL,              -- the strategy's validated parameters, JSON
                sampling TEXT NOT NULL,            -- the sampling settings applied, JSON
                weights TEXT NOT NULL,             -- normalised preference weights, JSON
                rewards TEXT NOT NULL,             -- reward per objective, JSON
                weighted_score DOUBLE PRECISION,   -- SQLite stores NaN as NULL
                latency_seconds DOUBLE PRECISION NOT NULL,
                prompt_tokens INTEGER NOT NULL,
                generated_tokens INTEGER NOT NULL,
                finish_reason TEXT NOT NULL
            )""",
            "CREATE INDEX IF NOT EXISTS requests_by_experiment ON requests (experiment, arm)",
            """CREATE TABLE IF NOT EXISTS feedback (
                request_id TEXT NOT NULL REFERENCES requests (request_id),
                kind TEXT NOT NULL,                -- "thumbs", "rating" or "preference"
                key TEXT NOT NULL,
                other_request_id TEXT NOT NULL,    -- preference: the other request of the pair, else ''
                value DOUBLE PRECISION NOT NULL,   -- thumbs 1/0, the rating, preference 1 if request_id won
                updated_unix DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (request_id, kind, key, other_request_id)
            )""",
        ],
    ),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(location: str) -> bool:
    return location.startswith(POSTGRES_SCHEMES)


def redact(url: str, text: str | None = None) -> str:
    """`text` (default: the URL itself) without the URL's password, for messages and logs: the
    user:password@ form, a password= parameter, and the password wherever the text quotes it."""
    text = url if text is None else text
    secrets = re.findall(r"://[^/@:]*:([^/@]*)@", url) + re.findall(r"[?&]password=([^&]*)", url)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class Session:
    """One connection as the store's writes and reads use it: `execute` with `?` placeholders."""

    def __init__(self, connection: Any, placeholder: str) -> None:
        self.connection = connection
        self._placeholder = placeholder

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self._placeholder != "?":
            sql = sql.replace("?", self._placeholder)
        return self.connection.execute(sql, params)

    def pipeline(self) -> contextlib.AbstractContextManager[Any]:
        """Statements sent without waiting for each result, where the driver can (PostgreSQL's
        pipeline mode: a batch's statements and its COMMIT in one round trip). A result that is
        read (`fetchone`) is waited for; counts (`rowcount`) are known once the block ends."""
        pipeline = getattr(self.connection, "pipeline", None)
        return pipeline() if pipeline is not None else contextlib.nullcontext()


class Database(ABC):
    """How the store reaches one database. Writes run on one connection in the store's writer
    thread (`connect`); reads run on connections of their own (`read`)."""

    description: str  # the path, or the URL without its password
    begin: str  # starts a write transaction
    snapshot: str  # starts a read transaction whose queries see one snapshot
    errors: tuple[type[BaseException], ...]  # what its driver raises

    @abstractmethod
    def connect(self) -> Session: ...

    @abstractmethod
    def read(self, query: Callable[[Session], Any]) -> Any: ...

    def broken(self, session: Session) -> bool:
        """Whether the connection is lost (the writer then opens a new one for its next batch)."""
        return False

    def alive(self, session: Session) -> bool:
        """Whether a connection idle for a while still reaches the database (checked before a
        batch, so that a restart of the server does not fail the first batch after it)."""
        return True

    def usable(self, session: Session) -> bool:
        """Whether, after an error, a ROLLBACK on this connection can bring it back."""
        return True

    def scrub(self, text: str) -> str:
        """`text` (a driver's message) without secrets of the location."""
        return text

    def in_transaction(self, session: Session) -> bool:
        return bool(session.connection.in_transaction)

    @abstractmethod
    def close(self) -> None:
        """Close what `read` keeps open."""

    # -- schema ------------------------------------------------------------------------------

    def migrate(self, session: Session) -> None:
        """Bring the schema to SCHEMA_VERSION; refuse a database a newer alignd has migrated."""
        session.execute(self.begin)
        try:
            self._lock(session)
            session.execute("CREATE TABLE IF NOT EXISTS alignd_schema (version INTEGER NOT NULL)")
            version = self._version(session)
            if version > SCHEMA_VERSION:
                raise Unavailable(
                    f"experiment store {self.description}: schema version {version} is newer than this "
                    f"server's {SCHEMA_VERSION} (a newer alignd migrated it)"
                )
            for number, statements in MIGRATIONS:
                if number > version:
                    for statement in statements:
                        session.execute(statement)
                    session.execute("INSERT INTO alignd_schema (version) VALUES (?)", (number,))
            session.execute("COMMIT")
        except BaseException:
            if self.in_transaction(session):
                session.execute("ROLLBACK")
            raise

    @abstractmethod
    def _lock(self, session: Session) -> None:
        """Keep other replicas' migrations out until this transaction ends."""

    def _version(self, session: Session) -> int:
        return int(session.execute("SELECT COALESCE(MAX(version), 0) FROM alignd_schema").fetchone()[0])


class SQLiteDatabase(Database):
    """A file in WAL mode: readers run beside the one writer; FULL sync makes each group commit
    durable on disk."""

    begin = "BEGIN IMMEDIATE"
    snapshot = "BEGIN"
    errors = (sqlite3.Error,)

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.description = self.path
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN/COMMIT in the store).
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        connection.execute("PRAGMA busy_timeout = 30000")
        connection.execute("PRAGMA foreign_keys = ON")
        return connection

    def connect(self) -> Session:
        connection = self._open()
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise Unavailable(f"experiment store: cannot use WAL mode (got {mode!r})")
        # FULL: each group commit fsyncs the WAL, so an acknowledged record survives power loss too.
        connection.execute("PRAGMA synchronous = FULL")
        return Session(connection, "?")

    def read(self, query: Callable[[Session], Any]) -> Any:
        connection = self._open()
        try:
            return query(Session(connection, "?"))
        finally:
            connection.close()

    def close(self) -> None:
        pass  # every read closes its own connection

    def _lock(self, session: Session) -> None:
        pass  # BEGIN IMMEDIATE holds the file's write lock already

    def _version(self, session: Session) -> int:
        version = super()._version(session)
        # Files written before the version table kept their version in SQLite's user_version.
        version = max(version, int(session.execute("PRAGMA user_version").fetchone()[0]))
        # Kept in step, so that an older alignd (which reads only user_version) refuses a newer file.
        session.execute(f"PRAGMA user_version = {max(version, SCHEMA_VERSION)}")
        return version


class PostgresDatabase(Database):
    """A PostgreSQL server through psycopg 3: one connection for the writer, a small pool for
    reads. Connections that break (the server restarted) are replaced on the next use."""

    begin = "BEGIN"
    snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ"
    CONNECT_TIMEOUT = 5  # seconds: an unreachable server fails a write fast (UNAVAILABLE), not late
    MIGRATION_LOCK = 0x616C69676E64  # pg_advisory_xact_lock key ("alignd")
    # A server that stops answering without closing the connection (a partition, a host that lost
    # power) is given up on after about 30 s, not the kernel's 15 minutes of retransmissions.
    CONNECTION: ClassVar[dict[str, Any]] = {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,  # milliseconds
    }

    def __init__(self, url: str, pool_size: int = 4) -> None:
        import psycopg
        from psycopg_pool import ConnectionPool

        self.url = url
        self.description = redact(url)
        self._psycopg = psycopg
        self.errors = (psycopg.Error,)
        self._pool = ConnectionPool(
            url,
            min_size=0,
            max_size=pool_size,
            kwargs=self.CONNECTION,
            check=ConnectionPool.check_connection,  # a connection the server dropped is replaced
            timeout=self.CONNECT_TIMEOUT,  # waiting for a connection (none while the server is down)
            # A failed attempt gives up soon, so the next read tries again at once rather than
            # after the pool's backoff (minutes) once the server is back.
            reconnect_timeout=self.CONNECT_TIMEOUT,
            open=True,
        )

    def connect(self) -> Session:
        connection = self._psycopg.connect(self.url, **self.CONNECTION)
        try:
            # Each group commit waits for its WAL flush (the server's default, made explicit).
            connection.execute("SET synchronous_commit = on")
        except BaseException:
            connection.close()
            raise
        return Session(connection, "%s")

    def scrub(self, text: str) -> str:
        return redact(self.url, text)

    def alive(self, session: Session) -> bool:
        try:
            session.connection.execute("")  # one round trip, as the pool checks its connections
        except self._psycopg.Error:
            return False
        return True

    def usable(self, session: Session) -> bool:
        status = self._psycopg.pq.TransactionStatus
        # Not mid-query (ACTIVE) and not lost (UNKNOWN): a ROLLBACK, if one is needed, can run.
        usable = (status.IDLE, status.INTRANS, status.INERROR)
        return not self.broken(session) and session.connection.info.transaction_status in usable

    def read(self, query: Callable[[Session], Any]) -> Any:
        with self._pool.connection() as connection:
            return query(Session(connection, "%s"))

    def broken(self, session: Session) -> bool:
        return bool(session.connection.broken or session.connection.closed)

    def in_transaction(self, session: Session) -> bool:
        status = session.connection.info.transaction_status
        return status != self._psycopg.pq.TransactionStatus.IDLE and not self.broken(session)

    def close(self) -> None:
        self._pool.close()

    def _lock(self, session: Session) -> None:
        # A replica stuck mid-migration makes the others fail start-up with one line, not hang.
        session.execute("SET LOCAL lock_timeout = '30s'")
        session.execute(f"SELECT pg_advisory_xact_lock({self.MIGRATION_LOCK})")


def open_database(location: str | Path) -> Database:
    text = str(location)
    return PostgresDatabase(text) if is_postgres_url(text) else SQLiteDatabase(text)


def one_line(error: BaseException) -> str:
    """A driver's message on one line (libpq's span several)."""
    return " ".join(str(error).split())
