"""Start-up and shutdown: load the policy and scorers from config, serve gRPC with health
checking and reflection, drain gracefully on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from alignd.backends.base import Policy
from alignd.backends.loading import load_policy
from alignd.backends.vllm import EngineStartError
from alignd.config import ConfigError, ServerConfig
from alignd.rewardmodels.base import Scorer
from alignd.rewardmodels.heads import Head, HeadError
from alignd.server.metrics import Metrics
from alignd.server.service import AligndService
from alignd.v1 import alignd_pb2, alignd_pb2_grpc

log = logging.getLogger("alignd.server")

SERVICE_NAME = alignd_pb2.DESCRIPTOR.services_by_name["Alignd"].full_name
SHIPPED_HEADS = Path(__file__).resolve().parent.parent / "data" / "heads"


def shipped_value_heads(model_name: str) -> Path | None:
    path = SHIPPED_HEADS / model_name / "value_heads.safetensors"
    return path if path.is_file() else None


def load_scorer(config: ServerConfig, policy: Policy) -> tuple[Scorer, list[tuple[str, Head]]]:
    """The built-in objectives, reward heads as extra objectives, and value heads on top.

    Returns the scorer and the loaded heads with their paths (for GetServerInfo)."""
    from alignd.backends.features import response_features
    from alignd.rewardmodels.builtin import build_objectives
    from alignd.rewardmodels.guided_scorer import ValueGuidedScorer
    from alignd.rewardmodels.objective_scorer import ObjectiveScorer
    from alignd.rewardmodels.reward_head import RewardHeadObjective
    from alignd.rewardmodels.value_sources import HEADS

    try:
        objectives = build_objectives(config.objectives, policy.device)
    except ValueError as error:
        raise ConfigError(f"objectives: {error}") from None
    heads: list[tuple[str, Head]] = []
    value_path = shipped_value_heads(policy.model_name) if config.value_heads == "auto" else config.value_heads
    if config.reward_heads:
        _ensure_hidden_states(config, "reward_heads", policy)
    hidden_size = getattr(policy, "hidden_size", None)

    def load_head(path: str, field: str) -> Head:
        try:
            head = Head.load(path, device=policy.device)
            if hidden_size is not None:
                head.check_compatible(policy.model_name, hidden_size)
        except HeadError as error:
            raise ConfigError(f"{field}: {error}") from None
        heads.append((str(path), head))
        return head

    for i, path in enumerate(config.reward_heads):
        head = load_head(path, f"reward_heads[{i}]")
        objectives.append(RewardHeadObjective(head, lambda p, r: response_features(policy, p, r)))
    try:
        scorer: Scorer = ObjectiveScorer(objectives)
    except ValueError as error:
        raise ConfigError(f"reward_heads: {error}") from None
    if value_path:
        try:
            scorer = ValueGuidedScorer(scorer, load_head(str(value_path), "value_heads"))
        except HeadError as error:
            raise ConfigError(f"value_heads: {error}") from None
        # A backend without hidden states gets the shadow only when `auto` sends an objective to
        # the heads; prefix scoring needs none (a request naming `heads` is then refused).
        if any(s.auto == HEADS for s in scorer.value_sources.values()):
            _ensure_hidden_states(config, "value_heads", policy)
    return scorer, heads


def _ensure_hidden_states(config: ServerConfig, field: str, policy: Policy) -> None:
    """Heads read hidden states. A backend that gives none (vLLM) gets a transformers shadow of
    the same checkpoint that follows its partial responses (loaded only when reward heads are
    configured or `auto` sends an objective to the value heads)."""
    from alignd.backends.base import Capability

    if Capability.HIDDEN_STATES in policy.capabilities:
        return
    attach = getattr(policy, "attach_hidden_states", None)
    checkpoint = getattr(policy, "checkpoint", None)
    if attach is None or checkpoint is None:
        raise ConfigError(f"{field}: backend {type(policy).__name__} gives no hidden states for the heads")
    from alignd.backends.transformers_policy import TransformersPolicy

    log.info("heads read hidden states from a transformers shadow of %s (the backend gives none)", checkpoint)
    device = "cpu" if policy.device == "cpu" else config.device
    attach(
        TransformersPolicy(
            checkpoint,
            model_name=policy.model_name,
            device=device,
            dtype=config.dtype,
            small_batch_matmul=config.small_batch_matmul,
        )
    )


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
        await self.service.aclose()


async def start_server(
    policy: Policy, scorer: Scorer, config: ServerConfig, heads: list[tuple[str, Head]] | None = None
) -> RunningServer:
    """Bind and start; `config.port` 0 picks a free port (see RunningServer.port)."""
    metrics = Metrics()
    service = AligndService(policy, scorer, config, metrics, heads or [])
    await service.start()
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
    try:
        policy = load_policy(
            config.model,
            backend=config.backend,
            device=config.device,
            dtype=config.dtype,
            vllm_options=config.vllm,
            small_batch_matmul=config.small_batch_matmul,
        )
    except (ValueError, EngineStartError) as error:
        raise ConfigError(str(error)) from None
    scorer, heads = load_scorer(config, policy)
    running = await start_server(policy, scorer, config, heads)
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
