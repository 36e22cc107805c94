"""What every transport serves, once: admission control, metrics, experiment routing, request
validation, decoding in worker threads, the experiment store. The gRPC service and the HTTP API
only translate their wire format to these calls and alignd.errors to their status codes.

Validation runs on the event loop and decoding in worker threads, so health checks and server
info stay responsive while a decode runs. An unexpected exception is logged with its traceback
and becomes alignd.errors.Internal, which tells the client nothing but that it happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from alignd import __version__
from alignd.backends.base import ChatPrompt, Policy
from alignd.backends.text import cut_at_stop
from alignd.config import ConfigError, ServerConfig, auth_enabled, keys_file
from alignd.decoding.base import STRATEGIES, Decode, DecodeContext, DecodeRequest, DecodeResult, ProgressEvent
from alignd.decoding.params import describe_params
from alignd.decoding.weights import parse_weights
from alignd.errors import AligndError, Internal, InvalidArgument
from alignd.rewardmodels.base import Scorer
from alignd.rewardmodels.heads import Head
from alignd.server import convert
from alignd.server.auth import Authenticator, Caller
from alignd.server.auth.quotas import Admission, check_request_size
from alignd.server.experiments.registry import Experiments, Routed
from alignd.server.metrics import Metrics
from alignd.server.request_fields import requested_strategy
from alignd.server.scheduling import FairExecutor
from alignd.v1 import alignd_pb2 as pb

log = logging.getLogger("alignd.server")
T = TypeVar("T")
# What a transport hands over about the caller: the request's authorization value (None: none),
# or the Caller it already authenticated for this call.
Credentials = str | Caller | None


@dataclass
class Call:
    """One request in flight: its transport and method, its strategy label for metrics, and who
    sent it."""

    transport: str
    method: str
    strategy: str
    caller: Caller | None = None

    @property
    def key(self) -> str:
        return self.caller.key_id if self.caller else ""

    def token_meter(self, admission: Admission) -> Callable[[int], None]:
        """Charges generated tokens to the caller's key from a worker thread (admission lives on
        the event loop)."""
        loop, key = asyncio.get_running_loop(), self.key

        def charge(tokens: int) -> None:
            with contextlib.suppress(RuntimeError):  # a decode that outlived the server's loop charges no one
                loop.call_soon_threadsafe(admission.charge_tokens, key, tokens)

        return charge


@dataclass(frozen=True)
class StreamStarted:
    """The first item of `ServerCore.generate_stream`: the request passed admission, routing and
    validation (a transport can still answer errors before it with a status of their own)."""

    request_id: str
    strategy: str
    experiment: str
    arm: str


class ServerCore:
    def __init__(
        self,
        policy: Policy,
        scorer: Scorer,
        config: ServerConfig,
        metrics: Metrics | None = None,
        heads: list[tuple[str, Head]] | None = None,
    ) -> None:
        self.policy = policy
        self.heads = heads or []
        self.scorer = scorer
        self.config = config
        self.metrics = metrics or Metrics()
        self.objective_names = scorer.objective_names
        # Defaults are checked once at start-up: a bad config fails there, not in every request.
        try:
            self.default_weights = parse_weights(config.default_weights, self.objective_names).as_dict()
            convert.parse_sampling(pb.SamplingParams(), config.default_sampling, config.limits)
        except InvalidArgument as error:
            raise ConfigError(f"default_{error}") from None
        self._executor = FairExecutor(config.decode_workers, thread_name_prefix="alignd-decode")
        self.auth = Authenticator(
            keys_file(config) if auth_enabled(config) else None, anonymous_role=config.auth.anonymous_role
        )
        self.admission = Admission(config.max_pending)
        self.info = self._server_info()
        self.experiments = Experiments(None, self._check_arm)

    async def start(self) -> None:
        """Open the experiment store and load the experiments (ConfigError naming the arm)."""
        self.experiments = await Experiments.open(self.config, self.metrics, self._check_arm)

    async def aclose(self) -> None:
        """After the last request: flush the experiment store, stop the workers."""
        await self.experiments.close()
        self.close()

    def close(self) -> None:
        self._executor.shutdown(cancel_futures=True)

    @property
    def pending(self) -> int:
        return self.admission.pending

    # -- admission and metrics --------------------------------------------------------------

    @asynccontextmanager
    async def admitted(
        self, transport: str, method: str, authorization: Credentials, strategy: str = ""
    ) -> AsyncIterator[Call]:
        """Authentication, admission control and metrics around one request. Raises
        Unauthenticated or PermissionDenied for the caller's key, ResourceExhausted when
        `max_pending` requests are in flight or the key is at a quota; an unexpected exception
        inside becomes Internal. The handler may set the call's strategy label once it knows it
        (after routing)."""
        call = Call(transport, method, strategy)
        started = time.perf_counter()
        code = "OK"
        call.caller = await self.authenticate(authorization, method, transport, strategy)
        try:
            self.admission.admit(call.caller.key_id, call.caller.name, call.caller.quota)
        except AligndError as error:
            self.metrics.requests.labels(transport, method, strategy, error.code_name).inc()
            raise
        self.metrics.pending.set(self.pending)
        try:
            yield call
        except AligndError as error:
            code = error.code_name
            raise
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (a stream's consumer stops with GeneratorExit).
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            log.exception("%s failed", method)
            raise Internal(f"internal error in {method} (logged on the server)") from None
        finally:
            self.admission.release(call.key)
            self.metrics.pending.set(self.pending)
            self.metrics.requests.labels(transport, method, call.strategy, code).inc()
            self.metrics.latency.labels(transport, method, call.strategy).observe(time.perf_counter() - started)

    async def authenticate(self, authorization: Credentials, method: str, transport: str, strategy: str = "") -> Caller:
        """The caller, allowed to call `method`; a refusal is counted in the metrics, and anything
        unexpected becomes Internal (logged). A Caller is one the transport authenticated already
        for this call (HTTP checks the key before it reads the body)."""
        if isinstance(authorization, Caller):
            return authorization
        try:
            return await self.auth.caller(authorization, method)
        except AligndError as error:
            self.metrics.requests.labels(transport, method, strategy, error.code_name).inc()
            raise
        except Exception:
            self.metrics.requests.labels(transport, method, strategy, "INTERNAL").inc()
            log.exception("checking the API key of a %s call failed", method)
            raise Internal(f"internal error checking the API key of {method} (logged on the server)") from None

    def _in_worker(self, call: Call, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run `fn` on a worker thread; workers take callers' jobs round-robin."""
        return asyncio.wrap_future(self._executor.submit(call.key, fn, *args))

    # -- generation -------------------------------------------------------------------------

    async def generate(
        self, request: pb.GenerateRequest, transport: str, authorization: Credentials = None, copies: int = 1
    ) -> pb.GenerateResponse:
        """`copies`: the request is one of that many decoded for one call (HTTP's `n`), which
        the key's max_n quota counts together."""
        label = self._strategy_label(requested_strategy(request))
        async with self.admitted(transport, "Generate", authorization, label) as call:
            started = time.perf_counter()
            routed, request, request_id = await self._route(request, call)
            parsed = self._parse(request, call, copies)
            cancel = threading.Event()
            work = self._in_worker(call, self._decode, parsed, None, cancel, call.token_meter(self.admission))
            try:
                result = await work
            finally:
                # Client gone or deadline passed: stop decoding at the next step. (Awaiting a
                # cancelled task cancels `work` itself, so test nothing: setting it after a
                # finished decode is harmless.)
                cancel.set()
            return await self._finish(routed, parsed, result, request_id, started)

    async def generate_stream(
        self, request: pb.GenerateRequest, transport: str, authorization: Credentials = None, copies: int = 1
    ) -> AsyncGenerator[StreamStarted | pb.GenerateEvent]:
        """StreamStarted once the request is accepted, then progress events (each with the text
        committed since the previous one), then the result. Closing the iterator early (the
        client went away) stops the decode at its next step."""
        label = self._strategy_label(requested_strategy(request))
        async with self.admitted(transport, "GenerateStream", authorization, label) as call:
            started = time.perf_counter()
            routed, request, request_id = await self._route(request, call)
            parsed = self._parse(request, call, copies)
            loop = asyncio.get_running_loop()
            meter = call.token_meter(self.admission)
            events: asyncio.Queue[ProgressEvent | None] = asyncio.Queue()

            def on_progress(event: ProgressEvent) -> None:
                loop.call_soon_threadsafe(events.put_nowait, event)

            cancel = threading.Event()
            planned: asyncio.Future[None] = loop.create_future()

            def checks_passed() -> None:
                if not planned.done():
                    planned.set_result(None)

            def plan_then_run() -> DecodeResult:
                # One worker job: the checks, then the decode; `planned` says the checks passed.
                plan = self._plan(parsed, on_progress, cancel)
                loop.call_soon_threadsafe(checks_passed)
                return self._run(parsed, *plan, meter)

            work = self._in_worker(call, plan_then_run)
            work.add_done_callback(lambda _: events.put_nowait(None))
            # A decode nobody awaits any more (its client left) must not log "exception never
            # retrieved" when it stops with Cancelled.
            work.add_done_callback(lambda done: done.cancelled() or done.exception())
            try:
                # Every check passes before the stream starts, the strategy's own too.
                either: list[asyncio.Future[Any]] = [planned, work]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                if not planned.done():
                    work.result()  # the checks failed: raise their error
                yield StreamStarted(
                    request_id,
                    parsed.strategy.name,
                    routed.experiment.name if routed else "",
                    routed.arm.name if routed else "",
                )
                text = CommittedText(parsed.sampling.stop)
                while (event := await events.get()) is not None:
                    message = convert.progress_message(parsed.weights.names, event)
                    if event.committed is not None:
                        message.progress.text_delta = text.advance(event.committed)
                    yield message
                result = await work
                yield pb.GenerateEvent(result=await self._finish(routed, parsed, result, request_id, started))
            finally:
                # Cancellation arrives as CancelledError or as GeneratorExit when the transport
                # stops consuming the stream: either way the decode must stop too.
                cancel.set()

    async def _route(self, request: pb.GenerateRequest, call: Call) -> tuple[Routed | None, pb.GenerateRequest, str]:
        """The experiment arm serving the request (if it names one), the request to decode, its id;
        the call's metrics label becomes the strategy that serves it."""
        routed = await self.experiments.route(request)
        call.strategy = self._strategy_label(routed.arm.strategy if routed else requested_strategy(request))
        if routed is not None and request.request_id:
            await self.experiments.check_new_request_id(request.request_id)
        return routed, routed.request if routed else request, request.request_id or uuid.uuid4().hex

    def _parse(
        self, request: pb.GenerateRequest, call: Call | None = None, copies: int = 1, *, template: bool = False
    ) -> convert.ParsedGenerate:
        """The request checked against the server's limits and the caller's per-request quota
        (`copies` of it counted together)."""
        parsed = convert.parse_generate(
            request,
            self.objective_names,
            self.default_weights,
            self.config.default_sampling,
            self.config.limits,
            vectors=self.policy.vectors,
            template=template,
        )
        if call is not None and call.caller is not None:
            rows = parsed.strategy.rows(parsed.params) * copies
            check_request_size(call.caller.name, call.caller.quota, rows, parsed.sampling.max_tokens)
        return parsed

    def _check_arm(self, template: pb.GenerateRequest) -> None:
        """An experiment arm must be servable for any prompt: everything a request is checked for
        except the prompt itself (its strategy's own conditions, the memory budget at its
        max_tokens), or it would fail every request of its subjects."""
        parsed = self._parse(template, template=True)
        self._prepare(parsed, DecodeRequest(ChatPrompt("", token_ids=()), parsed.sampling, parsed.weights))

    async def _finish(
        self,
        routed: Routed | None,
        parsed: convert.ParsedGenerate,
        result: DecodeResult,
        request_id: str,
        started: float,
    ) -> pb.GenerateResponse:
        """The response; an experiment request is recorded (committed) before it is answered."""
        response = convert.result_message(
            result, request_id, parsed.strategy.name, self.policy.model_name, parsed.weights, parsed.sampling.steering
        )
        if self.config.log_text:  # debug only: logs hold no request text otherwise
            log.info("request %s: prompt %r, response %r", request_id, parsed.prompt, result.text)
        if routed is not None:
            await self.experiments.record(routed, parsed, result, request_id, time.perf_counter() - started)
            response.experiment, response.arm = routed.experiment.name, routed.arm.name
        return response

    def _prepare(self, parsed: convert.ParsedGenerate, request: DecodeRequest) -> tuple[Decode, int]:
        """Every check a request gets before decoding, once: the strategy's (capabilities, its
        parameters, value sources) and the memory budget for its encoded prompt. Returns the
        decode and the key/value tokens it may hold."""
        assert request.prompt.token_ids is not None
        decode = parsed.strategy.prepare(request, parsed.params, self.policy, self.scorer)
        return decode, self._check_budget(parsed, len(request.prompt.token_ids))

    def _decode(
        self,
        parsed: convert.ParsedGenerate,
        on_progress: Callable[[ProgressEvent], None] | None,
        cancel: threading.Event,
        meter: Callable[[int], None],
    ) -> DecodeResult:
        return self._run(parsed, *self._plan(parsed, on_progress, cancel), meter)

    def _plan(
        self,
        parsed: convert.ParsedGenerate,
        on_progress: Callable[[ProgressEvent], None] | None,
        cancel: threading.Event,
    ) -> tuple[DecodeRequest, Decode, int]:
        """The encoded request, its prepared decode and the key/value tokens it may hold."""
        prompt = self.policy.encode(parsed.prompt)  # the only tokenization of the request's prompt
        assert prompt.token_ids is not None
        most = self.config.limits.max_prompt_tokens
        if len(prompt.token_ids) > most:
            raise InvalidArgument(
                "prompt", f"{len(prompt.token_ids)} tokens (chat template included), over the limit of {most}"
            )
        request = DecodeRequest(prompt, parsed.sampling, parsed.weights, parsed.return_candidates, on_progress, cancel)
        decode, tokens = self._prepare(parsed, request)
        return request, decode, tokens

    def _run(
        self,
        parsed: convert.ParsedGenerate,
        request: DecodeRequest,
        decode: Decode,
        tokens: int,
        meter: Callable[[int], None],
    ) -> DecodeResult:
        """Decode; `meter` gets the tokens generated, a cancelled or failed decode's too."""
        # Requests decoding at once share the backend's memory: wait for room, then decode.
        with self.metrics.decoding.track_inprogress(), self.policy.reserve(tokens, request.cancel) as memory:
            context = DecodeContext(request, self.policy, self.scorer, memory)
            try:
                result = decode(context)
            finally:
                meter(context.usage.generated_tokens)
        self.metrics.generated_tokens.labels(parsed.strategy.name).inc(result.usage.generated_tokens)
        return result

    def _check_budget(self, parsed: convert.ParsedGenerate, prompt_tokens: int) -> int:
        """Refuse requests whose sequences would not fit the model or the memory budget; the
        tokens they may hold (sequences x (prompt + max_tokens)) if they fit."""
        length = prompt_tokens + parsed.sampling.max_tokens
        context = self.policy.context_length
        if context is not None and length > context:
            raise InvalidArgument(
                "sampling.max_tokens",
                f"prompt ({prompt_tokens} tokens) + max_tokens "
                f"({parsed.sampling.max_tokens}) exceeds the model's context of {context}",
            )
        rows = parsed.strategy.rows(parsed.params)
        tokens = parsed.strategy.held_tokens(parsed.params, prompt_tokens, parsed.sampling.max_tokens)
        budget = self.config.limits.max_batch_tokens
        if tokens > budget:
            raise InvalidArgument(
                "sampling.max_tokens",
                f"{rows} sequences x ({prompt_tokens} prompt + {parsed.sampling.max_tokens} new) tokens: "
                f"{tokens} key/value tokens held at once exceeds the server's max_batch_tokens {budget}; "
                "use fewer candidates or tokens",
            )
        return tokens

    @staticmethod
    def _strategy_label(name: str) -> str:
        return name if name in STRATEGIES else "unknown"

    # -- scoring, feedback, experiments -----------------------------------------------------

    async def score(
        self, request: pb.ScoreRequest, transport: str, authorization: Credentials = None
    ) -> pb.ScoreResponse:
        async with self.admitted(transport, "Score", authorization) as call:
            limits = self.config.limits
            convert.check_text("prompt", request.prompt, limits.max_prompt_chars, required=True)
            if not request.responses:
                raise InvalidArgument("responses", "at least one response is required")
            if len(request.responses) > limits.max_score_responses:
                raise InvalidArgument(
                    "responses", f"{len(request.responses)} responses, over the limit of {limits.max_score_responses}"
                )
            for i, text in enumerate(request.responses):
                convert.check_text(f"responses[{i}]", text, limits.max_prompt_chars, required=False)
            assert call.caller is not None
            check_request_size(call.caller.name, call.caller.quota, len(request.responses), 0)
            weights = parse_weights(dict(request.weights), self.objective_names, self.default_weights)
            prompts = [request.prompt] * len(request.responses)
            rewards = await self._in_worker(call, self.scorer.score, prompts, list(request.responses))
            weighted = weights.weighted(rewards)
            return pb.ScoreResponse(
                scores=[
                    pb.ScoredText(rewards={n: float(v) for n, v in zip(weights.names, row)}, weighted_score=float(w))
                    for row, w in zip(rewards, weighted)
                ],
                weights=weights.as_dict(),
            )

    async def feedback(
        self, request: pb.FeedbackRequest, transport: str, authorization: Credentials = None
    ) -> pb.FeedbackResponse:
        async with self.admitted(transport, "RecordFeedback", authorization):
            return pb.FeedbackResponse(replaced=await self.experiments.feedback(request))

    async def report(
        self, request: pb.ExperimentReportRequest, transport: str, authorization: Credentials = None
    ) -> pb.ExperimentReport:
        async with self.admitted(transport, "GetExperimentReport", authorization):
            return await self.experiments.report(request.name)

    async def list_experiments(self, transport: str, authorization: Credentials = None) -> pb.ListExperimentsResponse:
        async with self.admitted(transport, "ListExperiments", authorization):
            return pb.ListExperimentsResponse(experiments=await self.experiments.list())

    async def create_experiment(
        self, request: pb.Experiment, transport: str, authorization: Credentials = None
    ) -> pb.Experiment:
        async with self.admitted(transport, "CreateExperiment", authorization):  # admin role checked there
            return await self.experiments.create(request)

    async def server_info(self, authorization: Credentials = None) -> pb.ServerInfo:  # gRPC only
        """What the server serves (no admission: it is computed once, at start-up)."""
        await self.authenticate(authorization, "GetServerInfo", "grpc")
        return self.info

    def _server_info(self) -> pb.ServerInfo:
        c, s, limits = self.config, self.config.default_sampling, self.config.limits
        sources = self.scorer.value_sources
        sampling = pb.SamplingParams(
            temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, max_tokens=s.max_tokens, stop=list(s.stop)
        )
        return pb.ServerInfo(
            version=__version__,
            model=self.policy.model_name,
            backend=c.backend,
            device=self.policy.device,
            objectives=[
                pb.ObjectiveInfo(
                    name=o.name,
                    description=o.description,
                    min_value=o.min_value,
                    max_value=o.max_value,
                    higher_is_better=o.higher_is_better,
                    default_weight=self.default_weights[o.name],
                    value_sources=list(sources[o.name].available),
                    auto_value_source=sources[o.name].auto,
                    value_source_pair_accuracy=dict(sources[o.name].pair_accuracy),
                    source=o.source,
                )
                for o in self.scorer.objectives
            ],
            strategies=[
                pb.StrategyInfo(
                    name=strategy.name,
                    description=strategy.description,
                    parameters=[convert.parameter_message(d) for d in describe_params(strategy.Params, limits)],
                    requires=sorted(r.value for r in strategy.requires),
                    sampling_defaults=pb.SamplingParams(**strategy.sampling_defaults),
                )
                for strategy in sorted(STRATEGIES.values(), key=lambda st: st.name)
            ],
            limits=pb.Limits(**dataclasses.asdict(limits)),
            default_sampling=sampling,
            capabilities=sorted(cap.value for cap in self.policy.capabilities),
            heads=[
                pb.HeadInfo(
                    kind=h.metadata.kind,
                    path=path,
                    base_model=h.metadata.base_model,
                    objectives=h.objectives,
                    data_hash=h.metadata.data_hash,
                    metrics={k: float(v) for k, v in h.metadata.metrics.items()},
                )
                for path, h in self.heads
            ],
            preference_vectors=[
                pb.PreferenceVectorInfo(
                    name=v.name,
                    objective=v.objective,
                    base_model=v.base_model,
                    rank=v.rank,
                    target_modules=v.target_modules,
                    data_hash=v.data_hash,
                    shift=v.shift,
                    presets=self.policy.vector_presets.get(v.name, ()),
                )
                for v in self.policy.vectors.values()
            ],
        )


class CommittedText:
    """The text a stream may send: what a decode committed, cut at the request's stop sequences,
    less what could still turn out to be the start of one (a stop sequence is not part of the
    answer) and less a trailing incomplete character. Sent text is never taken back."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.sent = ""

    def advance(self, committed: str) -> str:
        """The new text to send after the decode committed `committed` (all of it so far)."""
        safe = self._safe(committed)
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""
        delta, self.sent = safe[len(self.sent) :], safe
        return delta

    def _safe(self, committed: str) -> str:
        text = cut_at_stop(committed, self.stops)
        if len(text) == len(committed):
            held = max((n for s in self.stops for n in range(len(s) - 1, 0, -1) if text.endswith(s[:n])), default=0)
            text = text[: len(text) - held]
        # A multi-byte character split across tokens decodes as U+FFFD until its last byte comes;
        # trailing spaces wait too, since some tokenizers' clean-up joins them to the next
        # token's punctuation ("x " then "," decodes as "x,").
        return text.rstrip("\ufffd").rstrip()


def unsent_text(final: str, sent: str) -> str:
    """What the final answer adds to the text a stream sent: all of it for strategies that commit
    nothing before the end (best_of_n, evolutionary)."""
    if final.startswith(sent):
        return final[len(sent) :]
    log.warning("streamed text is not a prefix of the final answer; the rest is not sent")
    return ""
