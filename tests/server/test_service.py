"""The gRPC service in-process on the tiny model: RPCs, health, reflection and bad input."""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from alignd.clients import AligndClientError, Generation, Progress
from alignd.clients.client import build_request
from alignd.config import ServerConfig
from alignd.v1 import alignd_pb2 as pb
from alignd.v1 import alignd_pb2_grpc as pb_grpc
from tests.server.conftest import TEST_LIMITS, running_server


def test_generate_best_of_n_returns_rewards_kl_and_usage(client):
    out = client.generate(
        "tell me about bread",
        strategy="best_of_n",
        n=4,
        weights={"e_count": 1.0},
        max_tokens=12,
        seed=3,
        return_candidates=True,
    )
    assert out.strategy == "best_of_n" and out.model == "tiny"
    assert set(out.rewards) == {"e_count", "o_count"}
    assert out.weights == {"e_count": 1.0, "o_count": 0.0}
    assert {k.name: k.kind for k in out.kl} == {"best_of_n_bound": "upper_bound", "beirami_estimator": "estimate"}
    assert out.kl_by_name("best_of_n_bound").nats == pytest.approx(math.log(4) - 0.75)
    assert len(out.candidates) == 4 and sum(c.selected for c in out.candidates) == 1
    assert out.weighted_score == max(c.weighted_score for c in out.candidates)
    assert out.usage.scorer_calls == 1 and out.usage.generated_tokens > 0 and out.request_id


def test_same_seed_same_output_through_the_server(client):
    a = client.generate("hello", strategy="sample", seed=99, max_tokens=16)
    b = client.generate("hello", strategy="sample", seed=99, max_tokens=16)
    assert a.text == b.text and a.token_ids == b.token_ids


def test_strategy_given_only_by_its_params_message(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = pb_grpc.AligndStub(channel)
        response = stub.Generate(
            pb.GenerateRequest(prompt="hi", best_of_n=pb.BestOfNParams(n=2), sampling=pb.SamplingParams(max_tokens=4)),
            timeout=30,
        )
    assert response.strategy == "best_of_n" and len(response.kl) == 2


def test_stream_sends_progress_then_the_result(client):
    events = list(client.generate_stream("hi", strategy="best_of_n", n=3, max_tokens=6, seed=1))
    assert [type(e) for e in events] == [Progress, Progress, Generation]
    assert [e.phase for e in events[:-1]] == ["sampled", "scored"]
    assert len(events[1].candidates) == 3
    assert events[-1].text in {c.text for c in events[1].candidates}


def test_score_rpc_scores_each_response(client):
    scored = client.score("q", ["eee o", "oo"], weights={"o_count": 1.0})
    assert [s.rewards for s in scored] == [{"e_count": 3.0, "o_count": 1.0}, {"e_count": 0.0, "o_count": 2.0}]
    assert [s.weighted_score for s in scored] == [1.0, 2.0]


def test_server_info_lists_objectives_strategies_and_limits(client):
    info = client.server_info()
    assert [o.name for o in info.objectives] == ["e_count", "o_count"]
    strategies = {s.name: s for s in info.strategies}
    assert {"sample", "best_of_n"} <= set(strategies)
    (n,) = strategies["best_of_n"].parameters
    assert (n.name, n.default_value, n.max_value) == ("n", "8", TEST_LIMITS.max_candidates)
    assert info.limits.max_tokens == TEST_LIMITS.max_tokens and info.backend == "transformers"


def test_health_reports_serving_and_reflection_lists_the_service(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "alignd.v1.Alignd"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"alignd.v1.Alignd", "grpc.health.v1.Health"} <= names


BAD_REQUESTS = [
    ("empty prompt", dict(prompt="   "), "prompt"),
    ("oversize prompt", dict(prompt="x" * 201), "prompt"),
    ("oversize system prompt", dict(system_prompt="x" * 201), "system_prompt"),
    ("unknown strategy", dict(strategy="beam_search"), "strategy"),
    ("unknown objective", dict(weights={"helpfulness": 1.0}), "weights[helpfulness]"),
    ("nan weight", dict(weights={"e_count": math.nan}), "weights[e_count]"),
    ("inf weight", dict(weights={"e_count": math.inf}), "weights[e_count]"),
    ("negative weight", dict(weights={"e_count": -1.0, "o_count": 1.0}), "weights[e_count]"),
    ("all-zero weights", dict(weights={"e_count": 0.0, "o_count": 0.0}), "weights"),
    ("n over the limit", dict(strategy="best_of_n", n=9), "best_of_n.n"),
    ("n below 1", dict(strategy="best_of_n", n=0), "best_of_n.n"),
    ("max_tokens over the limit", dict(max_tokens=33), "sampling.max_tokens"),
    ("max_tokens zero", dict(max_tokens=0), "sampling.max_tokens"),
    ("empty stop sequence", dict(stop=["ok", ""]), "sampling.stop[1]"),
    ("oversize stop sequence", dict(stop=["toolong"]), "sampling.stop[0]"),
    ("too many stop sequences", dict(stop=["a", "b", "c"]), "sampling.stop"),
    ("negative temperature", dict(temperature=-0.5), "sampling.temperature"),
    ("nan temperature", dict(temperature=math.nan), "sampling.temperature"),
    ("vanishing temperature", dict(temperature=1e-300), "sampling.temperature"),
    ("top_p zero", dict(top_p=0.0), "sampling.top_p"),
    ("negative top_k", dict(top_k=-1), "sampling.top_k"),
]


@pytest.mark.parametrize("case, fields, field", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_input_is_invalid_argument_naming_the_field_and_the_server_keeps_serving(client, case, fields, field):
    fields = dict(fields)
    prompt = fields.pop("prompt", "hello")
    strategy = fields.pop("strategy", "sample")
    with pytest.raises(AligndClientError) as error:
        client.generate(prompt, strategy=strategy, **fields)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details.startswith(field + ":"), error.value.details
    assert client.generate("hello", max_tokens=2).text is not None


def test_params_for_another_strategy_are_refused(server):
    request = build_request("hi", strategy="best_of_n", n=2)
    request.strategy = "sample"
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel, pytest.raises(grpc.RpcError) as error:
        pb_grpc.AligndStub(channel).Generate(request, timeout=10)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith("params:")


@pytest.mark.parametrize(
    "prompt, responses, field",
    [
        ("", ["a"], "prompt"),
        ("q", [], "responses"),
        ("q", ["a"] * 5, "responses"),
        ("q", ["a", "x" * 201], "responses[1]"),
    ],
)
def test_bad_score_requests_name_the_field(client, prompt, responses, field):
    with pytest.raises(AligndClientError) as error:
        client.score(prompt, responses)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details.startswith(field + ":")


def test_unexpected_failures_are_internal_and_the_server_survives(tiny_policy):
    from alignd.rewardmodels.base import Objective, ObjectiveInfo
    from alignd.rewardmodels.objective_scorer import ObjectiveScorer

    class Broken(Objective):
        info = ObjectiveInfo("broken", "raises", 0.0, 1.0)

        def score(self, prompts, responses):
            raise RuntimeError("scorer exploded")

    from alignd.clients import AligndClient

    with (
        running_server(tiny_policy, ObjectiveScorer([Broken()]), ServerConfig(port=0)) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=30) as client,
    ):
        with pytest.raises(AligndClientError) as error:
            client.generate("hi", max_tokens=2)
        assert error.value.code == grpc.StatusCode.INTERNAL
        assert "scorer exploded" not in error.value.details
        assert client.server_info().model == "tiny"


def test_admission_queue_full_is_resource_exhausted(tiny_policy):
    from alignd.clients import AligndClient
    from alignd.rewardmodels.objective_scorer import ObjectiveScorer
    from tests.conftest import BlockingObjective

    blocking = BlockingObjective()
    entered, release = blocking.entered, blocking.release
    with running_server(tiny_policy, ObjectiveScorer([blocking]), ServerConfig(port=0, max_pending=1)) as running:
        target = f"127.0.0.1:{running.port}"
        results = []
        first = threading.Thread(target=lambda: results.append(AligndClient(target).generate("a", max_tokens=2)))
        first.start()
        assert entered.wait(30)
        with AligndClient(target, timeout=30) as client:
            with pytest.raises(AligndClientError) as error:
                client.generate("b", max_tokens=2)
            assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            first.join(30)
            assert len(results) == 1
            assert client.generate("c", max_tokens=2).text is not None


def test_defaults_outside_the_limits_fail_at_start_up(tiny_policy, module_letter_scorer):
    from alignd.backends.base import SamplingParams
    from alignd.config import ConfigError
    from alignd.decoding.params import Limits
    from alignd.server.core import ServerCore

    with pytest.raises(ConfigError, match=r"^default_sampling\.max_tokens:"):
        ServerCore(
            tiny_policy,
            module_letter_scorer,
            ServerConfig(limits=Limits(max_tokens=8), default_sampling=SamplingParams(max_tokens=16)),
        )
    with pytest.raises(ConfigError, match=r"^default_weights\[nope\]:"):
        ServerCore(tiny_policy, module_letter_scorer, ServerConfig(default_weights={"nope": 1.0}))


@contextmanager
def long_greedy_server(policy, scorer, *, http: bool = False):
    """A server allowing 3000-token requests, and a count of the model's forward passes.
    Greedy decoding on the tiny model never emits EOS: such a request runs 3000 steps unless
    cancelled."""
    import time

    from alignd.backends.base import SamplingParams
    from alignd.decoding.params import Limits

    steps: list[int] = []
    hook = policy.model.register_forward_hook(lambda *args: steps.append(1))
    from alignd.config import HTTPOptions

    config = ServerConfig(
        port=0,
        limits=Limits(max_tokens=3000),
        default_sampling=SamplingParams(max_tokens=16),
        http=HTTPOptions(enabled=http, port=0),
    )
    try:
        with running_server(policy, scorer, config) as running:
            yield running, steps
            deadline = time.monotonic() + 30
            while running.core.pending and time.monotonic() < deadline:
                time.sleep(0.05)
            assert running.core.pending == 0
    finally:
        hook.remove()


def test_a_request_past_its_deadline_stops_decoding_on_the_server(tiny_policy, module_letter_scorer):
    from alignd.clients import AligndClient

    with (
        long_greedy_server(tiny_policy, module_letter_scorer) as (running, steps),
        AligndClient(f"127.0.0.1:{running.port}") as client,
    ):
        with pytest.raises(AligndClientError) as error:
            client.generate("hi", temperature=0.0, max_tokens=3000, timeout=0.3)
        assert error.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert client.generate("hi", max_tokens=2, timeout=30).text is not None
    assert len(steps) < 1500


def test_a_stream_abandoned_after_its_first_event_stops_decoding(tiny_policy, module_letter_scorer):
    import time

    with (
        long_greedy_server(tiny_policy, module_letter_scorer) as (running, steps),
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        call = pb_grpc.AligndStub(channel).GenerateStream(
            pb.GenerateRequest(prompt="hi", sampling=pb.SamplingParams(temperature=0.0, max_tokens=3000)),
            timeout=60,
        )
        time.sleep(0.3)
        call.cancel()
    assert len(steps) < 1500


def test_requests_over_the_memory_budget_or_the_context_are_invalid(tiny_policy, module_letter_scorer):
    from alignd.backends.base import SamplingParams
    from alignd.clients import AligndClient
    from alignd.decoding.params import Limits

    limits = Limits(max_tokens=6000, max_batch_tokens=2000)
    config = ServerConfig(port=0, limits=limits, default_sampling=SamplingParams(max_tokens=16))
    with (
        running_server(tiny_policy, module_letter_scorer, config) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=30) as client,
    ):
        with pytest.raises(AligndClientError) as error:
            client.generate("hi", strategy="best_of_n", n=8, max_tokens=300)
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "exceeds the server's max_batch_tokens 2000" in error.value.details
        # Speculative rejection by memory holds its budget, not 8 whole responses: 8 x 300 tokens
        # start within 2000 and the rejections keep them there.
        speculative = dict(strategy="speculative_best_of_n", num_candidates=8, value_source="prefix", max_tokens=300)
        with pytest.raises(AligndClientError) as error:
            client.generate("hi", **speculative)
        assert "exceeds the server's max_batch_tokens 2000" in error.value.details
        out = client.generate("hi", rejection="memory", memory_tokens=1000, keep_fraction=0.5, **speculative)
        assert out.details["rejection_rounds"] >= 1
        with pytest.raises(AligndClientError) as error:
            client.generate("hi", max_tokens=5000)  # the tiny model's context is 4096
        assert error.value.details.startswith("sampling.max_tokens:") and "context of 4096" in error.value.details
        assert client.generate("hi", strategy="best_of_n", n=2, max_tokens=8).text is not None
