"""Start-up and shutdown: load the policy and scorers from config, serve gRPC with health
checking and reflection, drain gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from alignd.backends.base import Policy
from alignd.config import ConfigError, ServerConfig
from alignd.rewardmodels.base import Scorer
from alignd.server.metrics import Metrics
from alignd.server.service import AligndService
from alignd.v1 import alignd_pb2, alignd_pb2_grpc

log = logging.getLogger("alignd.server")

SERVICE_NAME = alignd_pb2.DESCRIPTOR.services_by_name["Alignd"].full_name


def load_policy(config: ServerConfig) -> Policy:
    """The concrete backend named in config (the server is the only place that picks one)."""
    from alignd import models

    checkpoint = models.resolve(config.model)
    if config.backend == "transformers":
        from alignd.backends.transformers_policy import TransformersPolicy

        name = config.model if config.model in models.REGISTRY else checkpoint.name
        return TransformersPolicy(checkpoint, model_name=name, device=config.device, dtype=config.dtype)
    raise ConfigError(f"backend: unknown backend {config.backend!r}; available: ['transformers']")


def load_scorer(config: ServerConfig, device: str) -> Scorer:
    from alignd.rewardmodels.builtin import BUILTIN_OBJECTIVES, build_scorer

    unknown = [n for n in config.objectives if n not in BUILTIN_OBJECTIVES]
    if unknown:
        raise ConfigError(f"objectives: unknown {unknown}; built-in: {sorted(BUILTIN_OBJECTIVES)}")
    return build_scorer(config.objectives, device=device)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    service: AligndService
    health: health.aio.HealthServicer
    port: int

    async def stop(self, grace: float) -> None:
        """Stop taking new work, let in-flight requests finish for `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.service.close()


async def start_server(policy: Policy, scorer: Scorer, config: ServerConfig) -> RunningServer:
    """Bind and start; `config.port` 0 picks a free port (see RunningServer.port)."""
    metrics = Metrics()
    service = AligndService(policy, scorer, config, metrics)
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 16 * 1024 * 1024)])
    alignd_pb2_grpc.add_AligndServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{config.host}:{config.port}")
    if port == 0:
        raise ConfigError(f"port: cannot bind {config.host}:{config.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.metrics_port:
        metrics.serve_http(config.metrics_port, config.host)
    return RunningServer(server, service, health_servicer, port)


async def serve(config: ServerConfig) -> None:
    """Load everything, serve until SIGTERM or SIGINT, then drain."""
    policy = load_policy(config)
    scorer = load_scorer(config, policy.device)
    running = await start_server(policy, scorer, config)
    # Tests and scripts read this line to learn the port when config.port is 0.
    print(f"alignd serving {policy.model_name} on {config.host}:{running.port} (device {policy.device})", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("draining for up to %.1f s", config.grace_seconds)
    await running.stop(config.grace_seconds)
    policy.close()
