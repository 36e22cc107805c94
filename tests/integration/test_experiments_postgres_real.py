"""A/B experiments across replicas: two `alignd serve` on SmolLM2 sharing one PostgreSQL server
(a throwaway one from the installed binaries): the same arms from either replica, feedback
through the other replica counted once, reports equal to a recomputation from the rows,
experiments created on one replica served by the other, a SIGKILL that loses no answered
request, and a database that goes away and comes back."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psycopg
import pytest

from alignd.clients import AligndClient, AligndClientError
from tests.integration.conftest import SAMPLE_VS_BON, answered_until_sigkill, expected_arm, start_serve, stop
from tests.postgres import missing_reason, running_postgres

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or ""),
]

CONFIG = """
{store}
[auth]
anonymous_role = "admin"
[default_sampling]
max_tokens = 6
temperature = 0.7
"""


def config(store: str = "") -> str:
    return CONFIG.format(store=store) + SAMPLE_VS_BON


def _rows(url: str, sql: str) -> list[tuple]:
    with psycopg.connect(url) as connection:
        return [tuple(r) for r in connection.execute(sql).fetchall()]


@pytest.fixture(scope="module")
def database():
    with running_postgres() as server:  # its own: the tests stop and start it
        yield server


@pytest.fixture(scope="module")
def replicas(database, tmp_path_factory):
    """Replica A reads the URL from its config file; replica B from the environment (no password
    in a file), with no store in its config at all."""
    folder = tmp_path_factory.mktemp("replicas")
    a_config, b_config = folder / "a.toml", folder / "b.toml"
    a_config.write_text(config(f'experiment_store = "{database.url}"'))
    b_config.write_text(config())
    (folder / "a").mkdir()
    (folder / "b").mkdir()
    a = start_serve(folder / "a", "--config", str(a_config))
    try:
        b = start_serve(folder / "b", "--config", str(b_config), env={"ALIGND_EXPERIMENT_STORE": database.url})
    except BaseException:
        stop(a)
        raise
    yield a, b
    stop(a)
    stop(b)


def test_two_replicas_serve_one_experiment(replicas, database):
    a, b = replicas
    subjects = [f"user-{i}" for i in range(24)]
    with AligndClient(a.target, timeout=120) as on_a, AligndClient(b.target, timeout=120) as on_b:
        clients = [on_a, on_b]

        def serve(i: int):
            return clients[i % 2].generate(
                "Name a fruit.", strategy="", experiment="sample-vs-bon", subject=subjects[i]
            )

        with ThreadPoolExecutor(4) as pool:
            served = list(pool.map(serve, range(len(subjects))))
            # The same subjects through the other replica: the same arms.
            again = list(
                pool.map(
                    lambda i: clients[(i + 1) % 2].generate(
                        "Name a fruit.", strategy="", experiment="sample-vs-bon", subject=subjects[i]
                    ),
                    range(len(subjects)),
                )
            )
        assert [g.arm for g in served] == [g.arm for g in again] == [expected_arm(s) for s in subjects]

        # Feedback for a request served by A, sent to B, then retried on A: one record.
        first = served[0]
        assert on_b.feedback(first.request_id, thumbs_up=True) is False
        assert on_a.feedback(first.request_id, thumbs_up=True) is True
        for g in served[1:12]:
            clients[1].feedback(g.request_id, rating=4.0)
        assert _rows(database.url, f"SELECT count(*) FROM feedback WHERE request_id = '{first.request_id}'") == [(1,)]

        reports = [on_a.report("sample-vs-bon"), on_b.report("sample-vs-bon")]
        rows = _rows(
            database.url, "SELECT arm, rewards, weighted_score FROM requests WHERE experiment = 'sample-vs-bon'"
        )
        assert len(rows) == 2 * len(subjects)
        for report in reports:
            assert report.requests == len(rows)
            for arm in report.arms:
                mine = [r for r in rows if r[0] == arm.name]
                assert arm.requests == len(mine)
                assert arm.weighted_score.mean == pytest.approx(sum(r[2] for r in mine) / len(mine))
                for objective, estimate in arm.rewards.items():
                    assert estimate.mean == pytest.approx(sum(json.loads(r[1])[objective] for r in mine) / len(mine))
        assert reports[0].arm("sample").thumbs_up.trials + reports[0].arm("bon4").thumbs_up.trials == 1

        # Created on A, served by B without a restart (B looks an unknown name up in the store).
        arms = [
            {"name": "plain", "strategy": "sample", "split": 0.5},
            {"name": "bon2", "strategy": "best_of_n", "n": 2, "split": 0.5},
        ]
        on_a.create_experiment("fresh", arms)
        out = on_b.generate("Name a fruit.", strategy="", experiment="fresh", subject="someone")
        expected = expected_arm("someone", "fresh", ("plain", "bon2"))
        assert out.experiment == "fresh" and out.arm == expected
        on_a.create_experiment("listed", arms)  # and B lists one it was never asked for
        assert {e.name for e in on_b.experiments()} >= {"sample-vs-bon", "fresh", "listed"}


def test_sigkill_of_a_replica_loses_no_answered_request(replicas, database, tmp_path):
    a, _ = replicas
    path = tmp_path / "c.toml"
    path.write_text(config(f'experiment_store = "{database.url}"'))
    victim = start_serve(tmp_path, "--config", str(path))
    answered = answered_until_sigkill(victim)
    stored = {r[0] for r in _rows(database.url, "SELECT request_id FROM requests")}
    assert len(answered) >= 16 and set(answered) <= stored
    with AligndClient(a.target, timeout=60) as client:  # the other replica takes feedback for them
        client.feedback(answered[-1], thumbs_up=True)


def test_losing_the_database_fails_experiment_requests_only_and_recovers(replicas, database):
    a, _ = replicas
    with AligndClient(a.target, timeout=120) as client:
        database.stop("immediate")
        try:
            with pytest.raises(AligndClientError) as error:
                client.generate("Hi.", strategy="", experiment="sample-vs-bon", subject="down-1")
            assert error.value.code == grpc.StatusCode.UNAVAILABLE and "experiment store" in error.value.details
            assert client.generate("Hi.", max_tokens=3).text is not None  # not an experiment: served
        finally:
            database.start()
        out = client.generate("Hi.", strategy="", experiment="sample-vs-bon", subject="down-2")
        assert out.arm == expected_arm("down-2")


@pytest.mark.parametrize(
    "url, expected",
    [
        ("postgresql://nobody@127.0.0.1:1/none", "cannot open 'postgresql://nobody@127.0.0.1:1/none'"),
        ("mysql://host/db", "mysql:// is not a store alignd can use"),
    ],
)
def test_a_wrong_or_unreachable_database_stops_serve_with_one_line(tmp_path, url, expected):
    path = tmp_path / "c.toml"
    path.write_text(config(f'experiment_store = "{url}"'))
    result = subprocess.run(
        [sys.executable, "-m", "alignd.cli", "serve", "--port", "0", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("alignd: error:")]
    assert len(lines) == 1 and expected in lines[0], result.stderr[-2000:]
    assert not (Path.cwd() / "postgresql:").exists() and not (Path.cwd() / "mysql:").exists()
