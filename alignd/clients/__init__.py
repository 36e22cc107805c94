"""The Python client for alignd (imports no torch)."""

from alignd.clients import types
from alignd.clients.client import AligndClient, AligndClientError, AsyncAligndClient
from alignd.clients.types import *  # noqa: F403  (the result types, listed in types.__all__)

__all__ = ["AligndClient", "AligndClientError", "AsyncAligndClient", *types.__all__]
