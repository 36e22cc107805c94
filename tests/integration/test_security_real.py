"""API keys, a quota and TLS on the real server (`alignd serve` on SmolLM2), set up with the CLI
as an operator would."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time

import grpc
import httpx
import openai
import pytest

from alignd.clients import TLS, AligndClient, AligndClientError
from tests.certificates import make_pki
from tests.integration.conftest import start_serve, stop

pytestmark = pytest.mark.integration


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alignd.cli", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_keys_quota_and_tls_on_the_real_server(tmp_path):
    pki = make_pki(tmp_path / "pki")
    keys = str(tmp_path / "keys.json")
    made = cli("keys", "create", "--keys-file", keys, "--name", "app", "--max-tokens", "8")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    server = start_serve(
        tmp_path,
        *("--auth", "--keys-file", keys, "--http-port", "0"),
        *("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)),
    )
    try:
        assert "TLS, API keys required (1 valid" in server.line
        tls = TLS(ca_file=str(pki.ca))
        with AligndClient(server.target, api_key=key, tls=tls, timeout=120) as client:
            assert client.generate("Name a colour.", max_tokens=8).text
            with pytest.raises(AligndClientError) as error:
                client.generate("Name a colour.", max_tokens=9)
            assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.value.details.startswith("quota.max_tokens: ")
        with AligndClient(server.target, tls=tls, timeout=60) as anonymous, pytest.raises(AligndClientError) as error:
            anonymous.server_info()
        assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
        # The CLI, with the key from the environment.
        done = cli(
            *("generate", "Name a colour.", "--max-tokens", "4", "--json"),
            *("--target", server.target, "--tls-ca", str(pki.ca)),
            env={**os.environ, "ALIGND_API_KEY": key},
        )
        assert done.returncode == 0, done.stderr
        # The HTTP API over HTTPS with the openai SDK.
        https = httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca)))
        sdk = openai.OpenAI(
            base_url=f"https://127.0.0.1:{server.http_port}/v1", api_key=key, http_client=https, max_retries=0
        )
        answer = sdk.chat.completions.create(
            model="smollm2-135m-instruct", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=4
        )
        assert answer.choices[0].message.content is not None
        # Revoked with the CLI: refused within about a second, no restart.
        assert cli("keys", "revoke", "--keys-file", keys, "app").returncode == 0
        time.sleep(1.5)
        with (
            AligndClient(server.target, api_key=key, tls=tls, timeout=60) as client,
            pytest.raises(AligndClientError) as error,
        ):
            client.server_info()
        assert error.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "Traceback" not in server.log.read_text()
    finally:
        assert stop(server) == 0
