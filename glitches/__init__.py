"""GLITCHES: GPU prefill, FPGA decode, KV streamed during prefill. The public SDK."""

from glitches.aio import AsyncClient
from glitches.client import Client
from glitches.errors import (CancelledError, DeadlineExceededError, GlitchesError, InvalidArgumentError,
                             NotFoundError, PermissionDeniedError, ResourceExhaustedError, UnauthenticatedError,
                             UnavailableError)
from glitches.retry import NO_RETRY, RetryPolicy
from glitches.types import ClusterStatus, Completion, TextChunk, Timings, WorkerStatus

__all__ = ["AsyncClient", "CancelledError", "Client", "ClusterStatus", "Completion", "DeadlineExceededError",
           "GlitchesError", "InvalidArgumentError", "NO_RETRY", "NotFoundError", "PermissionDeniedError",
           "ResourceExhaustedError", "RetryPolicy", "TextChunk", "Timings", "UnauthenticatedError",
           "UnavailableError", "WorkerStatus"]
