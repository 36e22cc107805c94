"""Python clients for alignd: `AligndClient` (blocking) and `AsyncAligndClient` (asyncio).

Imports only grpc and the generated stubs, never torch::

    from alignd.clients import AligndClient
    with AligndClient("localhost:50051") as client:
        out = client.generate("How do I bake bread?", strategy="best_of_n", n=8,
                              weights={"relevance": 0.7, "harmlessness": 0.3})
        print(out.text, out.rewards, out.kl)

Strategy parameters are keyword arguments (``n=8``); sampling settings have their own keywords.
Without ``strategy`` the server decodes with its default (``sample``). Server errors raise
`AligndClientError` with the gRPC status code and the server's message. ``client.server_info()``
returns a `ServerInfo` (model, objectives, strategies with their parameters, limits).

A/B experiments: ``client.generate(prompt, experiment="bon-vs-sample", subject="user-42")`` is
served by the subject's arm (``out.arm``), which chooses the strategy (name none);
``client.feedback(out.request_id, thumbs_up=True)``; ``client.report("bon-vs-sample")`` returns
an `ExperimentReport`.

A server that requires API keys: ``AligndClient(target, api_key="alignd-...")`` (default: the
``ALIGND_API_KEY`` environment variable). TLS: ``tls=True`` trusts the system's CAs,
``tls=TLS(ca_file="ca.pem")`` a CA of your own, and with ``cert_file``/``key_file`` the client
presents its own certificate (mutual TLS).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from alignd.clients.types import (
    KL,
    ArmReport,
    CandidateResult,
    Comparison,
    ExperimentReport,
    Generation,
    HeadInfo,
    MeanEstimate,
    ObjectiveInfo,
    ParameterInfo,
    PreferenceVectorInfo,
    Progress,
    RateEstimate,
    SamplingSettings,
    Scored,
    ServerInfo,
    ServerLimits,
    StrategyInfo,
    Usage,
)
from alignd.v1 import alignd_pb2 as pb
from alignd.v1 import alignd_pb2_grpc as pb_grpc

_KL_KIND = {pb.KLEstimate.ESTIMATE: "estimate", pb.KLEstimate.UPPER_BOUND: "upper_bound", pb.KLEstimate.EXACT: "exact"}
_SAMPLING_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "stop", "seed")


API_KEY_ENV = "ALIGND_API_KEY"


class AligndClientError(Exception):
    """A request the server refused or failed: `code` is the grpc.StatusCode; `retry_after`
    (seconds) when the server said waiting will help (a key's rate quota)."""

    def __init__(self, code: grpc.StatusCode, details: str, retry_after: float | None = None) -> None:
        self.code = code
        self.details = details
        self.retry_after = retry_after
        super().__init__(f"{code.name}: {details}")


@dataclasses.dataclass(frozen=True)
class TLS:
    """How to reach a server over TLS. `ca_file`: PEM of the CA that signed the server's
    certificate (None: the system's); `cert_file`/`key_file`: this client's certificate, for a
    server that requires one (mTLS); `server_name`: the name the server's certificate must carry,
    when it differs from the target's host."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("tls: cert_file and key_file go together")
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))

    def options(self) -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def _open_channel(target: str, tls: TLS | bool | None, channels: Any) -> Any:
    """A channel to `target` from `channels` (the `grpc` or the `grpc.aio` module: both name
    their constructors alike), plaintext or over TLS."""
    if tls is None or tls is False:
        return channels.insecure_channel(target)
    settings = TLS() if tls is True else tls
    return channels.secure_channel(target, settings.credentials(), options=settings.options())


def _key_metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    """The metadata every call sends: the API key (default: $ALIGND_API_KEY), if any."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
    return (("authorization", f"Bearer {key}"),) if key else None


def build_request(
    prompt: str,
    *,
    strategy: str = "",
    weights: Mapping[str, float] | None = None,
    system_prompt: str = "",
    raw_prompt: bool = False,
    return_candidates: bool = False,
    request_id: str = "",
    experiment: str = "",
    subject: str = "",
    history: Sequence[tuple[str, str]] = (),
    preference_vectors: Mapping[str, float] | None = None,
    **options: Any,
) -> pb.GenerateRequest:
    """A GenerateRequest from keyword arguments: sampling keywords go to `sampling`, the rest are
    the strategy's parameters (its message in the `params` oneof). An empty strategy leaves the
    choice to the server: its default, or with `experiment` the subject's arm. `history`: the
    conversation's earlier (role, content) turns, oldest first, that `prompt` follows.
    `preference_vectors`: strength eta per vector name (the server's `preference_vectors` in
    GetServerInfo): the model is steered to theta_base + sum eta phi before the strategy runs."""
    sampling = {k: options.pop(k) for k in _SAMPLING_FIELDS if options.get(k) is not None}
    for k in _SAMPLING_FIELDS:
        options.pop(k, None)
    request = pb.GenerateRequest(
        prompt=prompt,
        strategy=strategy,
        weights=dict(weights or {}),
        system_prompt=system_prompt,
        raw_prompt=raw_prompt,
        return_candidates=return_candidates,
        request_id=request_id,
        experiment=experiment,
        subject=subject,
        sampling=pb.SamplingParams(**sampling),
        history=[pb.ChatTurn(role=role, content=content) for role, content in history],
        preference_vectors=dict(preference_vectors or {}),
    )
    params = {k: v for k, v in options.items() if v is not None}
    oneof_fields = {f.name for f in pb.GenerateRequest.DESCRIPTOR.oneofs_by_name["params"].fields}
    if strategy in oneof_fields:
        message = getattr(request, strategy)
        try:
            # The constructor fills repeated and map fields too (lists and dicts).
            message.CopyFrom(type(message)(**params))
        except ValueError as error:
            raise TypeError(f"strategy {strategy!r}: {error}") from None
    elif params and not strategy:
        raise TypeError(f"parameters {sorted(params)} given without a strategy: name the strategy they are for")
    elif params:
        raise TypeError(f"parameters {sorted(params)} given, but strategy {strategy!r} has no parameter message")
    return request


def _candidate(c: pb.Candidate) -> CandidateResult:
    return CandidateResult(c.text, dict(c.rewards), c.weighted_score, c.logprob, c.finish_reason, c.selected)


def generation_from(message: pb.GenerateResponse) -> Generation:
    u = message.usage
    return Generation(
        request_id=message.request_id,
        strategy=message.strategy,
        model=message.model,
        text=message.text,
        finish_reason=message.finish_reason,
        rewards=dict(message.rewards),
        weighted_score=message.weighted_score,
        weights=dict(message.weights),
        kl=[KL(k.name, _KL_KIND.get(k.kind, "unspecified"), k.nats, k.description) for k in message.kl],
        usage=Usage(
            u.prompt_tokens,
            u.generated_tokens,
            u.lm_forward_tokens,
            u.scorer_calls,
            u.wall_seconds,
            dict(u.phase_seconds),
            u.scored_texts,
        ),
        token_ids=list(message.token_ids),
        candidates=[_candidate(c) for c in message.candidates],
        details=dict(message.details),
        experiment=message.experiment,
        arm=message.arm,
        preference_vectors=dict(message.preference_vectors),
    )


def progress_from(message: pb.Progress) -> Progress:
    return Progress(
        message.phase,
        message.step,
        message.message,
        message.elapsed_seconds,
        [_candidate(c) for c in message.candidates],
        dict(message.weights),
        message.worst_objective,
        message.worst_value,
        list(message.instructions),
        message.text_delta,
    )


def event_from(event: pb.GenerateEvent) -> Progress | Generation:
    """A stream event: progress while decoding, the Generation last."""
    return progress_from(event.progress) if event.HasField("progress") else generation_from(event.result)


def _score_request(prompt: str, responses: Sequence[str], weights: Mapping[str, float] | None) -> pb.ScoreRequest:
    return pb.ScoreRequest(prompt=prompt, responses=list(responses), weights=dict(weights or {}))


def _scored(response: pb.ScoreResponse) -> list[Scored]:
    return [Scored(dict(s.rewards), s.weighted_score) for s in response.scores]


def feedback_request(
    request_id: str,
    *,
    thumbs_up: bool | None = None,
    rating: float | None = None,
    preferred_over: str | None = None,
    key: str = "",
) -> pb.FeedbackRequest:
    """Exactly one of thumbs_up, rating, preferred_over (another request id of the experiment)."""
    given: dict[str, Any] = {
        k: v
        for k, v in (("thumbs_up", thumbs_up), ("rating", rating), ("preferred_over", preferred_over))
        if v is not None
    }
    if len(given) != 1:
        raise TypeError(f"feedback takes exactly one of thumbs_up, rating, preferred_over; got {sorted(given)}")
    return pb.FeedbackRequest(request_id=request_id, key=key, **given)


def experiment_message(name: str, arms: Sequence[Mapping[str, Any]], description: str = "") -> pb.Experiment:
    """An experiment from plain arms: each a dict with `name`, `split`, `strategy` and the same
    keywords `generate` takes (strategy parameters, `weights`, sampling, `system_prompt`)."""
    message = pb.Experiment(name=name, description=description)
    for arm in arms:
        options = dict(arm)
        arm_name, split = options.pop("name", ""), options.pop("split", 0.0)
        options["strategy"] = options.get("strategy") or ""
        message.arms.append(pb.Arm(name=arm_name, split=split, request=build_request("", **options)))
    return message


def _mean(m: pb.MeanEstimate) -> MeanEstimate:
    return MeanEstimate(m.mean, m.low, m.high, m.count)


def _rate(r: pb.RateEstimate) -> RateEstimate:
    return RateEstimate(r.successes, r.trials, r.rate, r.low, r.high)


def report_from(message: pb.ExperimentReport) -> ExperimentReport:
    return ExperimentReport(
        name=message.experiment.name,
        arms=[
            ArmReport(
                a.name,
                a.strategy,
                a.split,
                a.requests,
                a.subjects,
                {k: _mean(v) for k, v in sorted(a.rewards.items())},
                _mean(a.weighted_score),
                a.latency_p50_seconds,
                a.latency_p95_seconds,
                _mean(a.generated_tokens),
                _rate(a.thumbs_up),
                _mean(a.rating),
                _rate(a.preference_wins),
            )
            for a in message.arms
        ],
        comparisons=[
            Comparison(c.arm, c.baseline, c.metric, c.test, c.difference, c.low, c.high, c.p_value, c.significant)
            for c in message.comparisons
        ],
        requests=message.requests,
        feedback=message.feedback,
        generated_unix=message.generated_unix,
    )


def _sampling_settings(message: pb.SamplingParams) -> SamplingSettings:
    """Only the fields the server set (proto3 `optional`): unset ones stay None."""

    def given(name: str) -> Any:
        return getattr(message, name) if message.HasField(name) else None

    return SamplingSettings(
        temperature=given("temperature"),
        top_p=given("top_p"),
        top_k=given("top_k"),
        max_tokens=given("max_tokens"),
        stop=list(message.stop),
        seed=given("seed"),
    )


def _parameter(p: pb.ParameterInfo) -> ParameterInfo:
    return ParameterInfo(
        name=p.name,
        type=p.type,
        default_value=p.default_value,
        description=p.description,
        min_value=p.min_value if p.HasField("min_value") else None,
        max_value=p.max_value if p.HasField("max_value") else None,
        choices=list(p.choices),
    )


def server_info_from(message: pb.ServerInfo) -> ServerInfo:
    return ServerInfo(
        version=message.version,
        model=message.model,
        backend=message.backend,
        device=message.device,
        objectives=[
            ObjectiveInfo(
                name=o.name,
                description=o.description,
                min_value=o.min_value,
                max_value=o.max_value,
                higher_is_better=o.higher_is_better,
                default_weight=o.default_weight,
                value_sources=list(o.value_sources),
                auto_value_source=o.auto_value_source,
                value_source_pair_accuracy=dict(sorted(o.value_source_pair_accuracy.items())),
                source=o.source,
            )
            for o in message.objectives
        ],
        strategies=[
            StrategyInfo(
                name=s.name,
                description=s.description,
                parameters=[_parameter(p) for p in s.parameters],
                requires=list(s.requires),
                sampling_defaults=_sampling_settings(s.sampling_defaults),
            )
            for s in message.strategies
        ],
        limits=ServerLimits(**{f.name: getattr(message.limits, f.name) for f in dataclasses.fields(ServerLimits)}),
        default_sampling=_sampling_settings(message.default_sampling),
        capabilities=list(message.capabilities),
        heads=[
            HeadInfo(
                kind=h.kind,
                path=h.path,
                base_model=h.base_model,
                objectives=list(h.objectives),
                data_hash=h.data_hash,
                metrics=dict(sorted(h.metrics.items())),
            )
            for h in message.heads
        ],
        preference_vectors=[
            PreferenceVectorInfo(
                name=v.name,
                objective=v.objective,
                base_model=v.base_model,
                rank=v.rank,
                target_modules=list(v.target_modules),
                data_hash=v.data_hash,
                shift=dict(sorted(v.shift.items())),
                presets=list(v.presets),
            )
            for v in message.preference_vectors
        ],
    )


def _error(error: grpc.RpcError) -> AligndClientError:
    retry_after = None
    trailer = getattr(error, "trailing_metadata", None)
    for key, value in (trailer() if trailer else None) or ():
        if key == "retry-after-ms":
            retry_after = int(value) / 1000
    return AligndClientError(error.code(), error.details() or "", retry_after)


class AligndClient:
    """Blocking client. `timeout` (seconds) applies to every call unless overridden; `api_key`
    and `tls` as the module says."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = None,
        channel: grpc.Channel | None = None,
        api_key: str | None = None,
        tls: TLS | bool | None = None,
    ) -> None:
        self._channel = channel or _open_channel(target, tls, grpc)
        self._metadata = _key_metadata(api_key)
        self._stub = pb_grpc.AligndStub(self._channel)
        self.timeout = timeout

    def __enter__(self) -> AligndClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def generate(self, prompt: str, *, strategy: str = "", timeout: float | None = None, **options: Any) -> Generation:
        """Decode with `strategy` ("": the server's default, or the arm's with `experiment`);
        `options` are `build_request`'s keywords (sampling, strategy parameters, weights, ...)."""
        request = build_request(prompt, strategy=strategy, **options)
        return generation_from(self._call(self._stub.Generate, request, timeout))

    def generate_stream(
        self, prompt: str, *, strategy: str = "", timeout: float | None = None, **options: Any
    ) -> Iterator[Progress | Generation]:
        """Progress events as they happen, then the final Generation."""
        try:
            for event in self._stub.GenerateStream(
                build_request(prompt, strategy=strategy, **options),
                timeout=timeout or self.timeout,
                metadata=self._metadata,
            ):
                yield event_from(event)
        except grpc.RpcError as error:
            raise _error(error) from None

    def score(
        self,
        prompt: str,
        responses: Sequence[str],
        weights: Mapping[str, float] | None = None,
        *,
        timeout: float | None = None,
    ) -> list[Scored]:
        return _scored(self._call(self._stub.Score, _score_request(prompt, responses, weights), timeout))

    def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        return server_info_from(self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout))

    def feedback(
        self,
        request_id: str,
        *,
        thumbs_up: bool | None = None,
        rating: float | None = None,
        preferred_over: str | None = None,
        key: str = "",
        timeout: float | None = None,
    ) -> bool:
        """Feedback on an experiment request; True when it replaced earlier feedback (same key)."""
        message = feedback_request(
            request_id, thumbs_up=thumbs_up, rating=rating, preferred_over=preferred_over, key=key
        )
        return self._call(self._stub.RecordFeedback, message, timeout).replaced

    def report(self, name: str, *, timeout: float | None = None) -> ExperimentReport:
        return report_from(self.report_message(name, timeout=timeout))

    def report_message(self, name: str, *, timeout: float | None = None) -> pb.ExperimentReport:
        """The report as the wire message (for JSON output)."""
        return self._call(self._stub.GetExperimentReport, pb.ExperimentReportRequest(name=name), timeout)

    def experiments(self, *, timeout: float | None = None) -> list[pb.Experiment]:
        return list(self._call(self._stub.ListExperiments, pb.ListExperimentsRequest(), timeout).experiments)

    def create_experiment(
        self, name: str, arms: Sequence[Mapping[str, Any]], *, description: str = "", timeout: float | None = None
    ) -> pb.Experiment:
        """Admin RPC (an admin key). See `experiment_message` for `arms`."""
        return self.create_experiment_message(experiment_message(name, arms, description), timeout=timeout)

    def create_experiment_message(self, message: pb.Experiment, *, timeout: float | None = None) -> pb.Experiment:
        return self._call(self._stub.CreateExperiment, message, timeout)

    def _call(self, method: Callable[..., Any], message: Message, timeout: float | None) -> Any:
        try:
            return method(message, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _error(error) from None


class AsyncAligndClient:
    """asyncio client with the same methods as AligndClient, awaited."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float | None = None,
        api_key: str | None = None,
        tls: TLS | bool | None = None,
    ) -> None:
        self._channel = _open_channel(target, tls, grpc.aio)
        self._metadata = _key_metadata(api_key)
        self._stub = pb_grpc.AligndStub(self._channel)
        self.timeout = timeout

    async def __aenter__(self) -> AsyncAligndClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def generate(
        self, prompt: str, *, strategy: str = "", timeout: float | None = None, **options: Any
    ) -> Generation:
        request = build_request(prompt, strategy=strategy, **options)
        return generation_from(await self._call(self._stub.Generate, request, timeout))

    async def generate_stream(
        self, prompt: str, *, strategy: str = "", timeout: float | None = None, **options: Any
    ) -> AsyncIterator[Progress | Generation]:
        try:
            async for event in self._stub.GenerateStream(
                build_request(prompt, strategy=strategy, **options),
                timeout=timeout or self.timeout,
                metadata=self._metadata,
            ):
                yield event_from(event)
        except grpc.RpcError as error:
            raise _error(error) from None

    async def score(
        self,
        prompt: str,
        responses: Sequence[str],
        weights: Mapping[str, float] | None = None,
        *,
        timeout: float | None = None,
    ) -> list[Scored]:
        return _scored(await self._call(self._stub.Score, _score_request(prompt, responses, weights), timeout))

    async def server_info(self, *, timeout: float | None = None) -> ServerInfo:
        return server_info_from(await self._call(self._stub.GetServerInfo, pb.GetServerInfoRequest(), timeout))

    async def feedback(
        self,
        request_id: str,
        *,
        thumbs_up: bool | None = None,
        rating: float | None = None,
        preferred_over: str | None = None,
        key: str = "",
        timeout: float | None = None,
    ) -> bool:
        """Feedback on an experiment request; True when it replaced earlier feedback (same key)."""
        message = feedback_request(
            request_id, thumbs_up=thumbs_up, rating=rating, preferred_over=preferred_over, key=key
        )
        return (await self._call(self._stub.RecordFeedback, message, timeout)).replaced

    async def report(self, name: str, *, timeout: float | None = None) -> ExperimentReport:
        return report_from(await self.report_message(name, timeout=timeout))

    async def report_message(self, name: str, *, timeout: float | None = None) -> pb.ExperimentReport:
        """The report as the wire message (for JSON output)."""
        return await self._call(self._stub.GetExperimentReport, pb.ExperimentReportRequest(name=name), timeout)

    async def experiments(self, *, timeout: float | None = None) -> list[pb.Experiment]:
        return list((await self._call(self._stub.ListExperiments, pb.ListExperimentsRequest(), timeout)).experiments)

    async def create_experiment(
        self, name: str, arms: Sequence[Mapping[str, Any]], *, description: str = "", timeout: float | None = None
    ) -> pb.Experiment:
        """Admin RPC (an admin key). See `experiment_message` for `arms`."""
        return await self.create_experiment_message(experiment_message(name, arms, description), timeout=timeout)

    async def create_experiment_message(self, message: pb.Experiment, *, timeout: float | None = None) -> pb.Experiment:
        return await self._call(self._stub.CreateExperiment, message, timeout)

    async def _call(self, method: Callable[..., Any], message: Message, timeout: float | None) -> Any:
        try:
            return await method(message, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise _error(error) from None
