"""What a GenerateRequest asks for, read without validating it (no torch: the CLI uses it too)."""

from __future__ import annotations

from alignd.v1 import alignd_pb2 as pb

DEFAULT_STRATEGY = "sample"


def requested_strategy(request: pb.GenerateRequest) -> str:
    """The strategy by name, else the one whose parameters are set, else the default."""
    return request.strategy or request.WhichOneof("params") or DEFAULT_STRATEGY
