"""`alignd serve | generate | score | info | experiments | feedback | keys | train | models`.

Client commands (generate, score, info) import no torch; `serve` and `models prepare` load the
heavy parts lazily. Errors a user can fix print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alignd.clients import AligndClient, ExperimentReport, Generation

DEFAULT_TARGET = "localhost:50051"
VLLM_FLAGS = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "data_parallel_size",
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "enable_prefix_caching",
    "enforce_eager",
)


def _parse_weights(pairs: Sequence[str], flag: str = "--weights") -> dict[str, float]:
    """NAME=VALUE pairs (repeated or comma-separated) of a weights-like flag."""
    weights: dict[str, float] = {}
    for item in pairs:
        for pair in item.split(","):
            name, sep, value = pair.partition("=")
            if not sep:
                raise SystemExit(f"alignd: error: {flag} expects name=value, got {pair!r}")
            try:
                weights[name.strip()] = float(value)
            except ValueError:
                raise SystemExit(f"alignd: error: {flag} {name}: {value!r} is not a number") from None
    return weights


def _parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """Strategy parameters from NAME=VALUE: JSON lists and objects, integers, numbers, else strings."""
    params: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"alignd: error: --param expects NAME=VALUE, got {pair!r}")
        if value.lstrip().startswith(("[", "{")):
            try:
                params[name.strip()] = json.loads(value)
            except json.JSONDecodeError as error:
                raise SystemExit(f"alignd: error: --param {name}: not valid JSON ({error})") from None
            continue
        for cast in (int, float, str):
            try:
                params[name.strip()] = cast(value)
                break
            except ValueError:
                continue
    return params


def _fail(message: str) -> int:
    print(f"alignd: error: {message}", file=sys.stderr)
    return 2


# -- serve ------------------------------------------------------------------------------------


def _given(**flags: Any) -> dict[str, Any] | None:
    """The flags given on the command line, as a config table's overrides (None: none given)."""
    return {name: value for name, value in flags.items() if value is not None} or None


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from alignd.config import ConfigError, load_config
    from alignd.errors import AligndError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(
            args.config,
            model=args.model,
            port=args.port,
            host=args.host,
            device=args.device,
            dtype=args.dtype,
            backend=args.backend,
            objectives=args.objectives,
            workers=args.workers,
            metrics_port=args.metrics_port,
            http={"enabled": True, "port": args.http_port} if args.http_port is not None else None,
            auth=_given(enabled=args.auth, keys_file=args.keys_file),
            tls=_given(cert_file=args.tls_cert, key_file=args.tls_key, client_ca_file=args.tls_client_ca),
            log_text=args.log_text or None,
            vllm=_given(**{name: getattr(args, name) for name in VLLM_FLAGS}),
        )
        from alignd.server.app import serve

        asyncio.run(serve(config))
    except (ConfigError, AligndError) as error:
        return _fail(str(error))
    except RuntimeError as error:  # e.g. CUDA requested without a GPU
        return _fail(str(error))
    except KeyboardInterrupt:
        pass
    return 0


# -- client commands --------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> AligndClient:
    from alignd.clients import TLS, AligndClient

    tls = None
    if args.tls or args.tls_ca or args.tls_cert or args.tls_key:
        tls = TLS(ca_file=args.tls_ca, cert_file=args.tls_cert, key_file=args.tls_key, server_name=args.tls_server_name)
    try:
        return AligndClient(args.target, timeout=args.timeout, api_key=args.api_key, tls=tls)
    except ValueError as error:  # --tls-cert without --tls-key, or the other way round
        raise SystemExit(_fail(str(error))) from None
    except OSError as error:
        raise SystemExit(_fail(f"{error.filename}: {error.strerror}")) from None


def _print_generation(out: Generation, as_json: bool) -> None:
    from dataclasses import asdict

    if as_json:
        print(json.dumps(asdict(out), indent=2))
        return
    print(out.text)
    print()
    print(f"strategy {out.strategy}  model {out.model}  finish {out.finish_reason}  request {out.request_id}")
    if out.experiment:
        print(f"experiment {out.experiment}  arm {out.arm}")
    # Proto maps carry no order: print objectives sorted so output is stable.
    print("rewards:  " + "  ".join(f"{k}={v:+.4f}" for k, v in sorted(out.rewards.items())))
    print(
        f"weighted: {out.weighted_score:+.4f}  (weights "
        + ", ".join(f"{k}={v:.2f}" for k, v in sorted(out.weights.items()))
        + ")"
    )
    for kl in out.kl:
        print(f"KL {kl.kind:<11} {kl.name:<18} {kl.nats:.4f} nats  ({kl.description})")
    if out.details:
        print("details:  " + "  ".join(f"{k}={v:g}" for k, v in sorted(out.details.items())))
    u = out.usage
    print(
        f"usage: {u.generated_tokens} generated tokens, {u.lm_forward_tokens} LM forward tokens, "
        f"{u.scorer_calls} scorer calls, {u.wall_seconds:.2f} s"
    )
    for i, c in enumerate(out.candidates):
        mark = "*" if c.selected else " "
        print(f" {mark}[{i}] {c.weighted_score:+.4f} {c.text[:70]!r}")


def cmd_generate(args: argparse.Namespace) -> int:
    from alignd.clients import AligndClientError, Generation

    options = dict(
        weights=_parse_weights(args.weights),
        preference_vectors=_parse_weights(args.vectors, "--vectors"),
        system_prompt=args.system or "",
        raw_prompt=args.raw,
        return_candidates=args.candidates,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        max_tokens=args.max_tokens,
        stop=args.stop or None,
        seed=args.seed,
        experiment=args.experiment,
        subject=args.subject,
    )
    options.update(_parse_params(args.param))
    if args.n is not None:
        options["n"] = args.n
    try:
        with _client(args) as client:
            if args.stream:
                for event in client.generate_stream(args.prompt, strategy=args.strategy, **options):
                    if isinstance(event, Generation):
                        _print_generation(event, args.json)
                    else:
                        weights = " ".join(f"{k}={v:.2f}" for k, v in sorted(event.weights.items()))
                        print(
                            f"[{event.elapsed_seconds:6.2f}s] {event.phase}: {event.message}"
                            + (
                                f"  [w {weights}; worst {event.worst_objective} {event.worst_value:+.2f}]"
                                if event.weights
                                else ""
                            ),
                            file=sys.stderr,
                        )
            else:
                _print_generation(client.generate(args.prompt, strategy=args.strategy, **options), args.json)
    except AligndClientError as error:
        return _fail(str(error))
    except TypeError as error:
        return _fail(str(error))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from alignd.clients import AligndClientError

    try:
        with _client(args) as client:
            scored = client.score(args.prompt, args.responses, _parse_weights(args.weights))
    except AligndClientError as error:
        return _fail(str(error))
    for text, s in zip(args.responses, scored):
        rewards = "  ".join(f"{k}={v:+.4f}" for k, v in sorted(s.rewards.items()))
        print(f"{s.weighted_score:+.4f}  {rewards}  {text[:60]!r}")
    return 0


def _json_ready(value: Any) -> Any:
    """Non-finite floats as the strings protobuf's JSON uses ("Infinity", "NaN"): strict JSON has none."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def cmd_info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from alignd.clients import AligndClientError

    try:
        with _client(args) as client:
            info = client.server_info()
    except AligndClientError as error:
        return _fail(str(error))
    print(json.dumps(_json_ready(asdict(info)), indent=2))
    return 0


# -- experiments ------------------------------------------------------------------------------


def _interval(low: float, high: float) -> str:
    return "[n/a]" if math.isnan(low) or math.isnan(high) else f"[{low:+.3f}, {high:+.3f}]"


def _estimate(mean: float, low: float, high: float) -> str:
    return "n/a" if math.isnan(mean) else f"{mean:+.3f} {_interval(low, high)}"


def print_report(report: ExperimentReport) -> None:
    """The report as text tables: arms, rewards per objective, comparisons with the baseline."""
    print(f"experiment {report.name}: {report.requests} requests, {report.feedback} feedback records")
    print()
    print(
        f"{'arm':<14}{'strategy':<18}{'split':>6}{'requests':>10}{'subjects':>10}  {'weighted score [95% CI]':<28}"
        f"{'latency p50/p95 s':>18}{'tokens':>8}"
    )
    for a in report.arms:
        w = a.weighted_score
        print(
            f"{a.name:<14}{a.strategy:<18}{a.split:>6.2f}{a.requests:>10}{a.subjects:>10}  "
            f"{_estimate(w.mean, w.low, w.high):<28}{a.latency_p50_seconds:>8.2f} /{a.latency_p95_seconds:>7.2f}"
            f"{a.generated_tokens.mean:>8.1f}"
        )
    objectives = sorted({o for a in report.arms for o in a.rewards})
    if objectives:
        print()
        print(f"{'mean reward':<14}" + "".join(f"{o:<28}" for o in objectives))
        for a in report.arms:
            print(
                f"{a.name:<14}"
                + "".join(
                    f"{_estimate(a.rewards[o].mean, a.rewards[o].low, a.rewards[o].high):<28}"
                    if o in a.rewards
                    else f"{'n/a':<28}"
                    for o in objectives
                )
            )
    if report.feedback:
        print()
        print(f"{'feedback':<14}{'thumbs up (Wilson 95%)':<34}{'rating [95% CI]':<28}{'preference wins (Wilson 95%)'}")
        for a in report.arms:
            t, r, p = a.thumbs_up, a.rating, a.preference_wins
            thumbs = f"{t.successes}/{t.trials} {_interval(t.low, t.high)}" if t.trials else "-"
            prefs = f"{p.successes}/{p.trials} {_interval(p.low, p.high)}" if p.trials else "-"
            rating = _estimate(r.mean, r.low, r.high) if r.count else "-"
            print(f"{a.name:<14}{thumbs:<34}{rating:<28}{prefs}")
    if report.comparisons:
        print()
        print("each arm minus the baseline; two-sided p, not corrected for multiple comparisons")
        print(f"{'arm':<14}{'metric':<26}{'test':<18}{'difference [95% CI]':<30}{'p':>8}")
        for c in report.comparisons:
            mark = " *" if c.significant else ""
            p_value = "n/a" if math.isnan(c.p_value) else f"{c.p_value:.3g}"
            print(
                f"{c.arm:<14}{c.metric:<26}{c.test:<18}{_estimate(c.difference, c.low, c.high):<30}{p_value:>8}{mark}"
            )


def cmd_experiments(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from alignd.clients import AligndClientError
    from alignd.clients.client import report_from
    from alignd.server.request_fields import requested_strategy

    try:
        with _client(args) as client:
            if args.action == "list":
                for e in client.experiments():
                    arms = ", ".join(f"{a.name} ({requested_strategy(a.request)} {a.split:.2f})" for a in e.arms)
                    print(f"{e.name:<24} {e.source:<7} {arms}")
                return 0
            if args.action == "create":
                return _create_experiments(client, args.file)
            message = client.report_message(args.name)
    except AligndClientError as error:
        return _fail(str(error))
    if args.json:
        print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2))
    else:
        print_report(report_from(message))
    if args.plot:
        from alignd.clients.plot import plot_report

        try:
            print(f"plot written to {plot_report(report_from(message), args.plot)}", file=sys.stderr)
        except (RuntimeError, OSError, ValueError) as error:
            return _fail(f"--plot: {error}")
    return 0


def _create_experiments(client: AligndClient, path: str) -> int:
    """Create every [[experiments]] table of a TOML file (the server config's format)."""
    import tomllib

    from alignd.errors import InvalidArgument
    from alignd.server.experiments.definitions import experiment_from_config

    try:
        with open(path, "rb") as file:
            tables = tomllib.load(file).get("experiments", [])
    except (OSError, tomllib.TOMLDecodeError) as error:
        return _fail(f"{path}: {error}")
    if not tables:
        return _fail(f"{path}: no [[experiments]] tables")
    for i, table in enumerate(tables):
        try:
            created = client.create_experiment_message(experiment_from_config(table))
        except InvalidArgument as error:
            return _fail(f"{path}: experiments[{i}].{error}")
        print(f"created {created.name} with arms {', '.join(a.name for a in created.arms)}")
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from alignd.clients import AligndClientError

    options = {
        "thumbs_up": True if args.up else False if args.down else None,
        "rating": args.rating,
        "preferred_over": args.preferred_over,
    }
    try:
        with _client(args) as client:
            replaced = client.feedback(args.request_id, key=args.key, **options)
    except AligndClientError as error:
        return _fail(str(error))
    print("replaced earlier feedback" if replaced else "recorded")
    return 0


# -- models -----------------------------------------------------------------------------------


def cmd_keys(args: argparse.Namespace) -> int:
    from alignd.config import ConfigError, keys_file, load_config
    from alignd.server.auth.keys import KeysFile, KeysFileError
    from alignd.server.auth.quotas import Quota, QuotaError

    try:
        path = args.keys_file or keys_file(load_config(args.config) if args.config else None)
        keys = KeysFile(path)
        if args.action == "create":
            try:
                quota = Quota.from_dict({name: getattr(args, name) or 0 for name in QUOTA_FLAGS})
            except QuotaError as error:  # named as the flag that set it
                field, _, problem = str(error).partition(": ")
                return _fail(f"--{field.removeprefix('quota.').replace('_', '-')}: {problem}")
            secret, record = keys.create(args.role, args.name or "", quota)
            print(secret)
            print(
                f"key {record.id} ({record.name}, role {record.role}, {quota.describe()}) added to {path}; "
                "the secret above is shown only now",
                file=sys.stderr,
            )
        elif args.action == "revoke":
            record = keys.revoke(args.key)
            print(f"key {record.id} ({record.name}) revoked at {record.revoked}; servers drop it within a second")
        else:
            for r in keys.read():
                state = f"revoked {r.revoked}" if r.revoked else "valid"
                print(f"{r.id}  {r.name:<20} {r.role:<6} {state:<32} {r.quota.describe()}")
    except (ConfigError, KeysFileError, OSError) as error:
        return _fail(str(error))
    return 0


QUOTA_FLAGS = ("concurrent", "requests_per_minute", "tokens_per_minute", "max_n", "max_tokens")


def cmd_models(args: argparse.Namespace) -> int:
    from alignd import models
    from alignd.errors import AligndError

    if args.action == "list":
        for name, description, prepared in models.list_models():
            state = "prepared" if prepared else "not prepared"
            print(f"{name:<24} {state:<13} {description}")
        print(f"cache: {models.cache_dir()}")
        return 0
    try:
        path = models.prepare(args.name, force=args.force)
    except AligndError as error:
        return _fail(str(error))
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from alignd import __version__

    parser = argparse.ArgumentParser(prog="alignd", description="Inference-time alignment and decoding server.")
    parser.add_argument("--version", action="version", version=f"alignd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="start the gRPC server")
    serve.add_argument("--config", help="TOML config file (docs/configuration.md)")
    serve.add_argument("--model", help="registered model name or checkpoint folder")
    serve.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks a free one)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto: CUDA when present)")
    serve.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights' dtype; auto: bfloat16 on CUDA and on CPUs with native bf16, else float32",
    )
    serve.add_argument("--backend", choices=["transformers", "vllm"])
    serve.add_argument("--objectives", nargs="+", help="objective names to serve")
    serve.add_argument("--workers", type=int, help="decode worker threads")
    serve.add_argument("--metrics-port", type=int, help="Prometheus metrics HTTP port (0: off)")
    serve.add_argument(
        "--http-port", type=int, help="serve the OpenAI-compatible HTTP API on this port too (0 picks a free one)"
    )
    security = serve.add_argument_group("security (also the [auth] and [tls] tables of the config)")
    security.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="require API keys (`alignd keys create`); --no-auth serves anyone who reaches the port",
    )
    security.add_argument("--keys-file", help="API keys file (default <data dir>/keys.json)")
    security.add_argument("--tls-cert", help="server certificate chain (PEM); turns TLS on with --tls-key")
    security.add_argument("--tls-key", help="server private key (PEM)")
    security.add_argument("--tls-client-ca", help="require client certificates signed by this CA (mTLS)")
    security.add_argument(
        "--log-text", action="store_true", help="log prompts and responses (debug; off: logs hold no request text)"
    )
    engine = serve.add_argument_group("vLLM engine (with --backend vllm; also the [vllm] table of the config)")
    engine.add_argument("--tensor-parallel-size", type=int)
    engine.add_argument("--pipeline-parallel-size", type=int)
    engine.add_argument("--data-parallel-size", type=int)
    engine.add_argument(
        "--gpu-memory-utilization",
        type=float,
        help="share of GPU memory (on CPUs: of RAM) for weights and KV cache; default 0.25 on CPUs",
    )
    engine.add_argument("--max-model-len", type=int)
    engine.add_argument("--max-num-seqs", type=int)
    engine.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None)
    engine.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None)
    serve.set_defaults(func=cmd_serve)

    def connection_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--target", default=DEFAULT_TARGET, help=f"server address (default {DEFAULT_TARGET})")
        p.add_argument("--timeout", type=float, default=None, help="seconds")
        p.add_argument("--api-key", help="API key (default: $ALIGND_API_KEY)")
        p.add_argument("--tls", action="store_true", help="connect over TLS (the system's CAs)")
        p.add_argument("--tls-ca", help="CA certificate (PEM) that signed the server's; implies --tls")
        p.add_argument("--tls-cert", help="client certificate (PEM), for servers that require one (mTLS)")
        p.add_argument("--tls-key", help="client private key (PEM)")
        p.add_argument("--tls-server-name", help="name the server's certificate must carry, if not the target's host")

    def client_options(p: argparse.ArgumentParser) -> None:
        connection_options(p)
        p.add_argument(
            "--weights", action="append", default=[], metavar="NAME=W[,NAME=W]", help="preference weights per objective"
        )

    generate = commands.add_parser("generate", help="decode a response with a strategy")
    generate.add_argument("prompt")
    client_options(generate)
    generate.add_argument(
        "--strategy", default="", help="decoding strategy (default: the server's, sample; with --experiment: the arm's)"
    )
    generate.add_argument(
        "--vectors",
        action="append",
        default=[],
        metavar="NAME=ETA[,NAME=ETA]",
        help="preference-vector strengths: steer the model before the strategy runs",
    )
    generate.add_argument("--experiment", default="", help="A/B experiment: its arm chooses the strategy")
    generate.add_argument("--subject", default="", help="stable user id (with --experiment)")
    generate.add_argument("--n", type=int, help="candidates (best_of_n)")
    generate.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="strategy parameter, e.g. --param num_candidates=8 --param mode=tokenwise",
    )
    generate.add_argument("--system", help="system prompt")
    generate.add_argument("--raw", action="store_true", help="no chat template")
    generate.add_argument("--max-tokens", type=int)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    generate.add_argument("--seed", type=int)
    generate.add_argument("--candidates", action="store_true", help="show all candidates")
    generate.add_argument("--stream", action="store_true", help="print progress events")
    generate.add_argument("--json", action="store_true", help="print the result as JSON")
    generate.set_defaults(func=cmd_generate)

    score = commands.add_parser("score", help="score responses to a prompt")
    score.add_argument("prompt")
    score.add_argument("responses", nargs="+")
    client_options(score)
    score.set_defaults(func=cmd_score)

    info = commands.add_parser("info", help="show the server's model, objectives, strategies and limits")
    connection_options(info)
    info.set_defaults(func=cmd_info)

    experiments = commands.add_parser("experiments", help="A/B experiments: list, create, report")
    experiment_actions = experiments.add_subparsers(dest="action", required=True)
    for name, text in (
        ("list", "experiments the server serves"),
        ("create", "create the [[experiments]] of a TOML file (needs an admin key)"),
        ("report", "per-arm rewards, latency and feedback with 95%% intervals, and tests"),
    ):
        action = experiment_actions.add_parser(name, help=text)
        connection_options(action)
        if name == "create":
            action.add_argument("file", help="TOML file with [[experiments]] tables")
        if name == "report":
            action.add_argument("name")
            action.add_argument("--plot", metavar="OUT.png", help="also draw the arms with their intervals")
            action.add_argument("--json", action="store_true", help="print the report message as JSON")
    experiments.set_defaults(func=cmd_experiments)

    feedback = commands.add_parser("feedback", help="feedback on an experiment request")
    feedback.add_argument("request_id")
    kind = feedback.add_mutually_exclusive_group(required=True)
    kind.add_argument("--up", action="store_true", help="thumbs up")
    kind.add_argument("--down", action="store_true", help="thumbs down")
    kind.add_argument("--rating", type=float, help="a scalar rating")
    kind.add_argument("--preferred-over", metavar="REQUEST_ID", help="this response beat that one")
    feedback.add_argument("--key", default="", help="idempotency key, e.g. a rater id (default: one per kind)")
    connection_options(feedback)
    feedback.set_defaults(func=cmd_feedback)

    keys = commands.add_parser("keys", help="API keys: create, list, revoke (the server reloads the file)")
    key_actions = keys.add_subparsers(dest="action", required=True)
    for name, text in (
        ("create", "make a key; prints its secret once (stored only as a salted scrypt hash)"),
        ("list", "the keys, their roles, quotas and whether revoked"),
        ("revoke", "revoke a key by id or name; servers stop accepting it within a second"),
    ):
        action = key_actions.add_parser(name, help=text)
        action.add_argument(
            "--keys-file", help="the keys file (default: the config's [auth] keys_file, else <data dir>/keys.json)"
        )
        action.add_argument("--config", help="server config whose [auth] keys_file to use")
        if name == "create":
            action.add_argument("--role", choices=["user", "admin"], default="user")
            action.add_argument("--name", help="a label for the key (default: its id)")
            quota = action.add_argument_group("quota (0 or unset: no limit)")
            quota.add_argument("--concurrent", type=int, metavar="N", help="requests in flight at once")
            quota.add_argument("--requests-per-minute", type=int, metavar="N")
            quota.add_argument("--tokens-per-minute", type=int, metavar="N", help="generated tokens, all candidates")
            quota.add_argument("--max-n", type=int, metavar="N", help="candidates (sequences) per request")
            quota.add_argument("--max-tokens", type=int, metavar="N", help="max_tokens per request")
        if name == "revoke":
            action.add_argument("key", help="the key's id (or its name)")
    keys.set_defaults(func=cmd_keys)

    from alignd.training.cli import add_train_command

    add_train_command(commands)

    model_cmd = commands.add_parser("models", help="list or prepare registered models")
    model_actions = model_cmd.add_subparsers(dest="action", required=True)
    model_actions.add_parser("list", help="registered models and whether they are prepared")
    prepare = model_actions.add_parser("prepare", help="convert a registered model once into the cache")
    prepare.add_argument("name", nargs="?", default="smollm2-135m-instruct")
    prepare.add_argument("--force", action="store_true", help="convert again")
    model_cmd.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
