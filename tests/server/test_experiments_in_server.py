"""A/B experiments through the gRPC server on the tiny model: routing, records, feedback, reports,
admin RPCs and every refusal with its status code."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import grpc
import pytest

from alignd.backends.base import SamplingParams
from alignd.clients import AligndClient, AligndClientError
from alignd.config import AuthOptions, ConfigError, ServerConfig
from tests.server.conftest import TEST_LIMITS, running_server

EXPERIMENT = {
    "name": "bon-vs-sample",
    "arms": [
        {"name": "control", "strategy": "sample", "split": 0.5},
        {
            "name": "bon4",
            "strategy": "best_of_n",
            "params": {"n": 4},
            "split": 0.5,
            "weights": {"e_count": 1.0, "o_count": 0.0},
            "sampling": {"temperature": 1.0},
        },
    ],
}


def _config(store, **overrides) -> ServerConfig:
    values = dict(
        port=0,
        limits=TEST_LIMITS,
        default_sampling=SamplingParams(max_tokens=8),
        workers=2,
        experiments=(EXPERIMENT,),
        experiment_store=str(store),
    )
    values.update(overrides)
    return ServerConfig(**values)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return tmp_path_factory.mktemp("store") / "experiments.sqlite"


@pytest.fixture(scope="module")
def ab_server(tiny_policy, module_letter_scorer, store_path):
    config = _config(store_path, auth=AuthOptions(anonymous_role="admin"))
    with running_server(tiny_policy, module_letter_scorer, config) as running:
        yield running


@pytest.fixture
def ab_client(ab_server):
    with AligndClient(f"127.0.0.1:{ab_server.port}", timeout=60) as c:
        yield c


def _rows(store_path, experiment="bon-vs-sample"):
    with sqlite3.connect(store_path) as connection:
        return connection.execute(
            "SELECT request_id, arm, subject, strategy, params, rewards, weighted_score, "
            "weights FROM requests WHERE experiment = ?",
            (experiment,),
        ).fetchall()


def test_subject_is_served_by_its_hashed_arm_and_the_request_is_recorded(ab_client, ab_server, store_path):
    spec = ab_server.core.experiments._specs["bon-vs-sample"]
    for subject in ("user-1", "user-2", "user-3", "user-4", "user-5", "user-6"):
        out = ab_client.generate("hello", strategy="", experiment="bon-vs-sample", subject=subject, seed=1)
        expected = spec.arm_for(subject)
        assert out.experiment == "bon-vs-sample" and out.arm == expected.name
        assert out.strategy == expected.strategy
        row = next(r for r in _rows(store_path) if r[0] == out.request_id)
        assert row[1:4] == (expected.name, subject, expected.strategy)
        assert json.loads(row[5]) == pytest.approx(out.rewards)
        assert row[6] == pytest.approx(out.weighted_score)
        if expected.name == "bon4":
            assert json.loads(row[4]) == {"n": 4}
            assert json.loads(row[7]) == {"e_count": 1.0, "o_count": 0.0}


def test_same_subject_gets_the_same_arm_every_time(ab_client):
    arms = {ab_client.generate("hi", strategy="", experiment="bon-vs-sample", subject="steady").arm for _ in range(3)}
    assert len(arms) == 1


def test_stream_requests_are_recorded_before_the_result_arrives(ab_client, store_path):
    events = list(ab_client.generate_stream("hello", strategy="", experiment="bon-vs-sample", subject="streamer"))
    result = events[-1]
    assert result.arm and result.request_id in {r[0] for r in _rows(store_path)}


def test_feedback_is_idempotent_per_key_and_counted_in_the_report(ab_client):
    ab_client.create_experiment(
        "feedback-counts",
        [{"name": "a", "strategy": "sample", "split": 0.5}, {"name": "b", "strategy": "sample", "split": 0.5}],
    )
    a = ab_client.generate("tell me", strategy="", experiment="feedback-counts", subject="fb-a")
    assert ab_client.feedback(a.request_id, thumbs_up=True) is False
    assert ab_client.feedback(a.request_id, thumbs_up=False) is True  # changed vote replaces
    assert ab_client.feedback(a.request_id, thumbs_up=False) is True  # a retry too
    assert ab_client.feedback(a.request_id, thumbs_up=True, key="rater-2") is False
    assert ab_client.feedback(a.request_id, rating=4.5) is False
    assert ab_client.feedback(a.request_id, rating=3.5) is True
    arm = ab_client.report("feedback-counts").arm(a.arm)
    assert (arm.thumbs_up.successes, arm.thumbs_up.trials) == (1, 2)
    assert (arm.rating.count, arm.rating.mean) == (1, 3.5)


def test_the_response_waits_for_its_record_to_commit(ab_server, ab_client, monkeypatch):
    import threading
    import time as clock

    entered, release = threading.Event(), threading.Event()
    record = ab_server.core.experiments.record

    async def gated_record(*args, **kwargs):
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        await record(*args, **kwargs)

    monkeypatch.setattr(ab_server.core.experiments, "record", gated_record)
    answers = []
    caller = threading.Thread(
        target=lambda: answers.append(
            ab_client.generate("hi", strategy="", experiment="bon-vs-sample", subject="gated")
        )
    )
    caller.start()
    assert entered.wait(30)
    clock.sleep(0.3)
    assert caller.is_alive() and not answers  # decoded, not yet recorded: no answer
    release.set()
    caller.join(30)
    assert answers and answers[0].arm


def test_pairwise_preference_is_one_record_per_pair(ab_client, ab_server, store_path):
    spec = ab_server.core.experiments._specs["bon-vs-sample"]
    subjects = {}
    i = 0
    while len(subjects) < 2:  # one subject per arm
        subjects.setdefault(spec.arm_for(f"pair-{i}").name, f"pair-{i}")
        i += 1
    first = ab_client.generate("x", strategy="", experiment="bon-vs-sample", subject=subjects["control"])
    second = ab_client.generate("x", strategy="", experiment="bon-vs-sample", subject=subjects["bon4"])
    assert ab_client.feedback(second.request_id, preferred_over=first.request_id) is False
    assert ab_client.feedback(first.request_id, preferred_over=second.request_id) is True
    with sqlite3.connect(store_path) as connection:
        rows = connection.execute(
            "SELECT request_id, other_request_id, value FROM feedback WHERE kind = 'preference'"
            " AND (request_id = ? OR request_id = ?)",
            (first.request_id, second.request_id),
        ).fetchall()
    assert len(rows) == 1
    winner = rows[0][0] if rows[0][2] == 1.0 else rows[0][1]
    assert winner == first.request_id  # the later judgment stands
    report = ab_client.report("bon-vs-sample")
    assert any(c.metric == "preference" and c.test == "binomial_exact" for c in report.comparisons)


def test_report_counts_and_means_match_the_stored_rows(ab_client, store_path):
    for i in range(6):
        ab_client.generate("count me", strategy="", experiment="bon-vs-sample", subject=f"report-{i}")
    report = ab_client.report("bon-vs-sample")
    rows = _rows(store_path)
    assert report.requests == len(rows)
    for arm in report.arms:
        mine = [r for r in rows if r[1] == arm.name]
        assert arm.requests == len(mine)
        assert arm.subjects == len({r[2] for r in mine})
        assert arm.weighted_score.mean == pytest.approx(sum(r[6] for r in mine) / len(mine))
        for objective, estimate in arm.rewards.items():
            assert estimate.mean == pytest.approx(sum(json.loads(r[5])[objective] for r in mine) / len(mine))
            assert estimate.low <= estimate.mean <= estimate.high
    assert {c.test for c in report.comparisons if c.metric == "weighted_score"} == {"welch_t"}


@pytest.mark.parametrize(
    "options, code, field",
    [
        (dict(experiment="nope", subject="u"), grpc.StatusCode.NOT_FOUND, "experiment"),
        (dict(experiment="bon-vs-sample"), grpc.StatusCode.INVALID_ARGUMENT, "subject"),
        (dict(subject="u"), grpc.StatusCode.INVALID_ARGUMENT, "subject"),
        (
            dict(experiment="bon-vs-sample", subject="u", strategy="best_of_n"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "strategy",
        ),
        (dict(experiment="bon-vs-sample", subject="x" * 300), grpc.StatusCode.INVALID_ARGUMENT, "subject"),
        # Text PostgreSQL cannot store is refused before decoding, on SQLite too.
        (dict(experiment="bon-vs-sample", subject="a\x00b"), grpc.StatusCode.INVALID_ARGUMENT, "subject"),
        (
            dict(experiment="bon-vs-sample", subject="u", request_id="id\x00"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "request_id",
        ),
    ],
)
def test_bad_experiment_requests_are_refused_naming_the_field(ab_client, options, code, field):
    options.setdefault("strategy", "")
    with pytest.raises(AligndClientError) as error:
        ab_client.generate("hello", **options)
    assert error.value.code == code and error.value.details.startswith(field)


def test_a_field_the_arm_sets_cannot_be_overridden(ab_client, ab_server):
    spec = ab_server.core.experiments._specs["bon-vs-sample"]
    subject = next(f"w-{i}" for i in range(100) if spec.arm_for(f"w-{i}").name == "bon4")
    for options, field in (
        (dict(weights={"e_count": 0.5, "o_count": 0.5}), "weights"),
        (dict(temperature=0.5), "sampling.temperature"),
    ):
        with pytest.raises(AligndClientError) as error:
            ab_client.generate("hello", strategy="", experiment="bon-vs-sample", subject=subject, **options)
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and error.value.details.startswith(field)
    # What the arm leaves unset, the request may set.
    out = ab_client.generate("hello", strategy="", experiment="bon-vs-sample", subject=subject, max_tokens=3)
    assert out.usage.generated_tokens <= 4 * 3


def test_a_recorded_request_id_cannot_be_reused(ab_client):
    ab_client.generate("a", strategy="", experiment="bon-vs-sample", subject="dup", request_id="fixed-id-1")
    with pytest.raises(AligndClientError) as error:
        ab_client.generate("a", strategy="", experiment="bon-vs-sample", subject="dup", request_id="fixed-id-1")
    assert error.value.code == grpc.StatusCode.ALREADY_EXISTS


@pytest.fixture(scope="module")
def recorded_id(ab_server):
    with AligndClient(f"127.0.0.1:{ab_server.port}", timeout=60) as c:
        return c.generate("a", strategy="", experiment="bon-vs-sample", subject="fb-target").request_id


@pytest.mark.parametrize(
    "kwargs, code, field",
    [
        (dict(request_id="never-served", thumbs_up=True), grpc.StatusCode.NOT_FOUND, "request_id"),
        (dict(request_id="", thumbs_up=True), grpc.StatusCode.INVALID_ARGUMENT, "request_id"),
        (dict(rating=float("nan")), grpc.StatusCode.INVALID_ARGUMENT, "rating"),
        (dict(preferred_over="SELF"), grpc.StatusCode.INVALID_ARGUMENT, "preferred_over"),
        (dict(preferred_over="never-served"), grpc.StatusCode.NOT_FOUND, "preferred_over"),
        (dict(thumbs_up=True, key="k" * 101), grpc.StatusCode.INVALID_ARGUMENT, "key"),
        (dict(thumbs_up=True, key="rater\x00"), grpc.StatusCode.INVALID_ARGUMENT, "key"),
    ],
)
def test_bad_feedback_is_refused_naming_the_field(ab_client, recorded_id, kwargs, code, field):
    request_id = kwargs.pop("request_id", recorded_id)
    if kwargs.get("preferred_over") == "SELF":
        kwargs["preferred_over"] = recorded_id
    with pytest.raises(AligndClientError) as error:
        ab_client.feedback(request_id, **kwargs)
    assert error.value.code == code and error.value.details.startswith(field)


def test_feedback_without_a_kind_is_refused(ab_server):
    from alignd.v1 import alignd_pb2 as pb
    from alignd.v1 import alignd_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{ab_server.port}") as channel, pytest.raises(grpc.RpcError) as error:
        pb_grpc.AligndStub(channel).RecordFeedback(pb.FeedbackRequest(request_id="x"), timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error.value.details().startswith("feedback")


def test_unknown_experiment_report_is_not_found(ab_client):
    with pytest.raises(AligndClientError) as error:
        ab_client.report("nope")
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_an_experiment_created_on_one_replica_is_served_by_another(
    ab_client, tiny_policy, module_letter_scorer, store_path
):
    with running_server(tiny_policy, module_letter_scorer, _config(store_path)) as other:
        ab_client.create_experiment("made-elsewhere", [{"name": "a", "split": 0.5}, {"name": "b", "split": 0.5}])
        with AligndClient(f"127.0.0.1:{other.port}", timeout=60) as second:
            out = second.generate("hello", strategy="", experiment="made-elsewhere", subject="u1")
            assert out.arm in {"a", "b"}
            assert second.report("made-elsewhere").requests == 1


def test_created_experiment_serves_and_survives_a_restart(ab_client, tiny_policy, module_letter_scorer, store_path):
    arms = [
        {"name": "greedy", "strategy": "sample", "temperature": 0.0, "split": 0.25},
        {"name": "bon2", "strategy": "best_of_n", "n": 2, "split": 0.75},
    ]
    created = ab_client.create_experiment("greedy-vs-bon2", arms)
    assert created.source == "rpc" and [a.name for a in created.arms] == ["greedy", "bon2"]
    out = ab_client.generate("hello", strategy="", experiment="greedy-vs-bon2", subject="u1")
    assert out.arm in {"greedy", "bon2"}
    with pytest.raises(AligndClientError) as error:
        ab_client.create_experiment("greedy-vs-bon2", arms)
    assert error.value.code == grpc.StatusCode.ALREADY_EXISTS
    # A second server on the same store (a restart or another replica) knows it and its records.
    with (
        running_server(tiny_policy, module_letter_scorer, _config(store_path)) as other,
        AligndClient(f"127.0.0.1:{other.port}", timeout=60) as second,
    ):
        assert "greedy-vs-bon2" in {e.name for e in second.experiments()}
        assert second.report("greedy-vs-bon2").arm(out.arm).requests == 1
        again = second.generate("hello", strategy="", experiment="greedy-vs-bon2", subject="u1")
        assert again.arm == out.arm


@pytest.mark.parametrize(
    "arms, field",
    [
        (
            [{"name": "a", "strategy": "sample", "split": 0.5}, {"name": "b", "strategy": "sample", "split": 0.6}],
            "arms",
        ),
        (
            [{"name": "a", "strategy": "sample", "split": -0.5}, {"name": "b", "strategy": "sample", "split": 1.5}],
            "arms[0].split",
        ),
        (
            [{"name": "a", "strategy": "sample", "split": 0.5}, {"name": "a", "strategy": "sample", "split": 0.5}],
            "arms[1].name",
        ),
        (
            [{"name": "a", "strategy": "sample", "split": 0.5}, {"name": "b", "strategy": "nope", "split": 0.5}],
            "arms[1].request.strategy",
        ),
        (
            [
                {"name": "a", "strategy": "sample", "split": 0.5},
                {"name": "b", "strategy": "best_of_n", "n": 0, "split": 0.5},
            ],
            "arms[1].request.best_of_n.n",
        ),
        (
            [
                {"name": "a", "strategy": "sample", "split": 0.5},
                {"name": "b", "strategy": "sample", "weights": {"nope": 1.0}, "split": 0.5},
            ],
            "arms[1].request.weights",
        ),
        ([{"name": "only", "strategy": "sample", "split": 1.0}], "arms"),
        (
            [
                {"name": "a", "strategy": "sample", "split": 0.5},
                {"name": "b", "strategy": "evolutionary", "beams": 3, "keep_top": 3, "split": 0.5},
            ],
            "arms[1].request.evolutionary.keep_top",
        ),
        (
            [
                {"name": "a", "strategy": "sample", "split": 0.5},
                {"name": "b", "strategy": "multi_objective", "temperature": 0.0, "split": 0.5},
            ],
            "arms[1].request.sampling.temperature",
        ),
    ],
)
def test_invalid_experiments_are_refused_at_creation(ab_client, arms, field):
    with pytest.raises(AligndClientError) as error:
        ab_client.create_experiment("bad", arms)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details.startswith(field), error.value.details


def test_an_arm_this_server_cannot_serve_is_refused_naming_it(ab_client):
    # The tiny test server has no value heads: controlled decoding on heads could never run.
    with pytest.raises(AligndClientError) as error:
        ab_client.create_experiment(
            "needs-heads",
            [
                {"name": "a", "strategy": "sample", "split": 0.5},
                {"name": "steered", "strategy": "controlled", "value_source": "heads", "split": 0.5},
            ],
        )
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details.startswith("arms[1]: arm 'steered'") and "controlled.value_source" in error.value.details


def test_admin_rpcs_are_refused_to_anonymous_users_by_default(tiny_policy, module_letter_scorer, tmp_path):
    with (
        running_server(tiny_policy, module_letter_scorer, _config(tmp_path / "s.sqlite")) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=30) as c,
        pytest.raises(AligndClientError) as error,
    ):
        c.create_experiment("x", [{"name": "a", "split": 0.5}, {"name": "b", "split": 0.5}])
    assert error.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_bad_configured_arm_stops_start_up_naming_it(tiny_policy, module_letter_scorer, tmp_path):
    bad = {
        "name": "cfg",
        "arms": [
            {"name": "ok", "strategy": "sample", "split": 0.5},
            {"name": "broken", "strategy": "best_of_n", "params": {"m": 3}, "split": 0.5},
        ],
    }
    with (
        pytest.raises(ConfigError) as error,
        running_server(tiny_policy, module_letter_scorer, _config(tmp_path / "s.sqlite", experiments=(bad,))),
    ):
        pass
    message = str(error.value)
    assert "\n" not in message and "'broken'" in message and "best_of_n.m" in message


def test_cli_creates_lists_reports_plots_and_sends_feedback(ab_server, ab_client, tmp_path, capsys):
    from alignd.cli import main

    target = f"127.0.0.1:{ab_server.port}"
    spec = tmp_path / "experiments.toml"
    spec.write_text(
        '[[experiments]]\nname = "cli-exp"\n'
        '[[experiments.arms]]\nname = "a"\nstrategy = "sample"\nsplit = 0.5\n'
        '[[experiments.arms]]\nname = "b"\nstrategy = "best_of_n"\nparams = { n = 2 }\nsplit = 0.5\n'
    )
    assert main(["experiments", "create", str(spec), "--target", target]) == 0
    assert main(["experiments", "list", "--target", target]) == 0
    assert "cli-exp" in capsys.readouterr().out
    out = ab_client.generate("hi", strategy="", experiment="cli-exp", subject="cli-user")
    assert main(["feedback", out.request_id, "--up", "--target", target]) == 0
    assert capsys.readouterr().out.strip() == "recorded"
    assert main(["feedback", out.request_id, "--down", "--target", target]) == 0
    assert capsys.readouterr().out.strip() == "replaced earlier feedback"
    plot = tmp_path / "report.png"
    assert main(["experiments", "report", "cli-exp", "--target", target, "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    assert f"{out.arm:<14}" in text and "0/1" in text  # the thumbs-down counted once
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert main(["experiments", "report", "nope", "--target", target]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["experiments", "create", str(spec), "--target", target]) == 2  # exists
    assert "ALREADY_EXISTS" in capsys.readouterr().err


def test_async_client_runs_an_experiment_round_trip(ab_server):
    from alignd.clients import AsyncAligndClient

    async def round_trip():
        async with AsyncAligndClient(f"127.0.0.1:{ab_server.port}", timeout=60) as client:
            await client.create_experiment("async-exp", [{"name": "a", "split": 0.5}, {"name": "b", "split": 0.5}])
            out = await client.generate("hi", strategy="", experiment="async-exp", subject="async-user")
            assert await client.feedback(out.request_id, rating=2.0) is False
            report = await client.report("async-exp")
            return out, report, await client.experiments()

    out, report, experiments = asyncio.run(round_trip())
    assert report.arm(out.arm).rating.count == 1 and "async-exp" in {e.name for e in experiments}
