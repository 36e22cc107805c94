"""The alignd.v1.Alignd gRPC service (grpc.aio): each RPC calls the server core with the call's
`authorization` metadata and maps alignd.errors to their status codes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from alignd.errors import AligndError, ResourceExhausted
from alignd.server.auth import metadata_authorization
from alignd.server.core import ServerCore, StreamStarted
from alignd.v1 import alignd_pb2 as pb
from alignd.v1 import alignd_pb2_grpc as pb_grpc

TRANSPORT = "grpc"


@asynccontextmanager
async def status_codes(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """An AligndError ends the RPC with its status code and message (and, for a quota that
    waiting will free, a `retry-after-ms` trailer)."""
    try:
        yield
    except AligndError as error:
        trailer: tuple[tuple[str, str], ...] = ()
        if isinstance(error, ResourceExhausted) and error.retry_after is not None:
            trailer = (("retry-after-ms", str(max(1, round(error.retry_after * 1000)))),)
        await context.abort(grpc.StatusCode[error.code_name], error.client_message(), trailing_metadata=trailer)


def authorization(context: grpc.aio.ServicerContext) -> str | None:
    return metadata_authorization(context.invocation_metadata())


class AligndService(pb_grpc.AligndServicer):
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    async def Generate(self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext) -> pb.GenerateResponse:
        async with status_codes(context):
            return await self.core.generate(request, TRANSPORT, authorization(context))

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateEvent]:
        async with status_codes(context):
            stream = self.core.generate_stream(request, TRANSPORT, authorization(context))
            try:
                async for event in stream:
                    if not isinstance(event, StreamStarted):
                        yield event
            finally:
                await stream.aclose()

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        async with status_codes(context):
            return await self.core.score(request, TRANSPORT, authorization(context))

    async def GetServerInfo(self, request: pb.GetServerInfoRequest, context: grpc.aio.ServicerContext) -> pb.ServerInfo:
        async with status_codes(context):
            return await self.core.server_info(authorization(context))

    async def RecordFeedback(
        self, request: pb.FeedbackRequest, context: grpc.aio.ServicerContext
    ) -> pb.FeedbackResponse:
        async with status_codes(context):
            return await self.core.feedback(request, TRANSPORT, authorization(context))

    async def GetExperimentReport(
        self, request: pb.ExperimentReportRequest, context: grpc.aio.ServicerContext
    ) -> pb.ExperimentReport:
        async with status_codes(context):
            return await self.core.report(request, TRANSPORT, authorization(context))

    async def ListExperiments(
        self, request: pb.ListExperimentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListExperimentsResponse:
        async with status_codes(context):
            return await self.core.list_experiments(TRANSPORT, authorization(context))

    async def CreateExperiment(self, request: pb.Experiment, context: grpc.aio.ServicerContext) -> pb.Experiment:
        async with status_codes(context):
            return await self.core.create_experiment(request, TRANSPORT, authorization(context))
