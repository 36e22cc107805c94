"""The Python client against an in-process fake servicer (no model): requests it builds, the plain
types it returns, and errors as AligndClientError with the status code."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from alignd.clients import (
    KL,
    AligndClient,
    AligndClientError,
    AsyncAligndClient,
    ExperimentReport,
    Generation,
    HeadInfo,
    ParameterInfo,
    Progress,
    SamplingSettings,
    Scored,
    ServerInfo,
    ServerLimits,
)
from alignd.clients.client import build_request, experiment_message, feedback_request
from alignd.v1 import alignd_pb2 as pb
from alignd.v1 import alignd_pb2_grpc as pb_grpc

EXPERIMENT = "bon-vs-sample"


def response_for(request: pb.GenerateRequest) -> pb.GenerateResponse:
    """What the real server would answer, enough to check the conversion; an experiment request is
    served by arm "bon8" with best_of_n, else by the named strategy or the default, sample."""
    strategy = "best_of_n" if request.experiment else (request.strategy or "sample")
    return pb.GenerateResponse(
        request_id=request.request_id or "r-1",
        strategy=strategy,
        model="fake",
        text="hello " + request.prompt,
        token_ids=[5, 6],
        finish_reason="stop",
        rewards={"positivity": 0.5, "conciseness": 1.0},
        weighted_score=0.75,
        weights={"positivity": 0.5, "conciseness": 0.5},
        kl=[
            pb.KLEstimate(name="best_of_n_bound", kind=pb.KLEstimate.UPPER_BOUND, nats=1.5, description="log n"),
            pb.KLEstimate(name="exact", kind=pb.KLEstimate.EXACT, nats=0.0, description="none"),
        ],
        candidates=[
            pb.Candidate(text="a", rewards={"positivity": 1.0}, weighted_score=1.0, logprob=-2.0, selected=True),
            pb.Candidate(
                text="b", rewards={"positivity": 0.0}, weighted_score=0.0, logprob=-3.0, finish_reason="length"
            ),
        ]
        if request.return_candidates
        else [],
        usage=pb.Usage(
            prompt_tokens=3,
            generated_tokens=2,
            lm_forward_tokens=9,
            scorer_calls=1,
            scored_texts=4,
            wall_seconds=0.25,
            phase_seconds={"sample": 0.2},
        ),
        details={"n": 4.0},
        experiment=request.experiment,
        arm="bon8" if request.experiment else "",
    )


def fake_server_info() -> pb.ServerInfo:
    return pb.ServerInfo(
        version="9.9",
        model="fake",
        backend="transformers",
        device="cpu",
        objectives=[
            pb.ObjectiveInfo(
                name="positivity",
                description="sentiment",
                min_value=0.0,
                max_value=1.0,
                higher_is_better=True,
                default_weight=0.5,
                value_sources=["heads", "prefix"],
                auto_value_source="prefix",
                value_source_pair_accuracy={"heads": 0.61, "prefix": 0.74},
            ),
            pb.ObjectiveInfo(name="length", min_value=-math.inf, max_value=math.inf, value_sources=["prefix"]),
        ],
        strategies=[
            pb.StrategyInfo(name="sample", description="pi_ref"),
            pb.StrategyInfo(
                name="best_of_n",
                description="argmax of n",
                parameters=[
                    pb.ParameterInfo(name="n", type="int", default_value="8", min_value=1, max_value=64),
                    pb.ParameterInfo(name="mode", type="str", default_value="a", choices=["a", "b"]),
                ],
                requires=["sample"],
                sampling_defaults=pb.SamplingParams(temperature=0.7, stop=["\n\n"]),
            ),
        ],
        limits=pb.Limits(
            max_prompt_chars=100,
            max_tokens=32,
            max_candidates=64,
            max_stop_sequences=4,
            max_stop_chars=10,
            max_score_responses=8,
            max_batch_tokens=4096,
            max_prompt_tokens=512,
        ),
        default_sampling=pb.SamplingParams(temperature=1.0, top_p=1.0, top_k=0, max_tokens=16),
        capabilities=["extend", "sample"],
        heads=[pb.HeadInfo(kind="value", path="/h.safetensors", base_model="m", objectives=["positivity"])],
    )


class FakeAlignd(pb_grpc.AligndServicer):
    """Answers like the server where the client cares, and keeps the requests it saw."""

    def __init__(self) -> None:
        self.requests: list = []

    def _check_generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext) -> None:
        self.requests.append(request)
        if request.prompt == "fail":
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "controlled: needs value heads")
        if request.experiment and (request.strategy or request.WhichOneof("params")):
            # As the server: the arm chooses the strategy and its parameters.
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "strategy: the arm chooses the strategy; leave it unset")

    def Generate(self, request, context):
        self._check_generate(request, context)
        return response_for(request)

    def GenerateStream(self, request, context):
        self._check_generate(request, context)
        candidate = pb.Candidate(text="a", rewards={"positivity": 1.0}, weighted_score=1.0)
        yield pb.GenerateEvent(
            progress=pb.Progress(
                phase="block",
                step=1,
                message="block 1",
                elapsed_seconds=0.1,
                candidates=[candidate],
                weights={"positivity": 1.0},
                worst_objective="positivity",
                worst_value=-0.5,
                instructions=["be kind"],
            )
        )
        if request.prompt == "fail later":
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "too slow")
        yield pb.GenerateEvent(result=response_for(request))

    def Score(self, request, context):
        self.requests.append(request)
        return pb.ScoreResponse(
            scores=[pb.ScoredText(rewards={"length": float(len(r))}, weighted_score=len(r)) for r in request.responses]
        )

    def GetServerInfo(self, request, context):
        return fake_server_info()

    def RecordFeedback(self, request, context):
        self.requests.append(request)
        return pb.FeedbackResponse(replaced=request.key == "again")

    def GetExperimentReport(self, request, context):
        if request.name != EXPERIMENT:
            context.abort(grpc.StatusCode.NOT_FOUND, f"name: no experiment named {request.name!r}")
        mean = pb.MeanEstimate(mean=0.5, low=0.25, high=0.75, count=10)
        return pb.ExperimentReport(
            experiment=pb.Experiment(name=EXPERIMENT),
            arms=[
                pb.ArmReport(
                    name="bon8",
                    strategy="best_of_n",
                    split=0.5,
                    requests=10,
                    subjects=4,
                    rewards={"positivity": mean},
                    weighted_score=mean,
                    latency_p50_seconds=0.1,
                    latency_p95_seconds=0.3,
                    generated_tokens=pb.MeanEstimate(mean=12.0, low=10.0, high=14.0, count=10),
                    thumbs_up=pb.RateEstimate(successes=3, trials=4, rate=0.75, low=0.3, high=0.95),
                    rating=pb.MeanEstimate(mean=math.nan, low=math.nan, high=math.nan),
                ),
            ],
            comparisons=[
                pb.ArmComparison(
                    arm="bon8",
                    baseline="control",
                    metric="weighted_score",
                    test="welch_t",
                    difference=0.2,
                    low=0.05,
                    high=0.35,
                    p_value=0.01,
                    significant=True,
                )
            ],
            requests=20,
            feedback=4,
            generated_unix=1700000000.0,
        )


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeAlignd, str]]:
    servicer = FakeAlignd()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_AligndServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def client(fake) -> Iterator[AligndClient]:
    fake[0].requests.clear()
    with AligndClient(fake[1], timeout=10) as c:
        yield c


# -- build_request ----------------------------------------------------------------------------


def test_build_request_splits_sampling_keywords_from_strategy_parameters():
    request = build_request(
        "q",
        strategy="best_of_n",
        n=4,
        temperature=0.5,
        max_tokens=12,
        stop=["\n"],
        seed=7,
        top_p=None,  # None: left unset, as if not given
        weights={"positivity": 1.0},
        system_prompt="be brief",
        return_candidates=True,
    )
    assert request.WhichOneof("params") == "best_of_n" and request.best_of_n.n == 4
    assert request.sampling.temperature == 0.5 and request.sampling.max_tokens == 12
    assert list(request.sampling.stop) == ["\n"] and request.sampling.seed == 7
    assert not request.sampling.HasField("top_p") and not request.sampling.HasField("top_k")
    assert dict(request.weights) == {"positivity": 1.0} and request.system_prompt == "be brief"
    assert request.return_candidates


def test_build_request_fills_repeated_and_map_parameters():
    request = build_request(
        "q", strategy="robust", objectives=["positivity", "conciseness"], min_weights={"positivity": 0.2}
    )
    assert list(request.robust.objectives) == ["positivity", "conciseness"]
    assert dict(request.robust.min_weights) == pytest.approx({"positivity": 0.2})


def test_build_request_without_parameters_leaves_them_to_the_server():
    named = build_request("q", strategy="best_of_n")
    assert named.WhichOneof("params") == "best_of_n" and not named.best_of_n.ListFields()  # server defaults
    plain = build_request("q")
    assert plain.strategy == "" and plain.WhichOneof("params") is None
    assert not plain.sampling.ListFields()


def test_build_request_refuses_parameters_it_cannot_place():
    with pytest.raises(TypeError, match="best_of_n"):
        build_request("q", strategy="best_of_n", num_candidates=3)
    with pytest.raises(TypeError, match="without a strategy"):
        build_request("q", n=3)
    with pytest.raises(TypeError, match="'beam' has no parameter message"):
        build_request("q", strategy="beam", width=3)


def test_experiment_message_builds_arm_requests_without_prompts():
    message = experiment_message(
        "e",
        [
            {"name": "control", "split": 0.5, "strategy": "sample"},
            {"name": "bon8", "split": 0.5, "strategy": "best_of_n", "n": 8, "temperature": 0.7},
        ],
        description="d",
    )
    control, bon = message.arms
    assert (control.name, control.split, control.request.strategy) == ("control", 0.5, "sample")
    assert bon.request.best_of_n.n == 8 and bon.request.sampling.temperature == pytest.approx(0.7)
    assert bon.request.prompt == "" and message.description == "d"


def test_feedback_request_takes_exactly_one_kind():
    assert feedback_request("r", rating=4.0, key="k").rating == 4.0
    with pytest.raises(TypeError, match="exactly one"):
        feedback_request("r")
    with pytest.raises(TypeError, match="exactly one"):
        feedback_request("r", thumbs_up=True, rating=1.0)


# -- the default strategy ---------------------------------------------------------------------


def test_generate_without_a_strategy_leaves_the_choice_to_the_server(fake, client):
    out = client.generate("hi")
    (request,) = fake[0].requests
    assert request.strategy == "" and request.WhichOneof("params") is None
    assert out.strategy == "sample"  # the server's default


def test_generate_with_an_experiment_names_no_strategy_and_is_served_by_the_arm(fake, client):
    out = client.generate("hi", experiment=EXPERIMENT, subject="user-42")
    (request,) = fake[0].requests
    assert (request.experiment, request.subject, request.strategy) == (EXPERIMENT, "user-42", "")
    assert (out.experiment, out.arm, out.strategy) == (EXPERIMENT, "bon8", "best_of_n")
    # Naming a strategy with an experiment is the server's INVALID_ARGUMENT, not a silent override.
    with pytest.raises(AligndClientError) as error:
        client.generate("hi", strategy="sample", experiment=EXPERIMENT, subject="user-42")
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_with_an_experiment_names_no_strategy(fake, client):
    events = list(client.generate_stream("hi", experiment=EXPERIMENT, subject="s"))
    assert fake[0].requests[-1].strategy == "" and events[-1].arm == "bon8"


# -- responses as plain types -----------------------------------------------------------------


def test_generate_converts_the_response(client):
    out = client.generate("hi", strategy="best_of_n", n=4, return_candidates=True, request_id="mine")
    assert isinstance(out, Generation)
    assert (out.request_id, out.strategy, out.model, out.text, out.finish_reason) == (
        "mine",
        "best_of_n",
        "fake",
        "hello hi",
        "stop",
    )
    assert out.rewards == {"positivity": 0.5, "conciseness": 1.0} and out.weighted_score == 0.75
    assert out.kl == [
        KL("best_of_n_bound", "upper_bound", 1.5, "log n"),
        KL("exact", "exact", 0.0, "none"),
    ]
    assert out.kl_by_name("exact").kind == "exact"
    assert out.token_ids == [5, 6] and out.details == {"n": 4.0}
    assert out.usage.lm_forward_tokens == 9 and out.usage.scored_texts == 4
    assert out.usage.phase_seconds == pytest.approx({"sample": 0.2})
    assert [(c.text, c.selected, c.finish_reason) for c in out.candidates] == [("a", True, ""), ("b", False, "length")]
    assert (out.experiment, out.arm) == ("", "")


def test_generate_stream_yields_progress_then_the_generation(client):
    events = list(client.generate_stream("hi", strategy="controlled", num_candidates=2))
    progress, result = events
    assert isinstance(progress, Progress) and isinstance(result, Generation)
    assert (progress.phase, progress.step, progress.message) == ("block", 1, "block 1")
    assert progress.weights == {"positivity": 1.0} and progress.instructions == ["be kind"]
    assert (progress.worst_objective, progress.worst_value) == ("positivity", -0.5)
    assert progress.candidates[0].rewards == {"positivity": 1.0}
    assert result.strategy == "controlled"


def test_score_returns_scored_per_response(fake, client):
    scored = client.score("q", ["ab", "abcd"], weights={"length": 1.0})
    assert scored == [Scored({"length": 2.0}, 2.0), Scored({"length": 4.0}, 4.0)]
    assert dict(fake[0].requests[-1].weights) == {"length": 1.0}


def test_server_info_is_plain_dataclasses(client):
    info = client.server_info()
    assert isinstance(info, ServerInfo)
    assert (info.version, info.model, info.backend, info.device) == ("9.9", "fake", "transformers", "cpu")
    positivity = info.objective("positivity")
    assert positivity.value_sources == ["heads", "prefix"] and positivity.auto_value_source == "prefix"
    assert positivity.value_source_pair_accuracy == pytest.approx({"heads": 0.61, "prefix": 0.74})
    assert (positivity.min_value, positivity.max_value, positivity.higher_is_better) == (0.0, 1.0, True)
    assert positivity.default_weight == 0.5
    assert info.objective("length").max_value == math.inf
    best_of_n = info.strategy("best_of_n")
    assert best_of_n.parameter("n") == ParameterInfo("n", "int", "8", "", 1.0, 64.0, [])
    assert best_of_n.parameter("mode").min_value is None and best_of_n.parameter("mode").choices == ["a", "b"]
    assert best_of_n.requires == ["sample"]
    # Only what the strategy sets: unset fields stay None, not protobuf's zeros.
    assert best_of_n.sampling_defaults == SamplingSettings(temperature=0.7, stop=["\n\n"])
    assert info.strategy("sample").sampling_defaults == SamplingSettings()
    assert info.default_sampling == SamplingSettings(temperature=1.0, top_p=1.0, top_k=0, max_tokens=16)
    assert info.limits == ServerLimits(100, 32, 64, 4, 10, 8, 4096, 512)
    assert info.capabilities == ["extend", "sample"]
    assert info.heads == [HeadInfo("value", "/h.safetensors", "m", ["positivity"], "", {})]


def test_feedback_and_report(fake, client):
    assert client.feedback("r-1", thumbs_up=True) is False
    assert client.feedback("r-1", rating=3.0, key="again") is True
    assert fake[0].requests[-1].rating == 3.0
    report = client.report(EXPERIMENT)
    assert isinstance(report, ExperimentReport)
    assert (report.name, report.requests, report.feedback) == (EXPERIMENT, 20, 4)
    arm = report.arm("bon8")
    assert (arm.strategy, arm.split, arm.requests, arm.subjects) == ("best_of_n", 0.5, 10, 4)
    assert arm.rewards["positivity"].count == 10 and arm.weighted_score.low == 0.25
    assert arm.generated_tokens.mean == 12.0 and arm.thumbs_up.rate == 0.75 and math.isnan(arm.rating.mean)
    (comparison,) = report.comparisons
    assert (comparison.arm, comparison.baseline, comparison.significant) == ("bon8", "control", True)
    assert comparison.p_value == 0.01


# -- errors -----------------------------------------------------------------------------------


def test_server_errors_raise_aligndclienterror_with_the_status_code(client):
    with pytest.raises(AligndClientError) as error:
        client.generate("fail")
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.value.details == "controlled: needs value heads"
    assert str(error.value) == "FAILED_PRECONDITION: controlled: needs value heads"
    with pytest.raises(AligndClientError) as error:
        client.report("nope")
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_stream_errors_raise_aligndclienterror_after_the_events_so_far(client):
    events = []
    with pytest.raises(AligndClientError) as error:
        for event in client.generate_stream("fail later"):
            events.append(event)
    assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and len(events) == 1


def test_an_unreachable_server_is_unavailable():
    with AligndClient("127.0.0.1:1", timeout=5) as dead, pytest.raises(AligndClientError) as error:
        dead.server_info()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE


# -- the asyncio client -----------------------------------------------------------------------


def test_async_client_has_the_same_behaviour(fake):
    async def calls():
        async with AsyncAligndClient(fake[1], timeout=10) as client:
            out = await client.generate("hi", experiment=EXPERIMENT, subject="s")
            plain = await client.generate("hi")
            events = [e async for e in client.generate_stream("hi", strategy="best_of_n", n=2)]
            info = await client.server_info()
            scored = await client.score("q", ["abc"])
            report = await client.report(EXPERIMENT)
            replaced = await client.feedback(out.request_id, preferred_over="r-2")
            errors = []
            for failing in (client.generate("fail"), client.report("nope")):
                try:
                    await failing
                except AligndClientError as error:
                    errors.append(error.code)
            try:
                async for _ in client.generate_stream("fail later"):
                    pass
            except AligndClientError as error:
                errors.append(error.code)
            return out, plain, events, info, scored, report, replaced, errors

    out, plain, events, info, scored, report, replaced, errors = asyncio.run(calls())
    assert (out.arm, out.strategy, plain.strategy) == ("bon8", "best_of_n", "sample")
    assert [type(e) for e in events] == [Progress, Generation] and events[-1].strategy == "best_of_n"
    assert isinstance(info, ServerInfo) and info.strategy("best_of_n").parameter("n").max_value == 64.0
    assert scored == [Scored({"length": 3.0}, 3.0)]
    assert report.arm("bon8").requests == 10 and replaced is False
    assert errors == [
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    ]


def test_cli_info_prints_the_server_info_as_strict_json(fake, capsys):
    import json

    from alignd.cli import main

    assert main(["info", "--target", fake[1], "--timeout", "10"]) == 0
    printed = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"not strict JSON: {name}"))
    assert printed["model"] == "fake" and printed["limits"]["max_tokens"] == 32
    length = next(o for o in printed["objectives"] if o["name"] == "length")
    assert (length["min_value"], length["max_value"]) == ("-Infinity", "Infinity")
    best_of_n = next(s for s in printed["strategies"] if s["name"] == "best_of_n")
    assert best_of_n["sampling_defaults"]["temperature"] == 0.7 and best_of_n["sampling_defaults"]["top_k"] is None
