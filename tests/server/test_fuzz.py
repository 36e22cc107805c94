"""500 generated requests across every RPC (tests/fuzz_requests.py): no INTERNAL or UNKNOWN
answer, and the server healthy and serving after."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from alignd.backends.base import SamplingParams
from alignd.clients import AligndClient
from alignd.config import AuthOptions, ServerConfig
from alignd.decoding.base import STRATEGIES
from alignd.server.auth.keys import KeysFile
from tests.fuzz_requests import NAMES, fuzz
from tests.server.conftest import TEST_LIMITS, running_server

EXPERIMENT = {
    "name": "fuzz-ab",
    "arms": [
        {"name": "control", "strategy": "sample", "split": 0.5},
        {"name": "treatment", "strategy": "best_of_n", "params": {"n": 2}, "split": 0.5},
    ],
}


def test_generated_requests_get_no_internal_error(tiny_policy, module_letter_scorer, tmp_path):
    keys = KeysFile(tmp_path / "keys.json")
    secrets = [keys.create(role, role)[0] for role in ("user", "admin")]
    config = ServerConfig(
        port=0,
        limits=TEST_LIMITS,
        default_sampling=SamplingParams(max_tokens=4),
        workers=8,
        auth=AuthOptions(enabled=True, keys_file=str(keys.path)),
        experiments=(EXPERIMENT,),
        experiment_store=str(tmp_path / "experiments.sqlite"),
    )
    names = [*NAMES, *STRATEGIES, *module_letter_scorer.objective_names]
    with (
        running_server(tiny_policy, module_letter_scorer, config) as running,
        grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        outcomes = fuzz(channel, 500, names, secrets, concurrency=8, timeout=60)
        print(dict(outcomes.codes))
        assert outcomes.bad == [], "\n".join(outcomes.bad)
        assert sum(outcomes.codes.values()) == 500
        # It reached past validation: decodes ran, and refusals named their fields.
        assert outcomes.codes["OK"] >= 50 and outcomes.codes["INVALID_ARGUMENT"] >= 100, outcomes.codes
        answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with AligndClient(f"127.0.0.1:{running.port}", timeout=30, api_key=secrets[0]) as client:
            assert client.generate("still serving?", max_tokens=4).text is not None
        assert running.core.pending == 0
