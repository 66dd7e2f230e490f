"""GLITCHES: GPU prefill, FPGA decode, KV streamed during prefill. The public SDK.

`glitches` is also the one root package of everything the project installs (the daemons' packages
`glitches.services`, `glitches.scheduler`, `glitches.gpu_worker`, `glitches.fpga_worker`, ...). The SDK's names
below are imported on first use, so a daemon importing its own subpackage does not load the client (and
`python -m glitches.services.generate_stubs` runs before the stubs the client needs exist).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {
    "AsyncClient": "glitches.aio", "Client": "glitches.client",
    **dict.fromkeys(("CancelledError", "DeadlineExceededError", "GlitchesError", "InvalidArgumentError",
                     "NotFoundError", "PermissionDeniedError", "ResourceExhaustedError", "UnauthenticatedError",
                     "UnavailableError"), "glitches.errors"),
    **dict.fromkeys(("NO_RETRY", "RetryPolicy"), "glitches.retry"),
    **dict.fromkeys(("ClusterStatus", "Completion", "Logprob", "RedisStatus", "TextChunk", "Timings",
                     "TokenLogprob", "WorkerStatus"), "glitches.types"),
}

__all__ = sorted(_WHERE)

if TYPE_CHECKING:
    from glitches.aio import AsyncClient
    from glitches.client import Client
    from glitches.errors import (CancelledError, DeadlineExceededError, GlitchesError, InvalidArgumentError,
                                 NotFoundError, PermissionDeniedError, ResourceExhaustedError,
                                 UnauthenticatedError, UnavailableError)
    from glitches.retry import NO_RETRY, RetryPolicy
    from glitches.types import (ClusterStatus, Completion, Logprob, RedisStatus, TextChunk, Timings,
                                TokenLogprob, WorkerStatus)


def __getattr__(name: str):
    """The SDK name `name`, imported from its module on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'glitches' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
