"""Start-up and shutdown: check the config, load the policy and scorers, serve gRPC with health
checking and reflection, drain gracefully on SIGTERM/SIGINT.

Everything the config says that can be checked without the policy is checked first
(`check_config`): loading the policy can take over a minute (vLLM's engine), and a typo in an
objective or a heads path should not cost that."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from alignd import models
from alignd.backends.base import Policy
from alignd.backends.loading import checkpoint_hidden_size, load_policy, served_model_name
from alignd.backends.preference_vectors import PreferenceVectors, VectorInfo, VectorsError, shipped_vectors
from alignd.backends.vllm import EngineStartError
from alignd.config import (
    OPEN_SERVICES,
    ConfigError,
    ServerConfig,
    auth_enabled,
    check_settings,
    experiment_store_location,
    keys_file,
)
from alignd.errors import InvalidArgument
from alignd.rewardmodels.base import Scorer
from alignd.rewardmodels.engine import ScoringEngine
from alignd.rewardmodels.heads import Head, HeadError
from alignd.rewardmodels.objective_tables import ObjectiveSpec, load_objectives, parse_objectives, resolve_objectives
from alignd.server import tls
from alignd.server.auth.interceptor import KeyRequired
from alignd.server.core import ServerCore
from alignd.server.metrics import Metrics
from alignd.server.openai_api.app import OpenAIApi
from alignd.server.service import AligndService
from alignd.v1 import alignd_pb2, alignd_pb2_grpc

log = logging.getLogger("alignd.server")

SERVICE_NAME = alignd_pb2.DESCRIPTOR.services_by_name["Alignd"].full_name
SHIPPED_HEADS = Path(__file__).resolve().parent.parent / "data" / "heads"


def shipped_value_heads(model_name: str) -> Path | None:
    path = SHIPPED_HEADS / model_name / "value_heads.safetensors"
    return path if path.is_file() else None


@dataclass(frozen=True)
class CheckedConfig:
    """What `check_config` checked and loaded for `load_scorer`: the objectives (resolved against
    their checkpoints' config.json and entry points) and the config's heads, loaded on the CPU
    and checked against the model and the served objectives (`load_heads`)."""

    objectives: tuple[ObjectiveSpec, ...] = ()
    reward: tuple[tuple[str, Head], ...] = ()  # (path, head), in config order
    value: tuple[str, Head] | None = None
    vectors: PreferenceVectors | None = None  # for the policy (`load_vectors`)

    def fields(self) -> list[tuple[str, Head]]:
        """Each head with the setting that names it, for error messages."""
        named = [(f"reward_heads[{i}]", head) for i, (_, head) in enumerate(self.reward)]
        return named + ([("value_heads", self.value[1])] if self.value else [])


def check_objectives(config: ServerConfig) -> tuple[ObjectiveSpec, ...]:
    """The objective tables, and what they point at (config.json files, entry points)."""
    return tuple(resolve_objectives(parse_objectives(config.objectives)))


def load_heads(
    config: ServerConfig, model_name: str, hidden_size: int | None, objectives: tuple[ObjectiveSpec, ...] = ()
) -> CheckedConfig:
    """Load the heads the config names and check them (ConfigError naming the setting): each file's
    kind, its hidden size against the model's (when known), and the objectives.

    Value heads trained for more objectives than the server scores serve the ones it does (prefix
    scoring serves the rest). Heads that cover none of them are an error when the config names
    their path, and are left out with `value_heads = "auto"`: the shipped heads are an extra that
    must not stop a server started with other objectives."""

    def load(path: str | Path, field: str, kind: str) -> Head:
        try:
            head = Head.load(path)
            if head.metadata.kind != kind:
                raise HeadError(f"expected {kind} heads, got a {head.metadata.kind!r} head")
            if kind == "reward" and len(head.objectives) != 1:
                raise HeadError(f"a reward head has exactly one output, this one has {len(head.objectives)}")
        except HeadError as error:
            raise ConfigError(f"{field}: {error}") from None
        check_compatible(field, head, model_name, hidden_size)
        return head

    served = [spec.name for spec in objectives]
    reward: list[tuple[str, Head]] = []
    for i, path in enumerate(config.reward_heads):
        head = load(path, f"reward_heads[{i}]", "reward")
        if head.objectives[0] in served:
            raise ConfigError(f"reward_heads[{i}]: objective {head.objectives[0]!r} is already served")
        served.append(head.objectives[0])
        reward.append((path, head))
    if not served:
        raise ConfigError("objectives: the server needs at least one objective (objectives or reward_heads)")

    auto = config.value_heads == "auto"
    value_path = shipped_value_heads(model_name) if auto else config.value_heads or None
    if value_path is None:
        return CheckedConfig(objectives, tuple(reward))
    value = load(value_path, "value_heads", "value")
    if not any(o in served for o in value.objectives):
        if not auto:
            raise ConfigError(
                f"value_heads: value heads predict {value.objectives}, none of which this server scores {served}"
            )
        log.info(
            "the value heads shipped for %s predict %s, none of which this server scores: not loaded",
            model_name,
            value.objectives,
        )
        return CheckedConfig(objectives, tuple(reward))
    return CheckedConfig(objectives, tuple(reward), (str(value_path), value))


def check_compatible(field: str, head: Head, model_name: str, hidden_size: int | None) -> None:
    """The head reads this model's hidden states (ConfigError naming the setting); nothing to
    check while the hidden size is unknown."""
    if hidden_size is None:
        return
    try:
        head.check_compatible(model_name, hidden_size)
    except HeadError as error:
        raise ConfigError(f"{field}: {error}") from None


def load_vectors(config: ServerConfig, model_name: str, checkpoint: Path) -> PreferenceVectors | None:
    """The preference vectors the config names (ConfigError naming the setting): "auto" is the
    set shipped for the model, if any, on the transformers backend (on vLLM, loading vectors turns
    on LoRA for every request: it takes a path); vectors trained on another model, or whose layers
    the checkpoint lacks, are refused before any model loads."""
    auto = config.preference_vectors == "auto"
    if auto and config.backend == "vllm":
        return None
    path = shipped_vectors(model_name) if auto else config.preference_vectors or None
    if path is None:
        return None
    try:
        vectors = PreferenceVectors.load(path)
        for info in vectors.infos.values():
            if info.base_model != model_name:
                raise VectorsError(
                    f"vector {info.name!r} was trained on {info.base_model!r}, the served model is {model_name!r}"
                )
        vectors.check_checkpoint(checkpoint)
    except VectorsError as error:
        raise ConfigError(f"preference_vectors: {error}") from None
    return vectors


def check_config(config: ServerConfig) -> CheckedConfig:
    """Every check that needs no policy, before it loads: the settings, the model's folder, the
    device, the objectives (reward models' config.json, entry points), the heads against the
    model's config.json and the objectives, the default weights and sampling, and the experiments
    (all but what their strategies ask of the policy, checked again when the service starts).
    Returns what `load_scorer` needs."""
    check_settings(config)
    objectives = check_objectives(config)
    if config.backend == "transformers":  # vLLM picks its device itself
        from alignd.backends.transformers_policy import resolve_device

        try:
            resolve_device(config.device)
        except RuntimeError as error:
            raise ConfigError(f"device: {error}") from None
    # ModelNotFound is one line from the CLI too; a registered model is converted here on first use.
    checkpoint = models.resolve(config.model)
    model_name = served_model_name(config.model, checkpoint)
    checked = load_heads(config, model_name, checkpoint_hidden_size(checkpoint), objectives)
    checked = dataclasses.replace(checked, vectors=load_vectors(config, model_name, checkpoint))
    _check_requests(
        config,
        (*(o.name for o in objectives), *(h.objectives[0] for _, h in checked.reward)),
        checked.vectors.infos if checked.vectors is not None else {},
    )
    if auth_enabled(config):
        from alignd.server.auth.keys import KeysFile, KeysFileError

        try:
            KeysFile(keys_file(config)).read()
        except KeysFileError as error:
            raise ConfigError(f"auth.keys_file: {error}") from None
    return checked


def _check_requests(config: ServerConfig, objective_names: tuple[str, ...], vectors: Mapping[str, VectorInfo]) -> None:
    """Default weights and sampling, and each experiment arm parsed as a request would be."""
    from alignd.decoding.weights import parse_weights
    from alignd.server import convert
    from alignd.server.experiments.registry import configured_experiments

    try:
        default_weights = parse_weights(config.default_weights, objective_names).as_dict()
        convert.parse_sampling(alignd_pb2.SamplingParams(), config.default_sampling, config.limits)
    except InvalidArgument as error:
        raise ConfigError(f"default_{error}") from None

    def parse_arm(template: alignd_pb2.GenerateRequest) -> None:
        convert.parse_generate(
            template,
            objective_names,
            default_weights,
            config.default_sampling,
            config.limits,
            vectors=vectors,
            template=True,
        )

    configured_experiments(config, parse_arm)
    experiment_store_location(config)


def load_scorer(
    config: ServerConfig,
    policy: Policy,
    configured: CheckedConfig | None = None,
    engine: ScoringEngine | None = None,
) -> tuple[Scorer, list[tuple[str, Head]]]:
    """The configured objectives (reward models on one scoring engine), reward heads as extra
    objectives, and value heads on top; `configured`: what `check_config` checked and loaded
    (else it is done here); `engine`: the scoring engine to run model objectives on (else a new
    one from the `[scoring]` table).

    Returns the scorer and the loaded heads with their paths (for GetServerInfo)."""
    from alignd.backends.features import response_features
    from alignd.rewardmodels.guided_scorer import ValueGuidedScorer
    from alignd.rewardmodels.objective_scorer import ObjectiveScorer
    from alignd.rewardmodels.reward_head import RewardHeadObjective
    from alignd.rewardmodels.value_sources import HEADS

    hidden_size = getattr(policy, "hidden_size", None)
    if configured is None:
        configured = load_heads(config, policy.model_name, hidden_size, check_objectives(config))
    else:
        # The model's config.json may not have said; the loaded model does.
        for field, head in configured.fields():
            check_compatible(field, head, policy.model_name, hidden_size)
    engine = engine or ScoringEngine(config.scoring)
    objectives = load_objectives(configured.objectives, engine, policy.device)
    heads: list[tuple[str, Head]] = []
    if configured.reward:
        _ensure_hidden_states(config, "reward_heads", policy)
    for path, head in configured.reward:
        heads.append((path, head.to(policy.device)))
        objectives.append(
            RewardHeadObjective(head, lambda p, r: response_features(policy, p, r), source=f"reward_head {path}")
        )
    try:
        scorer: Scorer = ObjectiveScorer(objectives)
    except ValueError as error:
        raise ConfigError(f"reward_heads: {error}") from None
    if configured.value:
        path, head = configured.value
        heads.append((path, head.to(policy.device)))
        try:
            scorer = ValueGuidedScorer(scorer, head)
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
            # Steered requests' hidden states come from the same steered weights.
            vectors=getattr(policy, "preference_vectors", None),
        )
    )


@dataclass
class RunningServer:
    server: grpc.aio.Server
    core: ServerCore
    health: health.aio.HealthServicer
    port: int
    http: HTTPServer | None = None  # the OpenAI-compatible API, when [http] enables it

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http is not None else None

    async def stop(self, grace: float) -> None:
        """Stop taking new work, let in-flight requests finish for `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            await self.http.stop_listening()
        await self.server.stop(grace)
        if self.http is not None:
            await self.http.runner.cleanup()  # waits up to `grace` for open HTTP requests
        await self.core.aclose()


@dataclass
class HTTPServer:
    api: OpenAIApi
    runner: web.AppRunner
    port: int

    async def stop_listening(self) -> None:
        """No new connections; /health answers 503 to the ones open."""
        self.api.draining = True
        for site in list(self.runner.sites):
            await site.stop()


async def start_server(
    policy: Policy, scorer: Scorer, config: ServerConfig, heads: list[tuple[str, Head]] | None = None
) -> RunningServer:
    """Bind and start; `config.port` 0 picks a free port (see RunningServer.port), as does
    `config.http.port` 0 for the HTTP API."""
    metrics = Metrics()
    core = ServerCore(policy, scorer, config, metrics, heads or [])
    await core.start()
    protected = tuple(s for s in OPEN_SERVICES if s not in config.auth.open_services)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_concurrent_streams", config.max_streams_per_connection),
        ],
        interceptors=[KeyRequired(core.auth, protected)] if core.auth.enabled and protected else None,
    )
    alignd_pb2_grpc.add_AligndServicer_to_server(AligndService(core), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    try:
        # Loading the HTTP API's context checks the files, naming the one at fault (gRPC's own
        # errors do not); the HTTP API serves with it.
        context = tls.http_context(config.tls) if config.tls.cert_file else None
        if context is not None:
            port = server.add_secure_port(address, tls.grpc_credentials(config.tls))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc raises it for an address it cannot bind
        port = 0
    except ConfigError:
        await core.aclose()
        raise
    if port == 0:
        await core.aclose()
        raise ConfigError(f"port: cannot bind {config.host}:{config.port}")
    try:
        http = await start_http(core, config, context) if config.http.enabled else None
    except ConfigError:
        await core.aclose()
        raise
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if config.metrics_port:
        metrics.serve_http(config.metrics_port, config.host)
    return RunningServer(server, core, health_servicer, port, http)


async def start_http(core: ServerCore, config: ServerConfig, context: ssl.SSLContext | None) -> HTTPServer:
    """The OpenAI-compatible API on the running event loop (over TLS with `context`)."""
    host = (config.http.host or config.host).strip("[]")  # gRPC writes IPv6 hosts as [::]
    api = OpenAIApi(core, open_health="health" in config.auth.open_services)
    # handler_cancellation: a client that disconnects cancels its request (and so its decode).
    runner = web.AppRunner(
        api.application(), handler_cancellation=True, access_log=None, shutdown_timeout=config.grace_seconds
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, config.http.port, ssl_context=context).start()
    except OSError as error:
        await runner.cleanup()
        raise ConfigError(f"http.port: cannot bind {host}:{config.http.port}: {error.strerror}") from None
    return HTTPServer(api, runner, runner.addresses[0][1])


def security_summary(config: ServerConfig, core: ServerCore) -> str:
    """For the start-up line: who may call, and over what."""
    transport = tls.describe(config.tls)
    if auth_enabled(config):
        assert core.auth.ring is not None
        return f"{transport}, API keys required ({core.auth.ring.count} valid in {keys_file(config)})"
    role = config.auth.anonymous_role
    return f"{transport}, authentication OFF (anyone who reaches the port{' is admin' if role == 'admin' else ''})"


async def serve(config: ServerConfig) -> None:
    """Check the config, load everything, serve until SIGTERM or SIGINT, then drain."""
    configured = check_config(config)
    try:
        policy = load_policy(
            config.model,
            backend=config.backend,
            device=config.device,
            dtype=config.dtype,
            vllm_options=config.vllm,
            small_batch_matmul=config.small_batch_matmul,
            max_batch_tokens=config.limits.max_batch_tokens,
            vectors=configured.vectors,
        )
    except (ValueError, EngineStartError) as error:
        raise ConfigError(str(error)) from None
    engine = ScoringEngine(config.scoring)
    try:
        scorer, heads = load_scorer(config, policy, configured, engine)
        running = await start_server(policy, scorer, config, heads)
        # Tests and scripts read this line to learn the port when config.port is 0.
        http = f"; OpenAI-compatible HTTP API on {config.http.host or config.host}:{running.http_port}"
        print(
            f"alignd serving {policy.model_name} on {config.host}:{running.port} "
            f"(device {policy.device}, dtype {policy.dtype}{' from auto' if config.dtype == 'auto' else ''})"
            f"{http if running.http_port is not None else ''}; {security_summary(config, running.core)}",
            flush=True,
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        # SIGHUP reloads the keys file at once (it is also re-read within a second of a change).
        loop.add_signal_handler(signal.SIGHUP, running.core.auth.reload)
        await stopping.wait()
        log.info("draining for up to %.1f s", config.grace_seconds)
        await running.stop(config.grace_seconds)
    finally:
        # After a failed start too: the engines stop here, not with tracebacks at interpreter exit.
        try:
            engine.close()
        finally:
            policy.close()
