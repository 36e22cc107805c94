"""The real server, started as `alignd serve` on the shipped SmolLM2 model, shared by the module."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from alignd import models

pytestmark = pytest.mark.integration

# The experiment the integration tests serve: sample against best-of-4, half the subjects each
# (TOML tables: append to a config after its top-level settings).
SAMPLE_VS_BON = """
[[experiments]]
name = "sample-vs-bon"
[[experiments.arms]]
name = "sample"
strategy = "sample"
split = 0.5
[[experiments.arms]]
name = "bon4"
strategy = "best_of_n"
params = { n = 4 }
split = 0.5
"""


def expected_arm(subject: str, experiment: str = "sample-vs-bon", arms: tuple[str, str] = ("sample", "bon4")) -> str:
    """The arm a subject's hash gives in a two-arm, half-and-half experiment."""
    from alignd.server.experiments.definitions import assignment_point

    return arms[0] if assignment_point(experiment, subject) < 0.5 else arms[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    port: int
    log: Path
    http_port: int | None = None  # with --http-port
    line: str = ""  # the start-up line

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_bytes(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def start_serve(tmp_path: Path, *args: str, timeout: float = 180, env: dict[str, str] | None = None) -> ServerProcess:
    models.resolve(models.DEFAULT_MODEL)  # converts the GGUF once if `make test` did not
    log = tmp_path / "serve.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "alignd.cli", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            found = re.search(r"alignd serving .*? on [\d.]+:(\d+)", line)
            if found:
                http = re.search(r"HTTP API on [\d.]+:(\d+)", line)
                return ServerProcess(process, int(found.group(1)), log, int(http.group(1)) if http else None, line)
        if process.poll() is not None:
            break
    process.kill()
    raise RuntimeError(f"alignd serve did not start: {log.read_text()[-2000:]}")


def answered_until_sigkill(server: ServerProcess, answers: int = 16, clients: int = 4) -> list[str]:
    """`clients` threads send sample-vs-bon requests (a new subject each) until `answers` are
    answered, then the server is SIGKILLed mid-stream; the ids of every answered request."""
    from alignd.clients import AligndClient, AligndClientError

    answered: list[str] = []
    lock = threading.Lock()
    stopping = threading.Event()

    def send(worker: int) -> None:
        with AligndClient(server.target, timeout=60) as client:
            i = 0
            while not stopping.is_set():
                try:
                    g = client.generate(
                        "Say hello.",
                        strategy="",
                        experiment="sample-vs-bon",
                        subject=f"kill-{worker}-{i}",
                        max_tokens=4,
                    )
                except AligndClientError:
                    return  # the server is gone
                with lock:
                    answered.append(g.request_id)
                i += 1

    threads = [threading.Thread(target=send, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    try:
        while len(answered) < answers:
            threads[0].join(0.1)
            assert server.process.poll() is None, server.log.read_text()[-2000:]
        server.process.kill()  # other requests are in flight
        server.process.wait(30)
    finally:
        stopping.set()
        for t in threads:
            t.join(60)
    with lock:
        return list(answered)


def stop(server: ServerProcess) -> int:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            return server.process.wait(30)
        except subprocess.TimeoutExpired:
            server.process.kill()
            return -9
    return server.process.returncode


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    server = start_serve(tmp_path_factory.mktemp("serve"))
    yield server
    stop(server)
