"""The OpenAI-compatible HTTP API of `alignd serve --http-port` on SmolLM2, through the real
`openai` SDK: every strategy, streaming, typed errors, experiment routing by `user`, and a client
that hangs up mid-answer."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import SAMPLE_VS_BON, expected_arm, start_serve, stop
from tests.postgres import free_port

pytestmark = pytest.mark.integration

MODEL = "smollm2-135m-instruct"
OBJECTIVES = {"relevance", "positivity", "harmlessness", "conciseness"}
PROMPT = "Give one tip for staying focused."
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

CONFIG = """
experiment_store = "{store}"
metrics_port = {metrics}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("http")
    metrics = free_port()
    config = tmp / "alignd.toml"
    config.write_text(CONFIG.format(store=tmp / "experiments.sqlite", metrics=metrics) + SAMPLE_VS_BON)
    running = start_serve(tmp, "--http-port", "0", "--config", str(config))
    running.metrics_port = metrics  # type: ignore[attr-defined]
    yield running
    stop(running)


@pytest.fixture
def sdk(server) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"http://127.0.0.1:{server.http_port}/v1", api_key="unused", max_retries=0, timeout=300
    )


def metric(server, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(name) and (head == name or head[len(name) :].startswith("{")):
            got = ",".join(sorted(head[len(name) + 1 : -1].split(","))) if "{" in head else ""
            if got == wanted:
                return float(value)
    return 0.0


STRATEGIES = {
    "sample": {},
    "best_of_n": {"n": 4},
    "soft_best_of_n": {"n": 4, "beta": 0.5},
    "speculative_best_of_n": {"num_candidates": 4, "keep_fraction": 0.5, "rejection_tokens": 4},
    "controlled": {"num_candidates": 2, "block_tokens": 4},
    "multi_objective": {"num_candidates": 2, "block_tokens": 4},
    "robust": {"num_candidates": 2, "block_tokens": 4},
    "linear_alignment": {"principle": "Answer kindly.", "alpha": 2.0},
    "evolutionary": {"beams": 2, "keep_top": 1, "replace_every": 4, "cycles": 1, "mutation_tokens": 48},
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_through_the_openai_sdk(sdk, strategy):
    out = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
        max_tokens=8,
        seed=2,
        extra_body={"alignd": {"strategy": strategy, "params": STRATEGIES[strategy], "weights": {"relevance": 1.0}}},
    )
    assert out.choices[0].message.content and out.choices[0].finish_reason in {"stop", "length"}
    alignd = out.alignd
    assert alignd["strategy"] == strategy and set(alignd["rewards"]) == OBJECTIVES
    assert alignd["weights"]["relevance"] == 1.0 and alignd["usage"]["lm_forward_tokens"] > 0
    assert alignd["kl"] or strategy == "evolutionary"  # its beams' prompts differ: no KL to pi_ref
    assert 1 <= out.usage.completion_tokens <= 8


def test_controlled_streams_blocks_before_the_answer_is_done(sdk):
    started = time.perf_counter()
    arrivals = []
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=32,
        seed=4,
        stream=True,
        extra_body={"alignd": {"strategy": "controlled", "params": {"num_candidates": 2, "block_tokens": 8}}},
    )
    for chunk in stream:
        arrivals.append((time.perf_counter() - started, chunk))
    with_text = [t for t, c in arrivals if c.choices and c.choices[0].delta.content]
    done = next(t for t, c in arrivals if c.choices and c.choices[0].finish_reason)
    print(f"\nfirst text chunk at {with_text[0]:.2f} s, answer done at {done:.2f} s")
    assert len(with_text) >= 2 and with_text[0] < done
    blocks = [c.alignd["progress"] for _, c in arrivals if "progress" in (c.alignd or {})]
    assert blocks and all(b["phase"] == "block" and len(b["candidates"]) == 2 for b in blocks)
    final = next(c for _, c in arrivals if c.choices and c.choices[0].finish_reason).alignd["result"]
    assert set(final["rewards"]) == OBJECTIVES
    text = "".join(c.choices[0].delta.content or "" for _, c in arrivals if c.choices)
    assert text.strip()


def test_errors_are_the_sdks_typed_exceptions_naming_the_field(sdk):
    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            extra_body={"alignd": {"strategy": "best_of_n", "params": {"n": 100000}}},
        )
    assert error.value.body["param"] == "alignd.params.n" and "alignd.params.n:" in error.value.message
    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], top_p=2.0)
    assert error.value.body["param"] == "top_p"
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": PROMPT}])
    with pytest.raises(openai.NotFoundError) as error:
        sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            user="u",
            extra_body={"alignd": {"experiment": "x"}},
        )
    assert error.value.body["param"] == "alignd.experiment"
    # ...and the server keeps serving.
    assert sdk.completions.create(model=MODEL, prompt="The sky is", max_tokens=3).choices[0].text is not None


def test_user_is_the_experiment_subject(sdk):
    for user in [f"user-{i}" for i in range(8)]:
        out = sdk.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=4,
            user=user,
            extra_body={"alignd": {"experiment": "sample-vs-bon"}},
        )
        assert out.alignd["experiment"] == "sample-vs-bon" and out.alignd["arm"] == expected_arm(user)
    reply = httpx.post(
        str(sdk.base_url).rstrip("/") + "/alignd/feedback",
        json={"request_id": out.alignd["request_id"], "rating": 4.0},
        timeout=30,
    )
    assert reply.status_code == 200 and reply.json() == {"replaced": False}


def test_a_client_that_hangs_up_stops_the_decode(server):
    """Counting upwards keeps SmolLM2 going for all 1024 tokens; the client leaves after a few
    blocks, and the decode (which would take minutes) stops at its next block."""
    body = {
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5, 6, 7, 8,",
        "max_tokens": 1024,
        "stream": True,
        "alignd": {"strategy": "controlled", "params": {"num_candidates": 2, "block_tokens": 8}},
    }
    url = f"http://127.0.0.1:{server.http_port}/v1/completions"
    arrivals = []
    with httpx.stream("POST", url, json=body, timeout=120) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and '"progress"' in line:
                arrivals.append(time.perf_counter())
                if len(arrivals) == 3:
                    break
    left = time.perf_counter()
    block = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
    while metric(server, "alignd_decodes_running") > 0 and time.perf_counter() - left < 60:
        time.sleep(0.05)
    stopped = time.perf_counter() - left
    print(f"\none block every {block:.3f} s; decode stopped {stopped:.3f} s after the client left")
    assert metric(server, "alignd_decodes_running") == 0
    assert stopped < 2 * block + 1.0
    cancelled = metric(
        server,
        "alignd_requests_total",
        transport="http",
        method="GenerateStream",
        strategy="controlled",
        code="CANCELLED",
    )
    assert cancelled == 1


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_node_example_runs_against_the_server(server, tmp_path):
    example = EXAMPLES / "node"
    work = tmp_path / "node"
    shutil.copytree(example, work, ignore=shutil.ignore_patterns("node_modules"))
    install = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund"], cwd=work, capture_output=True, text=True, timeout=300
    )
    if install.returncode != 0:
        pytest.skip(f"npm could not install the openai package (offline?): {install.stderr[-500:]}")
    out = subprocess.run(
        ["node", "chat.mjs"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": os.environ["PATH"], "ALIGND_URL": f"http://127.0.0.1:{server.http_port}/v1"},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("answer:") for line in lines) and any(line.startswith("rewards:") for line in lines)
    assert any(line.startswith("streamed:") for line in lines)
