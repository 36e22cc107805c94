"""Keys for gRPC's own services: health checking and reflection are open by default (load
balancers and grpcurl call them without keys); `[auth] open_services` lists the ones that stay
open, and this interceptor asks the others for a key. alignd's own RPCs check keys in the
server core, where they also count against the key's quota."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from alignd.errors import AligndError
from alignd.server.auth import Authenticator, metadata_authorization

log = logging.getLogger("alignd.auth")

SERVICE_PREFIXES = {
    "health": ("/grpc.health.v1.Health/",),
    "reflection": ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/"),
}


class KeyRequired(grpc.aio.ServerInterceptor):
    def __init__(self, auth: Authenticator, protected: tuple[str, ...]) -> None:
        self.auth = auth
        self.prefixes = tuple(p for name in protected for p in SERVICE_PREFIXES[name])

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method = details.method or ""
        if handler is None or not method.startswith(self.prefixes):
            return handler
        try:
            await self.auth.caller(metadata_authorization(details.invocation_metadata), method)
        except AligndError as error:
            return _refusal(handler, grpc.StatusCode[error.code_name], error.client_message())
        except Exception:
            log.exception("checking the API key of %s failed", method)
            return _refusal(handler, grpc.StatusCode.INTERNAL, f"internal error checking the API key of {method}")
        return handler


def _refusal(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that ends the call with `code`."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)
        yield  # an async generator, as streaming handlers are

    codecs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **codecs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse_stream, **codecs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **codecs)
    return grpc.stream_stream_rpc_method_handler(refuse_stream, **codecs)
