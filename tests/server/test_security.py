"""API keys, roles, quotas, TLS and limits on a running server (tiny model, both transports)."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass

import grpc
import httpx
import numpy as np
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from alignd.backends.base import SamplingParams
from alignd.clients import TLS, AligndClient, AligndClientError
from alignd.config import AuthOptions, HTTPOptions, ServerConfig, TLSOptions
from alignd.rewardmodels.base import Objective, ObjectiveInfo
from alignd.rewardmodels.objective_scorer import ObjectiveScorer
from alignd.server.auth.keys import KeysFile
from alignd.server.auth.quotas import Quota
from tests.certificates import make_pki
from tests.server.conftest import TEST_LIMITS, running_server

Code = grpc.StatusCode


@dataclass
class Keys:
    user: str
    admin: str
    slow: str  # 2 requests a minute
    small: str  # max_n 2, max_tokens 4
    file: KeysFile


def _keys(path) -> Keys:
    keys = KeysFile(path)
    made = {}
    for name, role, quota in (
        ("user", "user", Quota()),
        ("admin", "admin", Quota()),
        ("slow", "user", Quota(requests_per_minute=2)),
        ("small", "user", Quota(max_n=2, max_tokens=4)),
    ):
        made[name] = keys.create(role, name, quota)[0]
    return Keys(**made, file=keys)


@pytest.fixture(scope="module")
def secured(tiny_policy, module_letter_scorer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("secured")
    keys = _keys(folder / "keys.json")
    config = ServerConfig(
        port=0,
        limits=TEST_LIMITS,
        default_sampling=SamplingParams(max_tokens=4),
        workers=2,
        auth=AuthOptions(enabled=True, keys_file=str(keys.file.path)),
        http=HTTPOptions(enabled=True, port=0),
        experiment_store=str(folder / "experiments.sqlite"),
    )
    with running_server(tiny_policy, module_letter_scorer, config) as running:
        yield running, keys


def _client(running, key=None, timeout=30, **kwargs) -> AligndClient:
    return AligndClient(f"127.0.0.1:{running.port}", timeout=timeout, api_key=key, **kwargs)


def _refused(call) -> AligndClientError:
    with pytest.raises(AligndClientError) as error:
        call()
    return error.value


ARMS = [{"name": "a", "strategy": "sample", "split": 0.5}, {"name": "b", "strategy": "sample", "split": 0.5}]


def test_requests_need_a_valid_key(secured, monkeypatch):
    running, keys = secured
    monkeypatch.delenv("ALIGND_API_KEY", raising=False)
    for key, message in ((None, "an API key is required"), ("alignd-000000000000-nope", "unknown or revoked")):
        with _client(running, key) as c:
            for call in (lambda: c.generate("hi"), c.server_info, lambda: c.score("hi", ["a"]), c.experiments):
                error = _refused(call)
                assert error.code == Code.UNAUTHENTICATED and error.details.startswith("authorization: ")
                assert message in error.details
    with _client(running, keys.user) as c:
        assert c.generate("hi").text is not None and c.server_info().model
    monkeypatch.setenv("ALIGND_API_KEY", keys.user)  # the client's default
    with _client(running) as c:
        assert c.score("hi", ["a"])


def test_admin_rpcs_need_an_admin_key(secured):
    running, keys = secured
    with _client(running, keys.user) as c:
        error = _refused(lambda: c.create_experiment("x", ARMS))
    assert error.code == Code.PERMISSION_DENIED and "key 'user' has role 'user'" in error.details
    with _client(running, keys.admin) as c:
        assert c.create_experiment("by-admin", ARMS).name == "by-admin"


def _services(channel, metadata=None) -> list[str]:
    """The services reflection lists (a stream-stream RPC)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10, metadata=metadata
    )
    return [s.name for a in answers for s in a.list_services_response.service]


def test_health_and_reflection_stay_open(secured):
    running, _ = secured
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert "alignd.v1.Alignd" in _services(channel)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert httpx.get(f"http://127.0.0.1:{running.http_port}/health").status_code == 200


def test_every_http_endpoint_and_the_grpc_stream_need_the_key(secured):
    running, keys = secured
    base = f"http://127.0.0.1:{running.http_port}"
    model = running.core.policy.model_name
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    calls = [
        ("GET", "/v1/models", None),
        ("GET", f"/v1/models/{model}", None),
        ("GET", "/v1/models/another", None),  # says nothing about what is served
        ("POST", "/v1/chat/completions", chat),
        ("POST", "/v1/chat/completions", {**chat, "stream": True}),
        ("POST", "/v1/chat/completions", {"model": "x", "bad": 1}),  # the body is not read first
        ("POST", "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2}),
        ("POST", "/v1/alignd/feedback", {"request_id": "r", "thumbs_up": True}),
    ]
    for method, path, body in calls:
        answer = httpx.request(method, base + path, json=body)
        assert answer.status_code == 401, (path, answer.text)
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert answer.json()["error"]["message"].startswith("authorization: "), path
        assert model not in answer.text
    with _client(running) as c:
        error = _refused(lambda: list(c.generate_stream("hi")))
    assert error.code == Code.UNAUTHENTICATED
    # A valid key on the stream, and nothing left pending.
    with _client(running, keys.user) as c:
        assert list(c.generate_stream("hi", max_tokens=2))[-1].text is not None
    assert running.core.pending == 0 and all(u.pending == 0 for u in running.core.admission.keys.values())


def test_http_n_counts_against_the_keys_quota(secured):
    running, keys = secured
    base = f"http://127.0.0.1:{running.http_port}/v1"
    sdk = openai.OpenAI(base_url=base, api_key=keys.small, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    model = running.core.policy.model_name
    assert len(sdk.chat.completions.create(model=model, messages=messages, max_tokens=2, n=2).choices) == 2
    with pytest.raises(openai.RateLimitError) as error:
        sdk.chat.completions.create(model=model, messages=messages, max_tokens=2, n=3)
    assert error.value.body["message"].startswith("quota.max_n: the request decodes 3 sequences")
    slow = openai.OpenAI(base_url=base, api_key=keys.slow, max_retries=0)
    with pytest.raises(openai.RateLimitError) as error:
        slow.chat.completions.create(model=model, messages=messages, max_tokens=2, n=3)
    assert error.value.body["param"] == "n" and "quota.requests_per_minute of 2" in error.value.body["message"]
    assert "retry-after" not in error.value.response.headers  # waiting would not help
    assert all(u.pending == 0 for u in running.core.admission.keys.values())


def test_a_revoked_key_is_refused_without_a_restart(secured):
    running, keys = secured
    secret, record = keys.file.create("user", "temporary")
    time.sleep(1.1)  # the server looks at the file at most once a second
    with _client(running, secret) as c:
        assert c.generate("hi").text is not None
        keys.file.revoke(record.id)
        time.sleep(1.1)
        assert _refused(lambda: c.generate("hi")).code == Code.UNAUTHENTICATED


def test_http_takes_the_key_as_a_bearer_token(secured):
    running, keys = secured
    base = f"http://127.0.0.1:{running.http_port}/v1"

    def chat(key):
        sdk = openai.OpenAI(base_url=base, api_key=key, max_retries=0)
        return sdk.chat.completions.create(
            model=running.core.policy.model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )

    assert chat(keys.user).choices[0].message.content is not None
    with pytest.raises(openai.AuthenticationError) as error:
        chat("alignd-000000000000-nope")
    assert error.value.status_code == 401 and "authorization" in error.value.body["message"]
    assert httpx.get(f"{base}/models").status_code == 401
    assert httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {keys.user}"}).status_code == 200


def test_a_rate_quota_answers_with_a_retry_hint_on_both_transports(secured):
    running, keys = secured
    with _client(running, keys.slow) as c:
        c.generate("hi")
        c.generate("hi")
        error = _refused(lambda: c.generate("hi"))
    assert error.code == Code.RESOURCE_EXHAUSTED and "quota.requests_per_minute" in error.details
    assert 0 < error.retry_after <= 30
    answer = httpx.post(
        f"http://127.0.0.1:{running.http_port}/v1/chat/completions",
        headers={"Authorization": f"Bearer {keys.slow}"},
        json={"model": running.core.policy.model_name, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert answer.status_code == 429 and 1 <= int(answer.headers["Retry-After"]) <= 30
    assert answer.json()["error"]["type"] == "rate_limit_error"


def test_per_request_quotas(secured):
    running, keys = secured
    with _client(running, keys.small) as c:
        assert c.generate("hi", max_tokens=4).text is not None
        too_long = _refused(lambda: c.generate("hi", max_tokens=5))
        too_many = _refused(lambda: c.generate("hi", strategy="best_of_n", n=3, max_tokens=2))
        scores = _refused(lambda: c.score("hi", ["a", "b", "c"]))
    assert too_long.code == Code.RESOURCE_EXHAUSTED and "quota.max_tokens" in too_long.details
    assert too_many.code == Code.RESOURCE_EXHAUSTED and "quota.max_n" in too_many.details
    assert scores.code == Code.RESOURCE_EXHAUSTED and "quota.max_n" in scores.details
    assert too_long.retry_after is None  # waiting would not help


class GateObjective(Objective):
    """Each request's scoring waits for one `gate.release()`; `entered` counts the waiting."""

    info = ObjectiveInfo("gate", "waits for the test", 0.0, 1.0)

    def __init__(self) -> None:
        self.gate = threading.Semaphore(0)
        self.entered = 0
        self.lock = threading.Lock()

    def score(self, prompts, responses):
        with self.lock:
            self.entered += 1
        self.gate.acquire(timeout=30)
        return np.zeros(len(responses))

    def wait_entered(self, count: int) -> None:
        deadline = time.monotonic() + 20
        while self.entered < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.entered >= count


def test_one_heavy_key_cannot_starve_another(tiny_policy, tmp_path):
    keys = _keys(tmp_path / "keys.json")
    gate = GateObjective()
    config = ServerConfig(
        port=0,
        limits=TEST_LIMITS,
        default_sampling=SamplingParams(max_tokens=2),
        workers=8,
        max_pending=4,
        auth=AuthOptions(enabled=True, keys_file=str(keys.file.path)),
    )
    with (
        running_server(tiny_policy, ObjectiveScorer([gate]), config) as running,
        _client(running, keys.user) as heavy,
        _client(running, keys.admin) as light,
        ThreadPoolExecutor(8) as pool,
    ):
        flood = [pool.submit(heavy.generate, "hi") for _ in range(4)]
        gate.wait_entered(4)
        assert "server busy" in _refused(lambda: light.generate("hi")).details
        gate.gate.release()
        done, _ = wait(flood, timeout=10, return_when=FIRST_COMPLETED)
        assert len(done) == 1
        # The light key asked: the heavy one is held to half the server until it is served.
        busy = _refused(lambda: heavy.generate("hi"))
        assert busy.code == Code.RESOURCE_EXHAUSTED and "fair share" in busy.details
        served = pool.submit(light.generate, "hi")
        gate.wait_entered(5)
        for _ in range(4):
            gate.gate.release()
        assert served.result(10).text is not None
        for f in flood:
            assert f.result(10).text is not None


def test_concurrency_quota(tiny_policy, tmp_path):
    keys = KeysFile(tmp_path / "keys.json")
    secret, _ = keys.create("user", "one-at-a-time", Quota(concurrent=1))
    gate = GateObjective()
    config = ServerConfig(
        port=0,
        workers=4,
        default_sampling=SamplingParams(max_tokens=2),
        auth=AuthOptions(enabled=True, keys_file=str(keys.path)),
    )
    with (
        running_server(tiny_policy, ObjectiveScorer([gate]), config) as running,
        _client(running, secret) as c,
        ThreadPoolExecutor(1) as pool,
    ):
        first = pool.submit(c.generate, "hi")
        gate.wait_entered(1)
        error = _refused(lambda: c.generate("hi"))
        gate.gate.release()
        assert first.result(10).text is not None
    assert error.code == Code.RESOURCE_EXHAUSTED and "quota.concurrent" in error.details


def test_protected_health_needs_a_key(tiny_policy, module_letter_scorer, tmp_path):
    keys = _keys(tmp_path / "keys.json")
    config = ServerConfig(
        port=0,
        workers=1,
        http=HTTPOptions(enabled=True, port=0),
        auth=AuthOptions(enabled=True, keys_file=str(keys.file.path), open_services=()),
    )
    with running_server(tiny_policy, module_letter_scorer, config) as running:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with pytest.raises(grpc.RpcError) as error:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert error.value.code() == Code.UNAUTHENTICATED
            answer = stub.Check(
                health_pb2.HealthCheckRequest(), timeout=10, metadata=(("authorization", f"Bearer {keys.user}"),)
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as error:
                _services(channel)
            assert error.value.code() == Code.UNAUTHENTICATED
            assert "alignd.v1.Alignd" in _services(channel, (("authorization", f"Bearer {keys.user}"),))
        url = f"http://127.0.0.1:{running.http_port}/health"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {keys.user}"}).status_code == 200


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_tls_serves_clients_that_trust_its_ca(tiny_policy, module_letter_scorer, pki):
    tls = TLSOptions(cert_file=str(pki.server_cert), key_file=str(pki.server_key))
    config = ServerConfig(port=0, workers=1, tls=tls, http=HTTPOptions(enabled=True, port=0))
    with running_server(tiny_policy, module_letter_scorer, config) as running:
        with _client(running, tls=TLS(ca_file=str(pki.ca))) as c:
            assert c.server_info().model
        with _client(running, timeout=5) as plain:  # no TLS: the handshake never happens
            assert _refused(plain.server_info).code == Code.UNAVAILABLE
        assert (
            httpx.get(
                f"https://127.0.0.1:{running.http_port}/health", verify=ssl.create_default_context(cafile=str(pki.ca))
            ).status_code
            == 200
        )
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"https://127.0.0.1:{running.http_port}/health")  # the system's CAs do not know it


def test_mutual_tls_requires_a_client_certificate_from_the_client_ca(tiny_policy, module_letter_scorer, pki):
    tls = TLSOptions(cert_file=str(pki.server_cert), key_file=str(pki.server_key), client_ca_file=str(pki.ca))
    config = ServerConfig(port=0, workers=1, tls=tls)
    with running_server(tiny_policy, module_letter_scorer, config) as running:
        signed = TLS(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
        with _client(running, tls=signed) as c:
            assert c.server_info().model
        stranger = TLS(ca_file=str(pki.ca), cert_file=str(pki.stranger_cert), key_file=str(pki.stranger_key))
        for refused in (TLS(ca_file=str(pki.ca)), stranger):
            with _client(running, tls=refused, timeout=5) as c:
                assert _refused(c.server_info).code == Code.UNAVAILABLE


def test_limits_on_messages_and_prompt_tokens(tiny_policy, module_letter_scorer):
    limits = TEST_LIMITS.__class__(**{**TEST_LIMITS.__dict__, "max_prompt_chars": 100_000, "max_prompt_tokens": 40})
    config = ServerConfig(
        port=0,
        workers=1,
        limits=limits,
        default_sampling=SamplingParams(max_tokens=4),
        max_message_bytes=20_000,
        http=HTTPOptions(enabled=True, port=0),
    )
    with running_server(tiny_policy, module_letter_scorer, config) as running, _client(running) as c:
        huge = _refused(lambda: c.generate("x" * 30_000))
        assert huge.code == Code.RESOURCE_EXHAUSTED  # gRPC's own message-size refusal
        long_prompt = _refused(lambda: c.generate("word " * 200))
        assert long_prompt.code == Code.INVALID_ARGUMENT and long_prompt.details.startswith("prompt: ")
        assert "over the limit of 40" in long_prompt.details
        answer = httpx.post(
            f"http://127.0.0.1:{running.http_port}/v1/completions",
            json={"model": running.core.policy.model_name, "prompt": "x" * 30_000},
        )
        assert answer.status_code == 413 and "error" in answer.json()
        assert c.generate("still serving").text is not None


def test_logs_hold_no_request_text_unless_asked(tiny_policy, module_letter_scorer, caplog):
    prompt = "PROMPT-MARKER tell me a secret"
    for log_text in (False, True):
        caplog.clear()
        config = ServerConfig(
            port=0, workers=1, log_text=log_text, limits=TEST_LIMITS, default_sampling=SamplingParams(max_tokens=4)
        )
        with (
            caplog.at_level(logging.DEBUG),
            running_server(tiny_policy, module_letter_scorer, config) as running,
            _client(running) as c,
        ):
            out = c.generate(prompt, max_tokens=4)
            _refused(lambda: c.generate(prompt, max_tokens=10_000))
        assert ("PROMPT-MARKER" in caplog.text) is log_text
        assert (repr(out.text) in caplog.text) is (log_text and bool(out.text))


def test_unreadable_certificates_stop_start_up_with_one_line(tiny_policy, module_letter_scorer, pki, tmp_path):
    from alignd.config import ConfigError

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    for cert, key in ((garbage, pki.server_key), (pki.server_cert, pki.client_key)):  # not PEM; not its key
        config = ServerConfig(port=0, workers=1, tls=TLSOptions(cert_file=str(cert), key_file=str(key)))
        with (
            pytest.raises(ConfigError, match=r"^tls\.cert_file, tls\.key_file: not a PEM certificate chain"),
            running_server(tiny_policy, module_letter_scorer, config),
        ):
            pass


def test_an_error_quoting_a_huge_input_is_cut_to_fit_a_trailer(secured):
    running, keys = secured
    with _client(running, keys.user) as c:
        error = _refused(lambda: c.generate("hi", experiment="x" * 20_000, subject="s"))
        assert error.code == Code.NOT_FOUND and error.details.startswith("experiment: no experiment named")
        assert len(error.details) == 1000 and error.details.endswith("…")
        answer = httpx.post(
            f"http://127.0.0.1:{running.http_port}/v1/chat/completions",
            headers={"Authorization": f"Bearer {keys.user}"},
            json={
                "model": running.core.policy.model_name,
                "messages": [{"role": "user", "content": "hi"}],
                "alignd": {"experiment": "x" * 20_000},
                "user": "s",
            },
        )
        assert answer.status_code == 404 and len(answer.json()["error"]["message"]) == 1000


def test_a_malformed_keys_file_stops_start_up(tiny_policy, module_letter_scorer, tmp_path):
    from alignd.config import ConfigError

    path = tmp_path / "keys.json"
    path.write_text('{"version": 1, "keys": [{"id": "x"}]}')
    config = ServerConfig(port=0, workers=1, auth=AuthOptions(enabled=True, keys_file=str(path)))
    with (
        pytest.raises(ConfigError, match=r"^auth\.keys_file: keys file .*keys\[0\]\.role: missing"),
        running_server(tiny_policy, module_letter_scorer, config),
    ):
        pass


def test_a_cancelled_decode_is_charged_the_tokens_it_generated(tiny_policy, tmp_path):
    keys = KeysFile(tmp_path / "keys.json")
    secret, record = keys.create("user", "metered", Quota(tokens_per_minute=60))
    gate = GateObjective()  # the decode generates its tokens, then waits to be scored
    config = ServerConfig(
        port=0,
        workers=2,
        default_sampling=SamplingParams(max_tokens=8),
        auth=AuthOptions(enabled=True, keys_file=str(keys.path)),
    )
    with running_server(tiny_policy, ObjectiveScorer([gate]), config) as running:
        with _client(running, secret, timeout=2) as c:
            assert _refused(lambda: c.generate("hi", temperature=1.0)).code == Code.DEADLINE_EXCEEDED
        gate.gate.release()
        usage = running.core.admission.keys[record.id]
        deadline = time.monotonic() + 10
        while usage.tokens.level == 60 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 52 <= usage.tokens.level < 60  # 1 to 8 tokens charged
        assert running.core.pending == 0
