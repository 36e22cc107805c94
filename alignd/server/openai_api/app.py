"""The OpenAI-compatible HTTP API: aiohttp on the gRPC server's event loop, calling the same server
core (admission, validation, experiments, metrics) as the gRPC service.

Streams are server-sent events in OpenAI's chunk format; each chunk carries the text the decode
committed since the last one, and an `alignd` object with the steering progress. A client that
disconnects cancels its handler (aiohttp's handler_cancellation), which stops the decode at its
next step, as a gRPC cancel does.

API keys come as `Authorization: Bearer <key>` (what the openai SDKs send for `api_key`); the
core checks them with every call, as it does gRPC's metadata.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from alignd.errors import AligndError, Internal, InvalidArgument, NotFound, ResourceExhausted, shorten
from alignd.server.auth import Caller
from alignd.server.auth.quotas import retry_seconds
from alignd.server.core import ServerCore, StreamStarted, unsent_text
from alignd.server.openai_api import schema
from alignd.v1 import alignd_pb2 as pb

log = logging.getLogger("alignd.server")

TRANSPORT = "http"

HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 412,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
# OpenAI's error `type` for each status; the openai SDKs raise a typed exception per status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    412: "failed_precondition_error",
    429: "rate_limit_error",
}
_FIELD_PREFIX = re.compile(r"^([\w.\[\]]+): (.*)$", re.DOTALL)


class FieldNames:
    """How a request's body names the fields the core reports errors for (`chat` None: as the
    core names them; `renames`: core fields this body gave under another name)."""

    def __init__(self, chat: bool | None = None) -> None:
        self.chat = chat
        self.renames: dict[str, str] = {}

    def __call__(self, field: str) -> str:
        if self.chat is None:
            return field
        for core, body in self.renames.items():
            if field == core or field.startswith((f"{core}.", f"{core}[")):
                return body + field[len(core) :]
        return schema.http_field(field, chat=self.chat)


def error_body(error: AligndError, names: FieldNames) -> tuple[int, dict[str, Any]]:
    """OpenAI's error shape: message (starting with the body's field name), type, param, code."""
    status = HTTP_STATUS.get(error.code_name, 500)
    message, param = str(error), None
    if isinstance(error, schema.BodyError):
        param = error.field  # named as the body names it already
    elif isinstance(error, InvalidArgument):
        param = names(error.field)
        message = f"{param}: {error.problem}"
    elif found := _FIELD_PREFIX.match(message):
        param = names(found.group(1))
        message = f"{param}: {found.group(2)}"
    body = {
        "message": shorten(message),
        "type": ERROR_TYPES.get(status, "server_error"),
        "param": param,
        "code": error.code_name.lower(),
    }
    return status, {"error": body}


def error_response(error: AligndError, names: FieldNames) -> web.Response:
    status, body = error_body(error, names)
    response = json_response(body, status=status)
    if isinstance(error, ResourceExhausted) and error.retry_after is not None:
        response.headers["Retry-After"] = str(retry_seconds(error.retry_after))
    if status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


def dumps(data: Any) -> str:
    """Strict JSON: a non-finite number (a reward model's NaN, an infinite log-probability) is
    null, since JSON has no NaN and JavaScript's JSON.parse refuses it."""
    return json.dumps(_finite(data), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=dumps)


def sse(data: dict[str, Any] | str) -> bytes:
    return f"data: {data if isinstance(data, str) else dumps(data)}\n\n".encode()


def authorization(request: web.Request) -> str | None:
    return request.headers.get("Authorization")


class OpenAIApi:
    def __init__(self, core: ServerCore, open_health: bool = True) -> None:
        self.core = core
        self.open_health = open_health  # /health without a key (load balancers)
        self.model = core.policy.model_name
        self.started = int(time.time())
        self.draining = False  # set on shutdown: /health says so, so load balancers move on

    def application(self) -> web.Application:
        app = web.Application(client_max_size=self.core.config.max_message_bytes, middlewares=[self._http_errors])
        app.router.add_post("/v1/chat/completions", self.chat_completions)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/v1/models/{model}", self.model_info)
        app.router.add_post("/v1/alignd/feedback", self.feedback)
        app.router.add_get("/health", self.health)
        return app

    @web.middleware
    async def _http_errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """aiohttp's own refusals (unknown path, wrong method, body too large) in the error shape."""
        try:
            return await handler(request)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            body = {"message": error.reason, "type": ERROR_TYPES.get(error.status, "server_error"), "param": None}
            return json_response({"error": {**body, "code": None}}, status=error.status)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(Internal(f"internal error in {request.path} (logged on the server)"), FieldNames())

    # -- generation ----------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, schema.ChatBody)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, schema.CompletionBody)

    async def _generate(
        self, http: web.Request, kind: type[schema.ChatBody] | type[schema.CompletionBody]
    ) -> web.StreamResponse:
        chat = kind is schema.ChatBody
        names = FieldNames(chat)
        try:
            # The key first: a caller without one learns nothing from the body's checks.
            caller = await self.core.authenticate(authorization(http), "Generate", TRANSPORT)
            body = schema.parse_body(kind, await _json(http))
            names.renames = schema.renamed_fields(body)
            if body.model != self.model:
                raise NotFound(f"model: {body.model!r} is not served here; this server serves {self.model!r}")
            n = 1 if body.n is None else body.n
            self._check_choices(n, caller)
            requests = _choices(schema.generate_request(body), n)
        except AligndError as error:
            return error_response(error, names)
        reply = Reply(self.model, chat, requests[0].request_id)
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return await self._stream(http, caller, requests, reply, names, include_usage)
        try:
            responses = await _all([self.core.generate(r, TRANSPORT, caller, len(requests)) for r in requests])
        except AligndError as error:
            return error_response(error, names)
        return json_response(reply.complete(responses))

    async def _stream(
        self,
        http: web.Request,
        caller: Caller,
        requests: list[pb.GenerateRequest],
        reply: Reply,
        names: FieldNames,
        include_usage: bool,
    ) -> web.StreamResponse:
        streams = [self.core.generate_stream(r, TRANSPORT, caller, len(requests)) for r in requests]
        try:
            # Admission, routing and validation happen before the first item: their errors get
            # a status code of their own rather than an error event in a 200 stream.
            starts = []
            for stream in streams:
                start = await anext(stream)
                assert isinstance(start, StreamStarted)
                starts.append(start)
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
            await response.prepare(http)
            reply.id = starts[0].request_id
            for i, start in enumerate(starts):
                await response.write(sse(reply.opening(i, start)))
            sent = [""] * len(streams)
            results: list[pb.GenerateResponse] = [pb.GenerateResponse()] * len(streams)
            merged = _merge(streams)
            try:
                async for i, event in merged:
                    assert isinstance(event, pb.GenerateEvent)
                    if event.HasField("progress"):
                        sent[i] += event.progress.text_delta
                        await response.write(sse(reply.progress(i, event.progress)))
                    else:
                        results[i] = event.result
                        await response.write(sse(reply.finished(i, event.result, sent[i])))
            except AligndError as error:
                # The stream has begun (status 200): the error goes in an event, as OpenAI's do.
                await response.write(sse(error_body(error, names)[1]))
                return response
            finally:
                await merged.aclose()
            if include_usage:
                await response.write(sse(reply.usage(results)))
            await response.write(sse("[DONE]"))
            return response
        except AligndError as error:
            return error_response(error, names)
        except ConnectionResetError:
            # The client left between two chunks; closing the streams (below) stops the decode.
            raise asyncio.CancelledError from None
        finally:
            for stream in streams:
                await stream.aclose()

    def _check_choices(self, n: int, caller: Caller) -> None:
        """Each of `n` choices is a request of its own: refuse an `n` that could never be admitted
        at once (over max_pending, or the key's concurrent or per-minute quota)."""
        limit = min(self.core.config.limits.max_candidates, self.core.config.max_pending)
        if not 1 <= n <= limit:
            raise InvalidArgument("n", f"must be in [1, {limit}], got {n}")
        quota = caller.quota
        for name, most in (("concurrent", quota.concurrent), ("requests_per_minute", quota.requests_per_minute)):
            if most and n > most:
                raise ResourceExhausted(f"n: {n} choices are {n} requests, over the key's quota.{name} of {most}")

    # -- the rest --------------------------------------------------------------------------------

    async def models(self, request: web.Request) -> web.Response:
        try:
            await self.core.authenticate(authorization(request), "ListModels", TRANSPORT)
        except AligndError as error:
            return error_response(error, FieldNames())
        return json_response({"object": "list", "data": [self._model_card()]})

    async def model_info(self, request: web.Request) -> web.Response:
        try:
            await self.core.authenticate(authorization(request), "ListModels", TRANSPORT)
            if request.match_info["model"] != self.model:
                raise NotFound(
                    f"model: {request.match_info['model']!r} is not served here; this server serves {self.model!r}"
                )
        except AligndError as error:
            return error_response(error, FieldNames())
        return json_response(self._model_card())

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model, "object": "model", "created": self.started, "owned_by": "alignd"}

    async def health(self, request: web.Request) -> web.Response:
        if not self.open_health:
            try:
                await self.core.authenticate(authorization(request), "Health", TRANSPORT)
            except AligndError as error:
                return error_response(error, FieldNames())
        if self.draining:
            return json_response({"status": "draining"}, status=503)
        return json_response({"status": "ok"})

    async def feedback(self, request: web.Request) -> web.Response:
        names = FieldNames()
        try:
            caller = await self.core.authenticate(authorization(request), "RecordFeedback", TRANSPORT)
            body = schema.parse_body(schema.FeedbackBody, await _json(request))
            message = pb.FeedbackRequest(request_id=body.request_id, key=body.key)
            given = [n for n in ("thumbs_up", "rating", "preferred_over") if getattr(body, n) is not None]
            if len(given) > 1:
                raise InvalidArgument("feedback", f"set one of thumbs_up, rating, preferred_over, not {given}")
            for name in given:
                setattr(message, name, getattr(body, name))
            answer = await self.core.feedback(message, TRANSPORT, caller)
        except AligndError as error:
            return error_response(error, names)
        return json_response({"replaced": answer.replaced})


class Reply:
    """The OpenAI shapes of one request's answer: a whole response, or a stream's chunks."""

    def __init__(self, model: str, chat: bool, request_id: str) -> None:
        self.model, self.chat = model, chat
        self.id = request_id
        self.created = int(time.time())

    @property
    def _id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-{self.id}"

    def complete(self, responses: list[pb.GenerateResponse]) -> dict[str, Any]:
        several = len(responses) > 1
        choices = []
        for i, r in enumerate(responses):
            choice: dict[str, Any] = {"index": i, "finish_reason": r.finish_reason, "logprobs": None}
            if self.chat:
                choice["message"] = {"role": "assistant", "content": r.text}
            else:
                choice["text"] = r.text
            if several:
                choice["alignd"] = schema.result_json(r)
            choices.append(choice)
        self.id = responses[0].request_id
        return {
            "id": self._id,
            "object": "chat.completion" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": schema.usage_json(responses),
            "alignd": schema.result_json(responses[0]),
        }

    def _chunk(
        self, index: int, text: str | None, finish: str | None, alignd: dict[str, Any], role: bool = False
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": None}
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice["delta"] = delta
        else:
            choice["text"] = text or ""
        return {
            "id": self._id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "alignd": alignd,
        }

    def opening(self, index: int, start: StreamStarted) -> dict[str, Any]:
        started = {"request_id": start.request_id, "strategy": start.strategy}
        if start.experiment:
            started.update(experiment=start.experiment, arm=start.arm)
        return self._chunk(index, "", None, {"started": started}, role=True)

    def progress(self, index: int, progress: pb.Progress) -> dict[str, Any]:
        text = progress.text_delta or None
        return self._chunk(index, text, None, {"progress": schema.progress_json(progress)})

    def finished(self, index: int, result: pb.GenerateResponse, sent: str) -> dict[str, Any]:
        """The last chunk of a choice: what the answer adds to the text sent, and the result. The
        sent text is the answer's beginning; should a tokenizer ever make it not, the result
        carries the whole answer as `text`."""
        outcome = schema.result_json(result)
        if not result.text.startswith(sent):
            outcome["text"] = result.text
        rest = unsent_text(result.text, sent)
        return self._chunk(index, rest or None, result.finish_reason, {"result": outcome})

    def usage(self, results: list[pb.GenerateResponse]) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": schema.usage_json(results),
        }


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InvalidArgument("body", f"not valid JSON: {error}") from None


def _choices(request: pb.GenerateRequest, n: int) -> list[pb.GenerateRequest]:
    """One GenerateRequest per choice: n decodes, each its own request (and experiment record).
    With a seed, choice i samples with seed + i; with a request id, choice i is `<id>-<i>`."""
    if n == 1:
        return [request]
    copies = []
    for i in range(n):
        copy = pb.GenerateRequest()
        copy.CopyFrom(request)
        if request.sampling.HasField("seed"):
            copy.sampling.seed = (request.sampling.seed + i) % 2**64
        if request.request_id:
            copy.request_id = f"{request.request_id}-{i}"
        copies.append(copy)
    return copies


T = TypeVar("T")


async def _all(calls: list[Awaitable[T]]) -> list[T]:
    """Every call's result in order; the first failure cancels the others and is raised."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _merge(streams: Sequence[AsyncIterator[Any]]) -> AsyncGenerator[tuple[int, Any]]:
    """(index, item) from several streams as they come; the first failure is raised."""
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any, BaseException | None, bool]] = asyncio.Queue()

    async def pump(i: int, stream: AsyncIterator[Any]) -> None:
        try:
            async for item in stream:
                await queue.put((i, item, None, False))
            await queue.put((i, None, None, True))
        except Exception as error:
            await queue.put((i, None, error, True))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            i, item, error, done = await queue.get()
            if error is not None:
                raise error
            if done:
                running -= 1
            else:
                yield i, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
