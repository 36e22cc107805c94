"""The Python client for alignd (imports no torch)."""

from alignd.clients import types
from alignd.clients.client import TLS, AligndClient, AligndClientError, AsyncAligndClient
from alignd.clients.types import *  # noqa: F403  (the result types, listed in types.__all__)

__all__ = ["TLS", "AligndClient", "AligndClientError", "AsyncAligndClient", *types.__all__]
