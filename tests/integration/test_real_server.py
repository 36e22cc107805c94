"""End to end on the shipped SmolLM2-135M model: `alignd serve` in a subprocess, the real client
and CLI against it."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from alignd.clients import AligndClient, AligndClientError, Generation
from tests.integration.conftest import start_serve, stop

pytestmark = pytest.mark.integration

PROMPT = "Give me three tips for staying focused while studying."
OBJECTIVES = {"relevance", "positivity", "harmlessness", "conciseness"}


def test_cli_best_of_8_prints_an_answer_four_rewards_and_both_kl_figures(real_server):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignd.cli",
            "generate",
            PROMPT,
            "--strategy",
            "best_of_n",
            "--n",
            "8",
            "--max-tokens",
            "48",
            "--seed",
            "1",
            "--target",
            real_server.target,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    rewards = dict(re.findall(r"(\w+)=([+-]\d\.\d+)", out.split("rewards:", 1)[1].splitlines()[0]))
    assert set(rewards) == OBJECTIVES
    assert re.search(r"KL upper_bound\s+best_of_n_bound\s+1\.2044 nats", out)
    assert re.search(r"KL estimate\s+beirami_estimator\s+\d+\.\d+ nats", out)
    answer = out.split("\n\nstrategy best_of_n", 1)[0]
    assert len(answer.split()) >= 10


def test_best_of_n_answer_is_on_topic_and_beats_or_ties_every_candidate(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        out = client.generate(
            PROMPT, strategy="best_of_n", n=8, max_tokens=48, seed=2, return_candidates=True, weights={"relevance": 1.0}
        )
    assert set(out.rewards) == OBJECTIVES
    assert out.rewards["relevance"] > 0.4, out.text  # coherent and on topic, not noise
    assert out.rewards["relevance"] == max(c.rewards["relevance"] for c in out.candidates)
    kl = {k.name: k for k in out.kl}
    assert 0.0 <= kl["beirami_estimator"].nats <= kl["best_of_n_bound"].nats
    assert (
        out.usage.prompt_tokens > 0
        and out.usage.lm_forward_tokens < 8 * out.usage.prompt_tokens + out.usage.generated_tokens
    )


def test_same_seed_same_output_on_the_real_model(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        a = client.generate("Name a fruit.", seed=123, max_tokens=16)
        b = client.generate("Name a fruit.", seed=123, max_tokens=16)
    assert a.text == b.text and a.text.strip()


def test_concurrent_requests_answer_as_they_would_one_by_one(real_server):
    """Four users at once share the model's forwards; each gets the answer it gets alone."""
    requests = [
        ("Name a fruit.", {"strategy": "sample", "temperature": 0.0}),
        ("Name a colour.", {"strategy": "sample", "temperature": 0.7}),
        ("Name a city.", {"strategy": "best_of_n", "n": 3}),
        ("Name a tree.", {"strategy": "controlled", "num_candidates": 3, "block_tokens": 4}),
    ]
    with AligndClient(real_server.target, timeout=600) as client:

        def ask(index: int) -> list[int]:
            prompt, options = requests[index]
            return client.generate(prompt, seed=7, max_tokens=16, **options).token_ids

        alone = [ask(i) for i in range(len(requests))]
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(ask, range(len(requests))))
    assert together == alone


def test_stream_on_the_real_model(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        events = list(client.generate_stream("Say hello.", strategy="best_of_n", n=2, max_tokens=8))
    assert isinstance(events[-1], Generation) and [e.phase for e in events[:-1]] == ["sampled", "scored"]


def test_health_serving_and_reflection_lists_the_service(real_server):
    with grpc.insecure_channel(real_server.target) as channel:
        status = (
            health_pb2_grpc.HealthStub(channel)
            .Check(health_pb2.HealthCheckRequest(service="alignd.v1.Alignd"), timeout=10)
            .status
        )
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert status == health_pb2.HealthCheckResponse.SERVING
    assert "alignd.v1.Alignd" in names


def test_bad_input_on_the_real_server_then_it_keeps_serving(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        for kwargs, field in [
            (dict(weights={"relevance": float("nan")}), "weights[relevance]"),
            (dict(strategy="best_of_n", n=100000), "best_of_n.n"),
            (dict(max_tokens=10**6), "sampling.max_tokens"),
        ]:
            with pytest.raises(AligndClientError) as error:
                client.generate("hi", **kwargs)
            assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and error.value.details.startswith(field)
        info = client.server_info()
        assert {o.name for o in info.objectives} == OBJECTIVES
        assert client.generate("hi", max_tokens=4).usage.generated_tokens >= 1


def test_server_memory_with_the_default_model_stays_under_2_gib(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        client.generate(PROMPT, strategy="best_of_n", n=8, max_tokens=32)
    assert real_server.rss_bytes() < 2 * 1024**3


def test_sigterm_drains_and_exits_cleanly(tmp_path):
    server = start_serve(tmp_path)
    with AligndClient(server.target, timeout=120) as client:
        assert client.generate("hi", max_tokens=2).text is not None
    assert stop(server) == 0


def test_shipped_value_heads_load_and_controlled_decoding_runs(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        info = client.server_info()
        (value,) = [h for h in info.heads if h.kind == "value"]
        assert set(value.objectives) == OBJECTIVES and value.base_model == "smollm2-135m-instruct"
        events = list(
            client.generate_stream(
                PROMPT,
                strategy="controlled",
                weights={"positivity": 1.0},
                num_candidates=4,
                block_tokens=8,
                max_tokens=24,
                seed=3,
            )
        )
        out = events[-1]
        assert isinstance(out, Generation) and set(out.rewards) == OBJECTIVES
        blocks = [e for e in events[:-1] if e.phase == "block"]
        assert 1 <= len(blocks) <= 3 and all(len(e.candidates) == 4 for e in blocks)
        assert {k.name for k in out.kl} == {"blockwise_bound", "blockwise_estimate"}
        assert out.usage.lm_forward_tokens <= out.usage.prompt_tokens + out.usage.generated_tokens
        tokenwise = client.generate(
            PROMPT,
            strategy="controlled",
            mode="tokenwise",
            token_candidates=4,
            strength=1.0,
            weights={"relevance": 1.0},
            max_tokens=6,
            seed=3,
        )
        assert tokenwise.kl[0].name == "tokenwise_estimate" and len(tokenwise.token_ids) <= 6
        with pytest.raises(AligndClientError) as error:
            client.generate(PROMPT, strategy="controlled", mode="tokenwise", token_candidates=1)
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and error.value.details.startswith(
            "controlled.token_candidates"
        )


def test_multi_objective_and_robust_run_on_the_shipped_heads(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        mod = client.generate(
            PROMPT, strategy="multi_objective", num_candidates=4, block_tokens=8, max_tokens=16, seed=5
        )
        assert set(mod.rewards) == OBJECTIVES and mod.details["blocks"] in (1, 2)
        assert mod.weights == {name: 0.25 for name in OBJECTIVES}
        events = list(
            client.generate_stream(
                PROMPT,
                strategy="robust",
                num_candidates=4,
                block_tokens=8,
                max_tokens=16,
                seed=5,
                min_weights={"relevance": 0.2},
            )
        )
        robust = events[-1]
        assert isinstance(robust, Generation) and set(robust.rewards) == OBJECTIVES
        blocks = [e for e in events[:-1] if e.phase == "block"]
        assert 1 <= len(blocks) == robust.details["blocks"] <= 2
        for event in blocks:
            assert set(event.weights) == OBJECTIVES and sum(event.weights.values()) == pytest.approx(1.0)
            assert event.weights["relevance"] >= 0.2 - 1e-9 and event.worst_objective in OBJECTIVES
        assert robust.details["solver_fallbacks"] == 0
        with pytest.raises(AligndClientError) as error:
            client.generate(PROMPT, strategy="robust", min_weights={"relevance": 0.8, "positivity": 0.3})
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and error.value.details.startswith(
            "robust.min_weights:"
        )


def test_linear_alignment_and_evolutionary_run_on_the_real_model(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        aligned = client.generate(
            PROMPT,
            strategy="linear_alignment",
            principle="Answer kindly and positively.",
            alpha=3.0,
            max_tokens=12,
            seed=2,
        )
        assert set(aligned.rewards) == OBJECTIVES and 1 <= len(aligned.token_ids) <= 12
        assert aligned.kl[0].name == "linear_alignment_estimate" and aligned.kl[0].nats >= 0
        events = list(
            client.generate_stream(
                PROMPT,
                strategy="evolutionary",
                beams=3,
                keep_top=1,
                replace_every=6,
                cycles=1,
                max_tokens=12,
                mutation_tokens=96,
                seed=2,
            )
        )
        out = events[-1]
        assert isinstance(out, Generation) and set(out.rewards) == OBJECTIVES
        (mutation,) = [e for e in events[:-1] if e.phase == "mutation"]
        assert mutation.instructions[0] == PROMPT and len(mutation.instructions) == 3
        # Slots SmolLM2's reply did not fill keep the original instruction, and are counted.
        assert out.details["mutation_fallbacks"] == sum(i == PROMPT for i in mutation.instructions[1:])


def test_speculative_and_soft_best_of_n_on_the_real_model(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        events = list(
            client.generate_stream(
                PROMPT,
                strategy="speculative_best_of_n",
                num_candidates=8,
                keep_fraction=0.25,
                rejection_tokens=6,
                max_tokens=16,
                seed=3,
            )
        )
        speculative = events[-1]
        assert isinstance(speculative, Generation) and set(speculative.rewards) == OBJECTIVES
        (rejection,) = [e for e in events[:-1] if e.phase == "rejection"]
        assert len(rejection.candidates) == 8 and sum(c.selected for c in rejection.candidates) == 2
        # The shipped heads (auto) estimate every objective: one value per objective and candidate.
        assert all(set(c.rewards) == OBJECTIVES for c in rejection.candidates)
        assert speculative.kl[0].name == "selection_bound" and speculative.kl[0].nats == pytest.approx(math.log(8))
        # The kept two are best_of_n n=8's responses for the same seed.
        full = client.generate(PROMPT, strategy="best_of_n", n=8, max_tokens=16, seed=3, return_candidates=True)
        assert speculative.text in {c.text for c in full.candidates}
        soft = client.generate(PROMPT, strategy="soft_best_of_n", n=8, beta=1e-4, max_tokens=16, seed=3)
        assert soft.text == full.text and soft.details["chose_best"] == 1.0


def test_the_real_server_serves_the_shipped_vectors(real_server):
    with AligndClient(real_server.target, timeout=300) as client:
        info = client.server_info()
        assert [v.name for v in info.preference_vectors] == ["positivity", "relevance"]
        out = client.generate("Tell me about Mondays.", preference_vectors={"positivity": 1.0}, max_tokens=24, seed=3)
        assert out.preference_vectors == {"positivity": 1.0} and out.text
        fused = client.generate(
            "Tell me about Mondays.",
            strategy="multi_objective",
            mode="logit_fusion",
            policy_weights={"base": 0.5, "positivity": 0.5},
            max_tokens=16,
        )
        assert fused.details["policy_weight[positivity]"] == 0.5
        with pytest.raises(AligndClientError) as caught:
            client.generate("Hi.", preference_vectors={"positivity": 3.0})
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details.startswith("preference_vectors[positivity]")
