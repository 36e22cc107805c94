"""The SQLite experiment store: WAL, group commit, idempotent feedback, back-pressure, and no loss
of an acknowledged write when the process is killed."""

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


def test_store_uses_wal(tmp_path):
    run(lambda store: store.record_request(record("r1")), tmp_path / "s.sqlite")
    with sqlite3.connect(tmp_path / "s.sqlite") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert connection.execute("SELECT request_id FROM requests").fetchall() == [("r1",)]


def test_concurrent_writes_share_commits(tmp_path):
    metrics = Metrics()

    async def many(store):
        await asyncio.gather(*(store.record_request(record(f"r{i}")) for i in range(300)))

    run(many, tmp_path / "s.sqlite", metrics=metrics)
    commits = metrics.registry.get_sample_value("alignd_store_commit_seconds_count")
    assert commits < 300 / 4  # group commit: many records per transaction
    with sqlite3.connect(tmp_path / "s.sqlite") as connection:
        assert connection.execute("SELECT count(*) FROM requests").fetchone()[0] == 300


def test_a_refused_write_does_not_undo_the_others_in_its_batch(tmp_path):
    async def mixed(store):
        await store.record_request(record("dup"))
        return await asyncio.gather(
            store.record_request(record("x1")),
            store.record_request(record("dup")),
            store.record_request(record("x2")),
            return_exceptions=True,
        )

    results = run(mixed, tmp_path / "s.sqlite")
    assert results[0] is None and isinstance(results[1], AlreadyExists) and results[2] is None
    with sqlite3.connect(tmp_path / "s.sqlite") as connection:
        assert {r[0] for r in connection.execute("SELECT request_id FROM requests")} == {"dup", "x1", "x2"}


def test_feedback_replaces_per_identity_and_checks_requests(tmp_path):
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

    replaced, errors, rows = run(scenario, tmp_path / "s.sqlite")
    assert replaced == [False, True, False, False, True]
    assert isinstance(errors[0], NotFound) and str(errors[0]).startswith("request_id")
    assert isinstance(errors[1], NotFound) and str(errors[1]).startswith("preferred_over")
    assert isinstance(errors[2], InvalidArgument) and errors[2].field == "preferred_over"
    with sqlite3.connect(tmp_path / "s.sqlite") as connection:
        thumbs = connection.execute("SELECT key, value FROM feedback WHERE kind = 'thumbs' ORDER BY key").fetchall()
        preference = connection.execute(
            "SELECT request_id, other_request_id, value FROM feedback WHERE kind = 'preference'"
        ).fetchall()
    assert thumbs == [("", 0.0), ("rater", 1.0)]
    assert preference == [("a", "b", 1.0)]  # one row per pair; the last judgment (a over b) stands
    assert len(rows.requests) == 2 and len(rows.feedback) == 3


def test_a_full_queue_makes_writers_wait_and_is_counted(tmp_path):
    metrics = Metrics()

    async def flood(store):
        await asyncio.gather(*(store.record_request(record(f"r{i}")) for i in range(50)))

    run(flood, tmp_path / "s.sqlite", metrics=metrics, queue_size=2, batch_size=2)
    assert metrics.registry.get_sample_value("alignd_store_queue_full_total") > 0
    with sqlite3.connect(tmp_path / "s.sqlite") as connection:
        assert connection.execute("SELECT count(*) FROM requests").fetchone()[0] == 50  # none dropped


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


def test_every_acknowledged_write_survives_sigkill(tmp_path):
    path = tmp_path / "s.sqlite"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    acknowledged = []
    try:
        while len(acknowledged) < 400:
            line = process.stdout.readline()
            assert line, "writer died"
            acknowledged.append(line.strip())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {r[0] for r in connection.execute("SELECT request_id FROM requests")}
    finally:
        connection.close()
    assert set(acknowledged) <= stored
    # And the server's own code opens it again without repair and keeps writing.
    run(lambda store: store.record_request(record("after-crash")), path)


def test_a_store_from_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "s.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    from alignd.errors import Unavailable

    with pytest.raises(Unavailable, match="schema version 99"):
        ExperimentStore(path)


def test_a_score_that_is_not_finite_is_stored_as_null_and_read_back_as_nan(tmp_path):
    import math

    nan_record = RequestRecord(
        "nan", "exp", "a", "s", 1.0, "sample", {}, {}, {"r": 1.0}, {"r": math.nan}, math.nan, 0.01, 3, 4, "length"
    )

    async def scenario(store):
        await store.record_request(nan_record)
        return await store.rows("exp")

    rows = run(scenario, tmp_path / "s.sqlite")
    ((_arm, _subject, rewards, weighted, _latency, _tokens),) = rows.requests
    assert math.isnan(weighted) and math.isnan(rewards["r"])


def test_a_failing_write_is_answered_and_the_writer_keeps_going(tmp_path):
    from alignd.errors import Unavailable

    broken = RequestRecord(
        "bad", "exp", "a", "s", 1.0, "sample", {"not json": {1, 2}}, {}, {}, {}, 0.0, 0.01, 3, 4, "length"
    )

    async def scenario(store):
        first = await asyncio.gather(store.record_request(broken), return_exceptions=True)
        await store.record_request(record("good"))
        return first[0]

    error = run(scenario, tmp_path / "s.sqlite")
    assert isinstance(error, Unavailable)
    with sqlite3.connect(tmp_path / "s.sqlite") as connection:
        assert [r[0] for r in connection.execute("SELECT request_id FROM requests")] == ["good"]
