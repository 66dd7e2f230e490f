"""GLITCHES: GPU prefill, FPGA decode, KV streamed during prefill. The public SDK."""

from glitches.aio import AsyncClient
from glitches.client import Client
from glitches.errors import (CancelledError, DeadlineExceededError, GlitchesError, InvalidArgumentError,
                             NotFoundError, PermissionDeniedError, ResourceExhaustedError, UnauthenticatedError,
                             UnavailableError)
from glitches.retry import NO_RETRY, RetryPolicy
from glitches.types import (ClusterStatus, Completion, Logprob, RedisStatus, TextChunk, Timings, TokenLogprob,
                            WorkerStatus)

__all__ = ["AsyncClient", "CancelledError", "Client", "ClusterStatus", "Completion", "DeadlineExceededError",
           "GlitchesError", "InvalidArgumentError", "Logprob", "NO_RETRY", "NotFoundError", "PermissionDeniedError",
           "RedisStatus", "ResourceExhaustedError", "RetryPolicy", "TextChunk", "Timings", "TokenLogprob", "UnauthenticatedError",
           "UnavailableError", "WorkerStatus"]
