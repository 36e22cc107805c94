"""multi_objective and robust through gRPC: list and map parameters, stream fields, errors."""

from __future__ import annotations

import grpc
import pytest

from alignd.backends.base import SamplingParams
from alignd.clients import AligndClient, AligndClientError, Generation, Progress
from alignd.clients.client import build_request
from alignd.config import ServerConfig
from alignd.server.app import load_scorer
from tests.server.conftest import running_server
from tests.server.test_heads_in_server import save_head

OBJECTIVES = ("positivity", "conciseness", "harmlessness")


@pytest.fixture(scope="module")
def client(tiny_policy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("heads")
    value = save_head(folder / "value_heads", "value", ["positivity", "conciseness"], tiny_policy.hidden_size)
    config = ServerConfig(
        port=0,
        objectives=OBJECTIVES,
        value_heads=str(value),
        default_sampling=SamplingParams(max_tokens=12, temperature=1.0),
    )
    scorer, heads = load_scorer(config, tiny_policy)
    with (
        running_server(tiny_policy, scorer, config, heads) as running,
        AligndClient(f"127.0.0.1:{running.port}", timeout=60) as connected,
    ):
        yield connected


def test_build_request_fills_list_and_map_parameters():
    request = build_request(
        "hi", strategy="robust", objectives=["positivity"], min_weights={"positivity": 0.5}, strength=2.0
    )
    assert list(request.robust.objectives) == ["positivity"]
    assert dict(request.robust.min_weights) == {"positivity": 0.5}
    with pytest.raises(TypeError, match="robust"):
        build_request("hi", strategy="robust", n=3)


def test_robust_streams_worst_case_weights_per_block(client):
    events = list(
        client.generate_stream(
            "hi",
            strategy="robust",
            objectives=["positivity", "conciseness"],
            min_weights={"conciseness": 0.25},
            num_candidates=3,
            block_tokens=4,
            seed=4,
        )
    )
    result = events[-1]
    assert isinstance(result, Generation) and all(isinstance(e, Progress) for e in events[:-1])
    blocks = [e for e in events[:-1] if e.phase == "block"]
    assert blocks and result.details["blocks"] == len(blocks)
    for event in blocks:
        assert event.weights["harmlessness"] == 0.0 and event.weights["conciseness"] >= 0.25 - 1e-9
        assert sum(event.weights.values()) == pytest.approx(1.0)
        assert event.worst_objective in ("positivity", "conciseness")
        assert sum(c.selected for c in event.candidates) == 1
    assert set(result.details) >= {"mean_w*[positivity]", "worst_standardised_reward", "solver_fallbacks"}
    assert {k.name for k in result.kl} == {"blockwise_bound", "blockwise_estimate"}
    # The reported weighted score uses the request's (here default, uniform) weights.
    assert result.weighted_score == pytest.approx(sum(result.rewards.values()) / 3)


def test_multi_objective_through_grpc(client):
    out = client.generate(
        "hi",
        strategy="multi_objective",
        weights={"positivity": 3, "conciseness": 1},
        num_candidates=3,
        block_tokens=6,
        seed=1,
    )
    assert out.weights == pytest.approx({"positivity": 0.75, "conciseness": 0.25, "harmlessness": 0.0})
    assert out.details["blocks"] >= 1 and out.usage.generated_tokens >= len(out.token_ids)


def test_server_info_describes_the_new_parameters(client):
    info = {s.name: s for s in client.server_info().strategies}
    robust = {p.name: p for p in info["robust"].parameters}
    assert robust["objectives"].type == "list[str]" and robust["min_weights"].type == "map[str,float]"
    assert robust["solver"].choices == ["fast", "cvxpy"] and robust["strength"].default_value == "1.0"
    # Hidden states are needed only by the heads value source, checked per request.
    assert set(info["multi_objective"].requires) == {"sample", "extend"}
    assert info["robust"].parameters[-1].name == "value_source"
    assert info["robust"].parameters[-1].choices == ["auto", "heads", "prefix"]


@pytest.mark.parametrize(
    "options, code, field",
    [
        ({"strength": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "robust.strength"),
        ({"strength": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "robust.strength"),
        ({"num_candidates": 1}, grpc.StatusCode.INVALID_ARGUMENT, "robust.num_candidates"),
        ({"objectives": ["positivity", "fluency"]}, grpc.StatusCode.INVALID_ARGUMENT, "robust.objectives[1]"),
        (
            {"min_weights": {"positivity": 0.6, "conciseness": 0.5}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "robust.min_weights",
        ),
        ({"min_weights": {"positivity": 1.5}}, grpc.StatusCode.INVALID_ARGUMENT, "robust.min_weights[positivity]"),
        ({"min_weights": {"positivity": -0.1}}, grpc.StatusCode.INVALID_ARGUMENT, "robust.min_weights[positivity]"),
        ({"weights": {"fluency": 1.0}}, grpc.StatusCode.INVALID_ARGUMENT, "weights[fluency]"),
        ({"temperature": 0.0}, grpc.StatusCode.INVALID_ARGUMENT, "sampling.temperature"),
        # Harmlessness has no value head here, and the adversary weighs every objective by default.
        (
            {"value_source": "heads"},
            grpc.StatusCode.FAILED_PRECONDITION,
            "robust.value_source: 'heads' cannot estimate 'harmlessness'",
        ),
    ],
)
def test_bad_robust_requests_name_the_field(client, options, code, field):
    with pytest.raises(AligndClientError) as error:
        client.generate("hi", strategy="robust", **options)
    assert error.value.code == code
    assert error.value.details.startswith(field)
    # The server keeps serving.
    assert (
        client.generate("hi", strategy="robust", objectives=["positivity"], num_candidates=2, block_tokens=6).text
        is not None
    )
