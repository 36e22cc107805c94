"""Server configuration: a TOML file (``alignd serve --config alignd.toml``) and CLI overrides.

Every field has a default, so an empty file (or none) serves the embedded model on port 50051.
Example::

    model = "smollm2-135m-instruct"
    port = 50051
    objectives = ["relevance", "positivity", "harmlessness", "conciseness"]  # or tables (objectives.md)

    [default_weights]
    relevance = 0.7
    harmlessness = 0.3

    [default_sampling]
    temperature = 0.7
    max_tokens = 128

    [limits]
    max_candidates = 64

    # A/B experiments (docs/experiments.md): arms with a strategy, params, weights, split.
    [[experiments]]
    name = "bon-vs-sample"
    [[experiments.arms]]
    name = "control"
    strategy = "sample"
    split = 0.5
    [[experiments.arms]]
    name = "bon8"
    strategy = "best_of_n"
    params = { n = 8 }
    split = 0.5
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignd.backends.base import SamplingParams
from alignd.backends.vllm import VLLMOptions
from alignd.decoding.params import Limits
from alignd.models import DEFAULT_MODEL


class ConfigError(ValueError):
    """A configuration problem, reported as one line at start-up."""


MAX_COALESCE_MS = 1000.0


@dataclass(frozen=True)
class EngineOptions:
    """The `[scoring]` table: the engine every model-based objective's forwards run on
    (alignd/rewardmodels/engine.py)."""

    max_batch_tokens: int = 8192  # padded tokens (rows x longest row, a shared prefix in each) per forward
    coalesce_ms: float = 2.0  # how long a round waits for more requests' texts


@dataclass(frozen=True)
class HTTPOptions:
    """The `[http]` table: the OpenAI-compatible HTTP API served beside gRPC, in the same process
    (`alignd serve --http-port N` turns it on)."""

    enabled: bool = False
    port: int = 8000  # 0 picks a free one
    host: str = ""  # "": the gRPC `host`


@dataclass(frozen=True)
class AuthOptions:
    """The `[auth]` table: API keys (`alignd keys create`) and what callers without one get."""

    # true: every request needs a key; false: none does; unset: off when every port listens on
    # a loopback address, else the server refuses to start until the config says which.
    enabled: bool | None = None
    keys_file: str = ""  # "": <data dir>/keys.json (where `alignd keys create` writes)
    # The role of every caller while authentication is off: "admin" allows the admin RPCs
    # (CreateExperiment) on a trusted network.
    anonymous_role: str = "user"
    # gRPC services served without a key ("health", "reflection"); HTTP's /health follows "health".
    open_services: tuple[str, ...] = ("health", "reflection")


@dataclass(frozen=True)
class TLSOptions:
    """The `[tls]` table: TLS for gRPC and the HTTP API (PEM files); mTLS with `client_ca_file`."""

    cert_file: str = ""  # the server's certificate chain; with key_file, turns TLS on
    key_file: str = ""
    client_ca_file: str = ""  # set: clients must present a certificate this CA signed


@dataclass(frozen=True)
class ServerConfig:
    model: str = DEFAULT_MODEL
    backend: str = "transformers"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # float32 | bfloat16 | float16 | auto (bfloat16 on CUDA and on CPUs with native bf16, else
    # float32: emulated bf16 is slower for batched steps; `benchmarks/concurrency.py dtype`)
    dtype: str = "float32"
    # transformers backend on CPU: decoding steps multiply as W @ x^T, 1.2-3x faster than torch's
    # x @ W^T on MKL for a few rows (backends/cpu_matmul.py; benchmarks/cpu_matmul.py measures it).
    small_batch_matmul: bool = True
    host: str = "127.0.0.1"
    port: int = 50051
    # Built-in names, or [[objectives]] tables: reward-model checkpoints, users' Python objectives
    # (rewardmodels/objective_tables.py; docs/objectives.md).
    objectives: tuple[str | dict[str, Any], ...] = ("relevance", "positivity", "harmlessness", "conciseness")
    # The engine that batches every model-based objective's forwards ([scoring] table).
    scoring: EngineOptions = field(default_factory=EngineOptions)
    # Value heads for controlled decoding: "auto" loads the heads shipped for the model (if any),
    # "" none, else a .safetensors path (with its .json beside it).
    value_heads: str = "auto"
    # Preference vectors requests may steer with (GenerateRequest.preference_vectors): "auto" loads
    # the vectors shipped for the model (if any), "" none, else a .safetensors path (+ its .json).
    preference_vectors: str = "auto"
    # Bradley-Terry reward heads served as extra objectives (paths).
    reward_heads: tuple[str, ...] = ()
    default_weights: dict[str, float] = field(default_factory=dict)  # empty: uniform
    default_sampling: SamplingParams = field(default_factory=SamplingParams)
    limits: Limits = field(default_factory=Limits)
    # Decodes run in worker threads, one request each. 0 picks per backend: 32 for transformers
    # (concurrent requests' decoding steps are merged into one forward), 64 for vllm (threads
    # only wait while the engine batches their requests).
    workers: int = 0
    # Requests admitted at once (running + waiting); more get RESOURCE_EXHAUSTED.
    max_pending: int = 64
    metrics_port: int = 0  # Prometheus /metrics over HTTP; 0 disables
    http: HTTPOptions = field(default_factory=HTTPOptions)  # the OpenAI-compatible API ([http] table)
    grace_seconds: float = 10.0  # drain time on SIGTERM
    auth: AuthOptions = field(default_factory=AuthOptions)  # API keys and roles ([auth] table)
    tls: TLSOptions = field(default_factory=TLSOptions)  # [tls] table
    # Largest gRPC message or HTTP body accepted: room for a Score request at the default limits
    # (256 responses of 16,000 characters, some of them multi-byte).
    max_message_bytes: int = 16 * 1024 * 1024
    # Concurrent gRPC calls on one HTTP/2 connection (HTTP/2's customary 100; above max_pending a
    # connection's calls would be refused by admission anyway).
    max_streams_per_connection: int = 100
    # Log prompts and responses (debug only: logs otherwise never hold request or answer text).
    log_text: bool = False
    # A/B experiments: [[experiments]] tables (validated at start-up) and the store that records
    # their requests and feedback (a SQLite path or a postgresql:// URL; "auto":
    # <data dir>/experiments.sqlite, opened when experiments are configured, admin callers are
    # possible (keys, or anonymous_role = "admin") or the file exists; "": no store;
    # ALIGND_EXPERIMENT_STORE overrides it).
    experiments: tuple[dict[str, Any], ...] = ()
    experiment_store: str = "auto"
    store_queue_size: int = 1024  # writes waiting for the store before callers wait (metrics count it)
    # Engine options of the vllm backend ([vllm] table; `alignd serve --tensor-parallel-size ...`).
    vllm: VLLMOptions = field(default_factory=VLLMOptions)

    @property
    def decode_workers(self) -> int:
        return self.workers or (64 if self.backend == "vllm" else 32)


_NESTED = {
    "default_sampling": SamplingParams,
    "limits": Limits,
    "vllm": VLLMOptions,
    "scoring": EngineOptions,
    "http": HTTPOptions,
    "auth": AuthOptions,
    "tls": TLSOptions,
}
# Settings that are gone, with what replaced them.
_REPLACED = {
    "admin_rpcs": "replaced by API keys with the admin role ([auth], `alignd keys create --role admin`); "
    'without authentication, [auth] anonymous_role = "admin"',
}


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key in _REPLACED and not where:
            raise ConfigError(f"{key}: {_REPLACED[key]}")
        if key not in known:
            raise ConfigError(f"{where}{key}: unknown setting; known: {sorted(known)}")
        if key in _NESTED:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{key}: must be a table")
            value = _build(_NESTED[key], value, f"{where}{key}.")
        elif known[key].type in ("bool", bool, "bool | None") and not isinstance(value, bool):
            raise ConfigError(f"{where}{key}: must be true or false, got {value!r}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | Path | None = None, **overrides: Any) -> ServerConfig:
    """Read a TOML file (optional) and apply non-None overrides (from the command line)."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} not found") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {str(path)!r}: {error}") from None
    for key, value in overrides.items():
        if value is None:
            continue
        if key in _NESTED and isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}  # flags override single keys of a [table]
        else:
            values[key] = value
    try:
        return _build(ServerConfig, values, "")
    except TypeError as error:
        raise ConfigError(str(error)) from None


_TEXT_SETTINGS = (
    "model",
    "backend",
    "device",
    "dtype",
    "host",
    "value_heads",
    "preference_vectors",
    "experiment_store",
)
# Whole-number settings and their smallest allowed value.
_COUNT_SETTINGS = {
    "port": 0,
    "metrics_port": 0,
    "workers": 0,
    "max_pending": 1,
    "store_queue_size": 0,
    "max_message_bytes": 1024,
    "max_streams_per_connection": 1,
}
MAX_PORT = 65535


def check_settings(config: ServerConfig) -> None:
    """The checks that need nothing loaded: each setting's type and range (ConfigError naming it).

    The server runs them, with the checks that read files (heads, model config), before the policy
    loads: a typo then fails at once, not after the engine's start-up."""
    from alignd.backends.loading import check_backend

    for name in _TEXT_SETTINGS:
        if not isinstance(getattr(config, name), str):
            raise ConfigError(f"{name}: must be a string, got {getattr(config, name)!r}")
    for name, least in _COUNT_SETTINGS.items():
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"{name}: must be a whole number >= {least}, got {value!r}")
    for name in ("port", "metrics_port"):
        if getattr(config, name) > MAX_PORT:
            raise ConfigError(f"{name}: must be at most {MAX_PORT}, got {getattr(config, name)}")
    http = config.http
    if not isinstance(http.port, int) or isinstance(http.port, bool) or not 0 <= http.port <= MAX_PORT:
        raise ConfigError(f"http.port: must be a whole number from 0 to {MAX_PORT}, got {http.port!r}")
    if not isinstance(http.host, str):
        raise ConfigError(f"http.host: must be a string, got {http.host!r}")
    _check_vectors(config)
    _check_auth(config)
    _check_tls(config.tls)
    grace = config.grace_seconds
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace < float("inf"):
        raise ConfigError(f"grace_seconds: must be a number >= 0, got {grace!r}")
    if not isinstance(config.reward_heads, (tuple, list)) or not all(isinstance(v, str) for v in config.reward_heads):
        raise ConfigError(f"reward_heads: must be a list of strings, got {config.reward_heads!r}")
    scoring = config.scoring
    tokens = scoring.max_batch_tokens
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"scoring.max_batch_tokens: must be a whole number >= 1, got {tokens!r}")
    wait = scoring.coalesce_ms
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= MAX_COALESCE_MS:
        raise ConfigError(f"scoring.coalesce_ms: must be a number from 0 to {MAX_COALESCE_MS:g}, got {wait!r}")
    from alignd.rewardmodels.objective_tables import parse_objectives

    parse_objectives(config.objectives)
    if not isinstance(config.default_weights, dict):
        raise ConfigError(f"default_weights: must be a table, got {config.default_weights!r}")
    if not isinstance(config.experiments, (tuple, list)):
        raise ConfigError("experiments: must be a list of tables ([[experiments]])")
    try:
        check_backend(config.backend)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_vectors(config: ServerConfig) -> None:
    """The strength limit, vLLM's preset strengths within it (on the vLLM backend: other backends
    ignore them), and no steering in the defaults (a request's `preference_vectors` steers; the
    server's default sampling does not)."""
    strength = config.limits.max_vector_strength
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength < float("inf"):
        raise ConfigError(f"limits.max_vector_strength: must be a number >= 0, got {strength!r}")
    if config.backend == "vllm":
        _check_presets(config.vllm.vector_presets, strength)
    if config.default_sampling.steering:
        raise ConfigError("default_sampling.steering: unknown setting; requests steer with preference_vectors")


def _check_presets(presets: Any, strength: float) -> None:
    if not isinstance(presets, (tuple, list)) or not presets:
        raise ConfigError(f"vllm.vector_presets: must be a non-empty list of numbers, got {presets!r}")
    for i, eta in enumerate(presets):
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not abs(eta) <= strength or eta == 0:
            raise ConfigError(
                f"vllm.vector_presets[{i}]: must be a non-zero number within limits.max_vector_strength "
                f"({strength:g}), got {eta!r}"
            )


OPEN_SERVICES = ("health", "reflection")
ROLES = ("user", "admin")  # of API keys; admins may call the admin RPCs too


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_auth(config: ServerConfig) -> None:
    auth = config.auth
    if auth.anonymous_role not in ROLES:
        raise ConfigError(f"auth.anonymous_role: must be one of {ROLES}, got {auth.anonymous_role!r}")
    if not isinstance(auth.keys_file, str):
        raise ConfigError(f"auth.keys_file: must be a string, got {auth.keys_file!r}")
    if not isinstance(auth.open_services, (tuple, list)) or not set(auth.open_services) <= set(OPEN_SERVICES):
        raise ConfigError(f"auth.open_services: a list of {OPEN_SERVICES}, got {auth.open_services!r}")
    if auth.enabled is None:
        hosts = [config.host] + ([config.http.host or config.host] if config.http.enabled else [])
        exposed = [h for h in hosts if not is_loopback(h)]
        if exposed:
            raise ConfigError(
                f"auth.enabled: serving on {exposed[0]} (not a loopback address) without authentication: "
                "set [auth] enabled = true (keys from `alignd keys create`), or enabled = false to serve "
                "anyone who can reach the port"
            )


def _check_tls(tls: TLSOptions) -> None:
    for name in ("cert_file", "key_file", "client_ca_file"):
        value = getattr(tls, name)
        if not isinstance(value, str):
            raise ConfigError(f"tls.{name}: must be a string, got {value!r}")
        if value and not Path(value).is_file():
            raise ConfigError(f"tls.{name}: no file {value!r}")
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ConfigError("tls: cert_file and key_file go together")
    if tls.client_ca_file and not tls.cert_file:
        raise ConfigError("tls.client_ca_file: client certificates (mTLS) need TLS: set cert_file and key_file")


def auth_enabled(config: ServerConfig) -> bool:
    """Whether requests need a key (unset: only when serving beyond loopback, which
    `check_settings` refuses)."""
    return bool(config.auth.enabled)


def keys_file(config: ServerConfig | None = None) -> Path:
    """Where the API keys are: [auth] keys_file, else <data dir>/keys.json."""
    configured = config.auth.keys_file if config is not None else ""
    return Path(configured) if configured else data_dir() / "keys.json"


def data_dir() -> Path:
    """Where alignd keeps data it owns (the experiment store): $ALIGND_DATA, else the user's data folder."""
    configured = os.environ.get("ALIGND_DATA")
    if configured:
        return Path(configured)
    from platformdirs import user_data_dir

    return Path(user_data_dir("alignd"))


STORE_ENV = "ALIGND_EXPERIMENT_STORE"  # overrides experiment_store: keeps a database password out of files


def experiment_store_setting() -> str:
    """Where the store's location comes from, for messages: the environment or the config."""
    return STORE_ENV if STORE_ENV in os.environ else "experiment_store"


def _check_postgres_url(url: str, where: str) -> None:
    """The URL's syntax, checked before the model loads (reaching the server waits until then)."""
    try:
        from psycopg import conninfo
    except ImportError:
        raise ConfigError(f"{where}: a PostgreSQL store needs psycopg: pip install 'alignd[server]'") from None
    from alignd.server.experiments.databases import redact

    try:
        conninfo.conninfo_to_dict(url)
    except Exception as error:  # psycopg.ProgrammingError: libpq could not parse it
        problem = redact(url, " ".join(str(error).split()))
        raise ConfigError(f"{where}: not a valid PostgreSQL URL ({redact(url)}): {problem}") from None


def experiment_store_location(config: ServerConfig) -> Path | str | None:
    """The store to open: a SQLite file path, a postgresql:// URL, or None (see
    ServerConfig.experiment_store; the ALIGND_EXPERIMENT_STORE environment variable wins)."""
    setting = os.environ.get(STORE_ENV, config.experiment_store)  # set, even empty, it wins
    where = experiment_store_setting()
    if setting == "":
        if config.experiments:
            raise ConfigError(f'{where}: experiments are configured but the store is disabled ("")')
        return None
    if setting != "auto":
        if setting.startswith(("postgresql://", "postgres://")):
            _check_postgres_url(setting, where)
            return setting
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", setting):
            # Taken as a path, "mysql://host/db" would quietly become a local folder.
            scheme = setting.split("://", 1)[0]
            raise ConfigError(
                f"{where}: {scheme}:// is not a store alignd can use: give a SQLite file path or a postgresql:// URL"
            )
        return Path(setting)
    path = data_dir() / "experiments.sqlite"
    admins = auth_enabled(config) or config.auth.anonymous_role == "admin"  # CreateExperiment possible
    return path if config.experiments or admins or path.exists() else None
