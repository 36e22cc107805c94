"""The OpenAI-compatible HTTP API on the tiny model, through the real `openai` SDK and raw httpx."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from alignd.backends.base import ChatPrompt, SamplingParams
from alignd.config import HTTPOptions, ServerConfig
from tests.server.conftest import TEST_LIMITS, running_server


@pytest.fixture(scope="module")
def http_server(tiny_policy, module_letter_scorer, tmp_path_factory):
    config = ServerConfig(
        port=0,
        limits=TEST_LIMITS,
        default_sampling=SamplingParams(max_tokens=16),
        workers=2,
        http=HTTPOptions(enabled=True, port=0),
        experiments=(
            {
                "name": "ab",
                "arms": [
                    {"name": "plain", "strategy": "sample", "split": 0.5},
                    {"name": "bon", "strategy": "best_of_n", "split": 0.5},
                ],
            },
        ),
        experiment_store=str(tmp_path_factory.mktemp("store") / "experiments.sqlite"),
    )
    with running_server(tiny_policy, module_letter_scorer, config) as running:
        yield running


@pytest.fixture
def sdk(http_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{http_server.http_port}/v1", api_key="unused", max_retries=0)


@pytest.fixture
def raw(http_server):
    with httpx.Client(base_url=f"http://127.0.0.1:{http_server.http_port}", timeout=30) as client:
        yield client


def chat(sdk, **kwargs):
    kwargs.setdefault("messages", [{"role": "user", "content": "hi"}])
    return sdk.chat.completions.create(model="tiny", **kwargs)


def test_chat_completion_has_the_standard_shape_and_the_alignd_object(sdk):
    out = chat(sdk, max_tokens=6, seed=3, extra_body={"alignd": {"strategy": "best_of_n", "params": {"n": 3}}})
    assert out.object == "chat.completion" and out.model == "tiny" and len(out.choices) == 1
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in {"stop", "length"}
    alignd = out.alignd
    assert out.id == f"chatcmpl-{alignd['request_id']}" and alignd["strategy"] == "best_of_n"
    assert set(alignd["rewards"]) == {"e_count", "o_count"} and alignd["weights"] == {"e_count": 0.5, "o_count": 0.5}
    assert alignd["rewards"]["e_count"] == choice.message.content.count("e")
    assert {k["name"] for k in alignd["kl"]} >= {"best_of_n_bound"}
    assert alignd["usage"]["generated_tokens"] >= out.usage.completion_tokens
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    # The same request through gRPC's path decodes the same answer (same seed, same strategy).
    again = chat(sdk, max_tokens=6, seed=3, extra_body={"alignd": {"strategy": "best_of_n", "params": {"n": 3}}})
    assert again.choices[0].message.content == choice.message.content


def test_completions_continue_the_raw_prompt(sdk, tiny_policy):
    out = sdk.completions.create(model="tiny", prompt="Once upon", max_tokens=5, temperature=0.0)
    assert out.object == "text_completion" and out.choices[0].text is not None
    raw_prompt = tiny_policy.encode(ChatPrompt("Once upon", raw=True))
    greedy = tiny_policy.sample([raw_prompt], 1, SamplingParams(temperature=0.0, max_tokens=5))
    assert out.choices[0].text == greedy.completions[0][0].text


def test_n_choices_are_separate_decodes_each_with_its_alignd_object(sdk):
    out = chat(sdk, n=3, max_tokens=4, seed=1)
    assert [c.index for c in out.choices] == [0, 1, 2]
    ids = [c.alignd["request_id"] for c in out.choices]
    assert len(set(ids)) == 3 and out.alignd["request_id"] == ids[0]
    assert 3 <= out.usage.completion_tokens <= 3 * 4


@pytest.mark.parametrize("strategy", ["sample", "controlled", "best_of_n"])
def test_streamed_text_is_the_answer(sdk, strategy):
    params = {"controlled": {"num_candidates": 2, "block_tokens": 4, "value_source": "prefix"}}.get(strategy, {})
    chunks = list(
        chat(
            sdk,
            max_tokens=12,
            seed=5,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"alignd": {"strategy": strategy, "params": params}},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].alignd["started"]["strategy"] == strategy
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1
    result = final[0].alignd["result"]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    unstreamed = chat(sdk, max_tokens=12, seed=5, extra_body={"alignd": {"strategy": strategy, "params": params}})
    assert text == unstreamed.choices[0].message.content == text
    assert result["rewards"] == unstreamed.alignd["rewards"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    if strategy != "best_of_n":
        # Incremental strategies send their text before the end: more than one chunk carries some.
        assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
        assert any("progress" in (c.alignd or {}) for c in chunks)


def test_stop_sequences_are_never_streamed(sdk):
    kwargs = dict(max_tokens=24, temperature=0.0, extra_body={"alignd": {"strategy": "sample"}})
    whole = chat(sdk, **kwargs).choices[0].message.content
    stop = whole[5:7]  # a stop sequence the greedy answer meets
    chunks = list(chat(sdk, stream=True, stop=[stop], **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole[: whole.find(stop)] and stop not in text


def test_bad_fields_are_400_naming_the_body_field(sdk, raw):
    cases = [
        (dict(temperature=-1.0), "temperature"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_completion_tokens=10_000), "max_completion_tokens"),
        (dict(stop=["a", "b", "c"]), "stop"),
        (dict(n=99), "n"),
        (dict(frequency_penalty=0.5), "frequency_penalty"),
        (dict(extra_body={"alignd": {"strategy": "nope"}}), "alignd.strategy"),
        (dict(extra_body={"alignd": {"strategy": "best_of_n", "params": {"n": 0}}}), "alignd.params.n"),
        (dict(extra_body={"alignd": {"strategy": "best_of_n", "params": {"m": 2}}}), "alignd.params.m"),
        (dict(extra_body={"alignd": {"strategy": "best_of_n", "params": {"n": "eight"}}}), "alignd.params.n"),
        (dict(extra_body={"alignd": {"weights": {"nope": 1.0}}}), "alignd.weights[nope]"),
        (dict(extra_body={"alignd": {"speed": 1}}), "alignd.speed"),
        (dict(messages=[{"role": "user", "content": ""}]), "messages"),
        (dict(messages=[{"role": "assistant", "content": "x"}]), "messages[0]"),
        (dict(messages=[{"role": "user", "content": "x"}, {"role": "system", "content": "y"}]), "messages[1]"),
    ]
    for kwargs, field in cases:
        with pytest.raises(openai.BadRequestError) as error:
            chat(sdk, **kwargs)
        body = error.value.body
        assert body["param"] == field and body["message"].startswith(f"{field}:"), (kwargs, body)
        assert body["code"] == "invalid_argument"
    with pytest.raises(openai.NotFoundError) as error:
        sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert error.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        chat(sdk, extra_body={"alignd": {"experiment": "missing"}}, user="u1")
    reply = raw.post("/v1/chat/completions", content=b"{not json")
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "body"
    reply = raw.get("/v1/nothing")
    assert reply.status_code == 404 and "error" in reply.json()
    # Stream requests refused before they start get the same status codes, not an event: the
    # strategy's own checks (controlled samples, so no greedy) run before the stream starts too.
    with pytest.raises(openai.BadRequestError):
        chat(sdk, temperature=-1.0, stream=True)
    with pytest.raises(openai.BadRequestError) as error:
        chat(sdk, temperature=0.0, stream=True, extra_body={"alignd": {"strategy": "controlled"}})
    assert error.value.body["param"] == "temperature"


def test_models_health_and_the_server_still_serves(sdk, raw):
    assert [m.id for m in sdk.models.list()] == ["tiny"]
    assert sdk.models.retrieve("tiny").owned_by == "alignd"
    assert raw.get("/health").json() == {"status": "ok"}
    assert chat(sdk, max_tokens=2).choices[0].message.content is not None


def test_user_routes_an_experiment_and_feedback_reaches_its_record(sdk, raw):
    arms = {}
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        out = chat(sdk, max_tokens=3, user=user, extra_body={"alignd": {"experiment": "ab"}})
        arms[user] = out.alignd["arm"]
        again = chat(sdk, max_tokens=3, user=user, extra_body={"alignd": {"experiment": "ab"}})
        assert again.alignd["arm"] == arms[user] and again.alignd["experiment"] == "ab"
    assert set(arms.values()) <= {"plain", "bon"}
    request_id = out.alignd["request_id"]
    reply = raw.post("/v1/alignd/feedback", json={"request_id": request_id, "thumbs_up": True})
    assert reply.status_code == 200 and reply.json() == {"replaced": False}
    assert raw.post("/v1/alignd/feedback", json={"request_id": request_id, "thumbs_up": False}).json() == {
        "replaced": True
    }
    missing = raw.post("/v1/alignd/feedback", json={"request_id": "nope", "rating": 1.0})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "request_id"
    both = raw.post("/v1/alignd/feedback", json={"request_id": request_id, "rating": 1.0, "thumbs_up": True})
    assert both.status_code == 400 and both.json()["error"]["param"] == "feedback"
    with pytest.raises(openai.BadRequestError) as error:
        chat(sdk, extra_body={"alignd": {"experiment": "ab"}})  # no user
    assert error.value.body["param"] == "user"


def test_a_busy_server_answers_429(tiny_policy):
    import threading

    from alignd.rewardmodels.objective_scorer import ObjectiveScorer
    from tests.conftest import BlockingObjective

    blocking = BlockingObjective()
    entered, release = blocking.entered, blocking.release
    config = ServerConfig(port=0, max_pending=1, http=HTTPOptions(enabled=True, port=0))
    with running_server(tiny_policy, ObjectiveScorer([blocking]), config) as running:
        url = f"http://127.0.0.1:{running.http_port}/v1/chat/completions"
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        first = threading.Thread(target=lambda: httpx.post(url, json=body, timeout=30))
        first.start()
        assert entered.wait(30)
        reply = httpx.post(url, json=body, timeout=30)
        release.set()
        first.join(30)
    assert reply.status_code == 429 and reply.json()["error"]["type"] == "rate_limit_error"


def read_chunks(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: ") :])


def test_the_first_chunk_arrives_before_the_answer_is_done(http_server):
    url = f"http://127.0.0.1:{http_server.http_port}/v1/chat/completions"
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 32,
        "seed": 2,
        "stream": True,
        "alignd": {
            "strategy": "controlled",
            "params": {"num_candidates": 2, "block_tokens": 2, "value_source": "prefix"},
        },
    }
    arrivals = []
    with httpx.stream("POST", url, json=body, timeout=30) as response:
        for chunk in read_chunks(response):
            arrivals.append((time.perf_counter(), chunk))
    assert all("choices" in c for _, c in arrivals), arrivals[-1]
    texts = [t for t, c in arrivals if c["choices"] and c["choices"][0]["delta"].get("content")]
    done = next(t for t, c in arrivals if c["choices"] and c["choices"][0]["finish_reason"])
    assert len(texts) > 2 and texts[0] < done


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_disconnect_stops_decoding(tiny_policy, module_letter_scorer, stream):
    from tests.server.test_service import long_greedy_server

    with long_greedy_server(tiny_policy, module_letter_scorer, http=True) as (running, steps):
        url = f"http://127.0.0.1:{running.http_port}/v1/chat/completions"
        body = {
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 3000,
            "temperature": 0.0,
            "stream": stream,
        }
        if stream:
            # Read a few chunks, then hang up.
            with httpx.stream("POST", url, json=body, timeout=30) as response:
                for i, _ in enumerate(response.iter_lines()):
                    if i == 6:
                        break
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(url, json=body, timeout=httpx.Timeout(30, read=0.3))
        deadline = time.monotonic() + 30
        metrics = running.core.metrics.registry
        labels = {"transport": "http", "method": "GenerateStream" if stream else "Generate", "strategy": "sample"}
        while time.monotonic() < deadline and not metrics.get_sample_value(
            "alignd_requests_total", {**labels, "code": "CANCELLED"}
        ):
            time.sleep(0.05)
        assert metrics.get_sample_value("alignd_requests_total", {**labels, "code": "CANCELLED"}) == 1
    assert len(steps) < 1500


def test_a_conversation_renders_every_turn_and_grpc_takes_it_too(sdk, http_server, tiny_policy):
    from alignd.clients import AligndClient, AligndClientError

    turns = [("user", "hello"), ("assistant", "hi there")]
    rendered = tiny_policy.render(ChatPrompt("and now?", "be kind", history=tuple(turns)))
    assert rendered == (
        "<|im_start|>system\nbe kind<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n"
        "<|im_start|>assistant\nhi there<|im_end|>\n<|im_start|>user\nand now?<|im_end|>\n<|im_start|>assistant\n"
    )
    messages = [
        {"role": "system", "content": "be kind"},
        *({"role": role, "content": content} for role, content in turns),
        {"role": "user", "content": [{"type": "text", "text": "and "}, {"type": "text", "text": "now?"}]},
    ]
    out = chat(sdk, messages=messages, max_tokens=6, temperature=0.0)
    with AligndClient(f"127.0.0.1:{http_server.port}", timeout=30) as client:
        same = client.generate("and now?", system_prompt="be kind", history=turns, max_tokens=6, temperature=0.0)
        single = client.generate("and now?", system_prompt="be kind", max_tokens=6, temperature=0.0)
        assert out.choices[0].message.content == same.text
        assert out.usage.prompt_tokens == same.usage.prompt_tokens > single.usage.prompt_tokens
        for kwargs, field in [
            (dict(history=[("robot", "x")]), "history[0].role"),
            (dict(history=[("user", "x" * 300)]), "history"),
            (dict(history=turns, raw_prompt=True), "history"),
        ]:
            with pytest.raises(AligndClientError) as error:
                client.generate("and now?", max_tokens=2, **kwargs)
            assert error.value.details.startswith(f"{field}:")


def test_body_fields_are_named_as_the_body_names_them(raw):
    def post(**fields):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, **fields}
        return raw.post("/v1/chat/completions", json=body)

    cases = [
        (dict(strategy="best_of_n"), "strategy", "unknown field"),  # alignd's keys belong in `alignd`
        (dict(subject="u"), "subject", "unknown field"),
        (dict(stop=5), "stop", "input should be a valid"),  # not "stop.str"
        (
            dict(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            "messages[0].content[0].type",
            "input should be 'text'",
        ),
        (dict(max_completion_tokens=-1), "max_completion_tokens", "out of range"),
        (dict(max_completion_tokens=0), "max_completion_tokens", "must be in"),
        (dict(alignd={"subject": "u"}), "alignd.subject", "given without an experiment"),
        (dict(alignd={"system_prompt": "be kind"}), "alignd.system_prompt", "system message"),
        (dict(seed=2**64), "seed", "64 bits"),
    ]
    for fields, param, problem in cases:
        reply = post(**fields)
        error = reply.json()["error"]
        assert reply.status_code == 400 and error["param"] == param and problem in error["message"], (fields, error)
    # Explicit nulls are what a client sends for "not set"; a signed seed is OpenAI's.
    ok = post(n=None, user=None, stream=None, stop=None, temperature=None, stream_options=None, seed=-5)
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 1
    # Text protobuf cannot hold (a lone surrogate) is the body's fault, not a 500.
    reply = raw.post(
        "/v1/chat/completions",
        content=b'{"model": "tiny", "messages": [{"role": "user", "content": "\\ud800"}]}',
        headers={"content-type": "application/json"},
    )
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "body"


def test_non_finite_numbers_become_null_in_the_json():
    from alignd.server.openai_api.app import dumps

    assert json.loads(dumps({"a": float("nan"), "b": [1.0, float("-inf")], "c": "x"})) == {
        "a": None,
        "b": [1.0, None],
        "c": "x",
    }


def test_a_template_that_refuses_the_conversation_is_invalid_argument():
    from alignd.backends.text import render_chat
    from alignd.errors import InvalidArgument
    from tests.tiny import tiny_tokenizer

    strict = tiny_tokenizer()
    strict.chat_template = (
        "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('roles must alternate user/assistant') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    assert render_chat(strict, ChatPrompt("b", history=(("user", "a"), ("assistant", "x")))) == "axb"
    with pytest.raises(InvalidArgument) as error:
        render_chat(strict, ChatPrompt("b", history=(("user", "a"),)))
    assert error.value.field == "history" and "roles must alternate" in error.value.problem
