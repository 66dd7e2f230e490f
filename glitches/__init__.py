"""GLITCHES: GPU prefill, FPGA decode, KV streamed during prefill. The public SDK."""

from glitches.aio import AsyncClient
from glitches.client import Client
from glitches.errors import GlitchesError, InvalidArgumentError, ResourceExhaustedError, UnavailableError
from glitches.types import ClusterStatus, Completion, TextChunk, Timings, WorkerStatus

__all__ = ["AsyncClient", "Client", "ClusterStatus", "Completion", "GlitchesError", "InvalidArgumentError",
           "ResourceExhaustedError", "TextChunk", "Timings", "UnavailableError", "WorkerStatus"]
