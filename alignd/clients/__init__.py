"""The Python client for alignd (imports no torch)."""

from alignd.clients.client import AligndClient, AligndClientError, AsyncAligndClient
from alignd.clients.types import KL, CandidateResult, Generation, Progress, Scored, Usage

__all__ = [
    "AligndClient", "AligndClientError", "AsyncAligndClient", "CandidateResult", "Generation", "KL", "Progress",
    "Scored", "Usage",
]
