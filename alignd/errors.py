"""Errors that carry a gRPC status meaning, raised anywhere below the server.

The server maps them to status codes; everything else that escapes a handler is a bug and is
reported as INTERNAL. Messages always start with the offending field so clients can act on them.
"""

from __future__ import annotations

# Status messages travel in a gRPC trailer, which clients refuse above 16 KiB of metadata: a
# message that quotes a huge input is cut to this length before it is sent.
MAX_MESSAGE_CHARS = 1000


class AligndError(Exception):
    """Base class: an error with a user-facing message."""

    code_name = "INTERNAL"

    def client_message(self) -> str:
        """The message as sent to the client: at most MAX_MESSAGE_CHARS characters."""
        return shorten(str(self))


def shorten(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[: MAX_MESSAGE_CHARS - 1] + "…"


class InvalidArgument(AligndError, ValueError):
    """A request field is malformed or out of the configured limits (gRPC INVALID_ARGUMENT)."""

    code_name = "INVALID_ARGUMENT"

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


class FailedPrecondition(AligndError):
    """The request is well-formed but this server cannot serve it (gRPC FAILED_PRECONDITION)."""

    code_name = "FAILED_PRECONDITION"


class Cancelled(AligndError):
    """The client went away or its deadline passed; work stopped at the next step. `generated`:
    the tokens the interrupted backend call had generated (None where the backend cannot say)."""

    code_name = "CANCELLED"

    def __init__(self, message: str, generated: int | None = None) -> None:
        self.generated = generated
        super().__init__(message)


class ModelNotFound(AligndError):
    """A model name or path that the registry cannot resolve."""

    code_name = "NOT_FOUND"


class NotFound(AligndError):
    """A named thing (experiment, recorded request) that does not exist (gRPC NOT_FOUND)."""

    code_name = "NOT_FOUND"


class AlreadyExists(AligndError):
    """Creating something whose name or id is taken (gRPC ALREADY_EXISTS)."""

    code_name = "ALREADY_EXISTS"


class PermissionDenied(AligndError):
    """An RPC this server's configuration does not allow (gRPC PERMISSION_DENIED)."""

    code_name = "PERMISSION_DENIED"


class Unavailable(AligndError):
    """A dependency of the request (the experiment store) cannot take work now (gRPC UNAVAILABLE)."""

    code_name = "UNAVAILABLE"


class Unauthenticated(AligndError):
    """No API key, or one the server does not know or has revoked (gRPC UNAUTHENTICATED)."""

    code_name = "UNAUTHENTICATED"


class ResourceExhausted(AligndError):
    """The server is at its pending-request limit, or the caller's key at one of its quotas
    (gRPC RESOURCE_EXHAUSTED). `retry_after`: seconds after which a retry can succeed, when
    waiting helps (transports send it as a header)."""

    code_name = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        if retry_after is not None:
            message = f"{message}; retry after {retry_after:.1f} s"
        super().__init__(message)


class Internal(AligndError):
    """A bug: logged with its traceback on the server, reported without details (gRPC INTERNAL)."""

    code_name = "INTERNAL"
