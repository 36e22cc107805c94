"""Preference vectors through gRPC and HTTP: the request field, its errors, info and echo."""

from __future__ import annotations

import copy

import grpc
import httpx
import pytest

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.backends.transformers_policy import TransformersPolicy
from alignd.clients import AligndClient, AligndClientError
from alignd.config import HTTPOptions, ServerConfig
from tests.backends.test_row_steering import merged_policy, random_vectors
from tests.server.conftest import TEST_LIMITS, running_server
from tests.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="module")
def steered_server(module_letter_scorer):
    tokenizer = tiny_tokenizer()
    model = tiny_model(len(tokenizer), seed=3)
    vectors = random_vectors(model)
    base = copy.deepcopy(model)
    policy = TransformersPolicy(model=model, tokenizer=tokenizer, model_name="tiny", device="cpu", vectors=vectors)
    config = ServerConfig(
        port=0,
        limits=TEST_LIMITS,
        default_sampling=SamplingParams(max_tokens=12, temperature=1.0),
        workers=2,
        http=HTTPOptions(enabled=True, port=0),
    )
    with running_server(policy, module_letter_scorer, config) as running:
        yield running, base, vectors, tokenizer


@pytest.fixture
def client(steered_server):
    with AligndClient(f"127.0.0.1:{steered_server[0].port}", timeout=30) as connected:
        yield connected


def test_server_info_lists_the_vectors_and_the_strength_limit(client):
    info = client.server_info()
    assert [v.name for v in info.preference_vectors] == ["warm", "short"]
    assert info.preference_vectors[0].rank == 4 and info.preference_vectors[0].presets == []
    assert info.limits.max_vector_strength == 2.0
    assert "row_steering" in info.capabilities
    fusion = info.strategy("multi_objective").parameter("mode")
    assert fusion.choices == ["blockwise", "logit_fusion"]


def test_a_steered_request_decodes_with_the_steered_model(client, steered_server):
    _, base, vectors, tokenizer = steered_server
    out = client.generate("how do I bake bread", preference_vectors={"warm": 0.5, "short": -1.0}, seed=4)
    assert out.preference_vectors == {"short": -1.0, "warm": 0.5}
    assert "steered by preference vectors short=-1, warm=0.5" in out.kl[0].description
    merged = merged_policy(base, vectors, tokenizer, {"warm": 0.5, "short": -1.0})
    expected = merged.sample(
        [ChatPrompt("how do I bake bread")], 1, SamplingParams(max_tokens=12, temperature=1.0, seed=4)
    )
    assert out.token_ids == expected.completions[0][0].token_ids
    plain = client.generate("how do I bake bread", seed=4)
    assert plain.preference_vectors == {} and "steered" not in plain.kl[0].description


def test_every_strategy_runs_on_the_steered_policy(client):
    steered = client.generate(
        "a good answer", strategy="best_of_n", n=3, preference_vectors={"warm": 1.0}, seed=1, return_candidates=True
    )
    plain = client.generate("a good answer", strategy="best_of_n", n=3, seed=1, return_candidates=True)
    assert steered.preference_vectors == {"warm": 1.0}
    assert [c.text for c in steered.candidates] != [c.text for c in plain.candidates]
    fused = client.generate(
        "a good answer", strategy="multi_objective", mode="logit_fusion", policy_weights={"base": 0.5, "warm": 0.5}
    )
    assert fused.details["policy_weight[warm]"] == 0.5


@pytest.mark.parametrize(
    ("strengths", "field"),
    [
        ({"kind": 1.0}, "preference_vectors[kind]"),
        ({"warm": float("nan")}, "preference_vectors[warm]"),
        ({"warm": float("inf")}, "preference_vectors[warm]"),
        ({"short": 2.5}, "preference_vectors[short]"),
    ],
)
def test_bad_strengths_are_invalid_arguments_naming_the_entry(client, strengths, field):
    with pytest.raises(AligndClientError) as caught:
        client.generate("hi", preference_vectors=strengths)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details


def test_the_http_api_takes_and_echoes_strengths(steered_server):
    running = steered_server[0]
    url = f"http://127.0.0.1:{running.http_port}/v1/chat/completions"
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}
    ok = httpx.post(url, json={**body, "alignd": {"preference_vectors": {"warm": 1.0}}}, timeout=30)
    assert ok.status_code == 200 and ok.json()["alignd"]["preference_vectors"] == {"warm": 1.0}
    bad = httpx.post(url, json={**body, "alignd": {"preference_vectors": {"warm": 9.0}}}, timeout=30)
    assert bad.status_code == 400 and "alignd.preference_vectors[warm]" in bad.text


def test_a_server_without_vectors_refuses_them_by_name(server):
    with AligndClient(f"127.0.0.1:{server.port}", timeout=30) as plain, pytest.raises(AligndClientError) as caught:
        plain.generate("hi", preference_vectors={"warm": 1.0})
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "available: []" in caught.value.details
