"""The experiment store on SQLite and on PostgreSQL (a throwaway server): group commit, idempotent
feedback, back-pressure, schema versions, and no loss of an acknowledged write when the process
is killed; SQLite's WAL; PostgreSQL going away and coming back."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from alignd.errors import AlreadyExists, InvalidArgument, NotFound
from alignd.server.experiments.store import ExperimentStore, Feedback, RequestRecord
from alignd.server.metrics import Metrics


def record(request_id: str, experiment: str = "exp", arm: str = "a", score: float = 0.5) -> RequestRecord:
    return RequestRecord(
        request_id,
        experiment,
        arm,
        f"subject-{request_id}",
        1.0,
        "sample",
        {},
        {"temperature": 0.7},
        {"r": 1.0},
        {"r": score},
        score,
        0.01,
        3,
        4,
        "length",
    )


def run(coroutine_function, path, **store_options):
    """Run `coroutine_function(store)` with a started store, closing it afterwards."""

    async def main():
        store = ExperimentStore(path, **store_options)
        store.start()
        try:
            return await coroutine_function(store)
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path) -> str:
    """Where a test's store lives: a SQLite file, or a fresh database on a PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "s.sqlite")
    return request.getfixturevalue("postgres_url")


def query(location: str, sql: str) -> list[tuple]:
    """Rows of `sql`, read straight from the database (not through the store)."""
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as connection:
            return [tuple(row) for row in connection.execute(sql).fetchall()]
    with sqlite3.connect(location) as connection:
        return connection.execute(sql).fetchall()


def test_store_uses_wal(tmp_path):
    run(lambda store: store.record_request(record("r1")), tmp_path / "s.sqlite")
    with sqlite3.connect(tmp_path / "s.sqlite") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT request_id FROM requests").fetchall() == [("r1",)]


def test_concurrent_writes_share_commits(location):
    metrics = Metrics()

    async def many(store):
        await asyncio.gather(*(store.record_request(record(f"r{i}")) for i in range(300)))

    run(many, location, metrics=metrics)
    commits = metrics.registry.get_sample_value("alignd_store_commit_seconds_count")
    assert commits < 300 / 4  # group commit: many records per transaction
    assert query(location, "SELECT count(*) FROM requests") == [(300,)]


def test_a_refused_write_does_not_undo_the_others_in_its_batch(location):
    async def mixed(store):
        await store.record_request(record("dup"))
        return await asyncio.gather(
            store.record_request(record("x1")),
            store.record_request(record("dup")),
            store.record_request(record("x2")),
            return_exceptions=True,
        )

    results = run(mixed, location)
    assert results[0] is None and isinstance(results[1], AlreadyExists) and results[2] is None
    assert {r[0] for r in query(location, "SELECT request_id FROM requests")} == {"dup", "x1", "x2"}


def test_feedback_replaces_per_identity_and_checks_requests(location):
    async def scenario(store):
        for request_id, experiment in (("a", "exp"), ("b", "exp"), ("c", "other")):
            await store.record_request(record(request_id, experiment))
        replaced = [
            await store.record_feedback(Feedback("a", "thumbs", 1.0)),
            await store.record_feedback(Feedback("a", "thumbs", 0.0)),
            await store.record_feedback(Feedback("a", "thumbs", 1.0, key="rater")),
            await store.record_feedback(Feedback("b", "preference", 1.0, preferred_over="a")),
            await store.record_feedback(Feedback("a", "preference", 1.0, preferred_over="b")),
        ]
        errors = await asyncio.gather(
            store.record_feedback(Feedback("zzz", "thumbs", 1.0)),
            store.record_feedback(Feedback("a", "preference", 1.0, preferred_over="zzz")),
            store.record_feedback(Feedback("a", "preference", 1.0, preferred_over="c")),
            return_exceptions=True,
        )
        return replaced, errors, await store.rows("exp")

    replaced, errors, rows = run(scenario, location)
    assert replaced == [False, True, False, False, True]
    assert isinstance(errors[0], NotFound) and str(errors[0]).startswith("request_id")
    assert isinstance(errors[1], NotFound) and str(errors[1]).startswith("preferred_over")
    assert isinstance(errors[2], InvalidArgument) and errors[2].field == "preferred_over"
    thumbs = query(location, "SELECT key, value FROM feedback WHERE kind = 'thumbs' ORDER BY key")
    preference = query(location, "SELECT request_id, other_request_id, value FROM feedback WHERE kind = 'preference'")
    assert thumbs == [("", 0.0), ("rater", 1.0)]
    assert preference == [("a", "b", 1.0)]  # one row per pair; the last judgment (a over b) stands
    assert len(rows.requests) == 2 and len(rows.feedback) == 3


def test_a_full_queue_makes_writers_wait_and_is_counted(location):
    metrics = Metrics()

    async def flood(store):
        await asyncio.gather(*(store.record_request(record(f"r{i}")) for i in range(50)))

    run(flood, location, metrics=metrics, queue_size=2, batch_size=2)
    assert metrics.registry.get_sample_value("alignd_store_queue_full_total") > 0
    assert query(location, "SELECT count(*) FROM requests") == [(50,)]  # none dropped


WRITER = textwrap.dedent("""
    import asyncio, sys
    from alignd.server.experiments.store import ExperimentStore
    from tests.server.experiments.test_store import record

    async def main(path):
        store = ExperimentStore(path)
        store.start()

        async def writer(k):
            i = 0
            while True:
                request_id = f"w{k}-{i}"
                await store.record_request(record(request_id))
                print(request_id, flush=True)  # acknowledged: committed
                i += 1

        await asyncio.gather(*(writer(k) for k in range(8)))

    asyncio.run(main(sys.argv[1]))
""")


def test_every_acknowledged_write_survives_sigkill(location):
    process = subprocess.Popen([sys.executable, "-c", WRITER, location], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        while len(acknowledged) < 400:
            line = process.stdout.readline()
            assert line, "writer died"
            acknowledged.append(line.strip())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    if not location.startswith("postgresql://"):
        assert query(location, "PRAGMA integrity_check") == [("ok",)]
    stored = {r[0] for r in query(location, "SELECT request_id FROM requests")}
    assert set(acknowledged) <= stored
    # And the server's own code opens it again without repair and keeps writing.
    run(lambda store: store.record_request(record("after-crash")), location)


def test_a_store_from_a_newer_schema_is_refused(location):
    from alignd.errors import Unavailable
    from alignd.server.experiments.databases import SCHEMA_VERSION

    run(lambda store: store.record_request(record("r1")), location)
    assert query(location, "SELECT version FROM alignd_schema") == [(SCHEMA_VERSION,)]
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as connection:
            connection.execute("INSERT INTO alignd_schema VALUES (99)")
    else:
        with sqlite3.connect(location) as connection:
            connection.execute("INSERT INTO alignd_schema VALUES (99)")
    with pytest.raises(Unavailable, match="schema version 99 is newer"):
        ExperimentStore(location)


def test_a_sqlite_file_from_before_the_version_table_is_version_1(tmp_path):
    """Files written by earlier alignd kept their version in PRAGMA user_version."""
    from alignd.server.experiments.databases import MIGRATIONS

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as connection:
        for statement in MIGRATIONS[0][1]:
            connection.execute(statement)
        connection.execute("PRAGMA user_version = 1")
    run(lambda store: store.record_request(record("r1")), str(path))
    assert query(str(path), "SELECT version FROM alignd_schema") == []  # nothing to migrate, nothing written
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    from alignd.errors import Unavailable

    with pytest.raises(Unavailable, match="schema version 99"):
        ExperimentStore(path)


def test_a_score_that_is_not_finite_is_read_back_as_nan(location):
    """SQLite stores NaN as NULL, PostgreSQL as NaN: either way the report reads NaN."""
    import math

    nan_record = RequestRecord(
        "nan", "exp", "a", "s", 1.0, "sample", {}, {}, {"r": 1.0}, {"r": math.nan}, math.nan, 0.01, 3, 4, "length"
    )

    async def scenario(store):
        await store.record_request(nan_record)
        return await store.rows("exp")

    rows = run(scenario, location)
    ((_arm, _subject, rewards, weighted, _latency, _tokens),) = rows.requests
    assert math.isnan(weighted) and math.isnan(rewards["r"])


def test_a_failing_write_is_answered_and_the_writer_keeps_going(location):
    from alignd.errors import Unavailable

    broken = RequestRecord(
        "bad", "exp", "a", "s", 1.0, "sample", {"not json": {1, 2}}, {}, {}, {}, 0.0, 0.01, 3, 4, "length"
    )

    async def scenario(store):
        first = await asyncio.gather(store.record_request(broken), return_exceptions=True)
        await store.record_request(record("good"))
        return first[0]

    error = run(scenario, location)
    assert isinstance(error, Unavailable)
    assert query(location, "SELECT request_id FROM requests") == [("good",)]


def test_postgresql_going_away_answers_unavailable_and_the_store_recovers():
    from alignd.errors import Unavailable
    from tests.postgres import PostgresServer, missing_reason

    if missing_reason():
        pytest.skip(missing_reason())
    server = PostgresServer()
    server.start()

    async def scenario(store):
        await store.record_request(record("before"))
        server.stop("immediate")  # the database is lost mid-service
        lost = await asyncio.gather(
            store.record_request(record("while-down")), store.has_request("before"), return_exceptions=True
        )
        server.start()
        await store.record_request(record("after"))  # a new connection for the next batch
        return lost, await store.has_request("before"), await store.has_request("after")

    try:
        lost, before, after = run(scenario, server.url)
        assert all(isinstance(e, Unavailable) for e in lost), lost
        assert before and after
        assert {r[0] for r in query(server.url, "SELECT request_id FROM requests")} == {"before", "after"}
    finally:
        server.destroy()


def test_an_unreachable_or_malformed_database_is_one_line_without_the_password(monkeypatch):
    from alignd.config import STORE_ENV, ConfigError, ServerConfig
    from alignd.server.experiments.registry import Experiments

    monkeypatch.delenv(STORE_ENV, raising=False)
    url = "postgresql://alignd:s3cret@127.0.0.1:1/none"
    with pytest.raises(ConfigError) as error:
        asyncio.run(Experiments.open(ServerConfig(experiment_store=url), Metrics(), lambda request: None))
    message = str(error.value)
    assert message.startswith("experiment_store: cannot open 'postgresql://alignd:***@127.0.0.1:1/none': ")
    assert "\n" not in message and "s3cret" not in message
    monkeypatch.setenv(STORE_ENV, "postgresql://alignd:pa ss@db/x")  # a space: libpq quotes the password
    with pytest.raises(ConfigError) as error:
        asyncio.run(Experiments.open(ServerConfig(), Metrics(), lambda request: None))
    message = str(error.value)
    assert message.startswith(f"{STORE_ENV}: not a valid PostgreSQL URL") and "pa ss" not in message


def test_a_write_that_fails_in_a_batch_is_replayed_alone_and_the_others_commit(location):
    """Batches run without savepoints (pipelined on PostgreSQL); a write that fails there makes
    the store replay the batch with savepoints, so only that write is refused."""
    from alignd.errors import Unavailable

    broken = RequestRecord(
        "bad", "exp", "a", "s", 1.0, "sample", {"not json": {1, 2}}, {}, {}, {}, 0.0, 0.01, 3, 4, "length"
    )

    async def scenario(store):
        await store.record_request(record("dup"))
        return await asyncio.gather(
            store.record_request(record("g1")),
            store.record_request(broken),
            store.record_request(record("dup")),
            store.record_request(record("g2")),
            return_exceptions=True,
        )

    results = run(scenario, location)
    assert results[0] is None and results[3] is None
    assert isinstance(results[1], Unavailable) and isinstance(results[2], AlreadyExists)
    assert {r[0] for r in query(location, "SELECT request_id FROM requests")} == {"dup", "g1", "g2"}
