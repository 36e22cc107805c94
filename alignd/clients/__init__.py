"""The Python client for alignd (imports no torch)."""

from alignd.clients.client import AligndClient, AligndClientError, AsyncAligndClient
from alignd.clients.types import (
    KL,
    ArmReport,
    CandidateResult,
    Comparison,
    ExperimentReport,
    Generation,
    MeanEstimate,
    Progress,
    RateEstimate,
    Scored,
    Usage,
)

__all__ = [
    "KL",
    "AligndClient",
    "AligndClientError",
    "ArmReport",
    "AsyncAligndClient",
    "CandidateResult",
    "Comparison",
    "ExperimentReport",
    "Generation",
    "MeanEstimate",
    "Progress",
    "RateEstimate",
    "Scored",
    "Usage",
]
