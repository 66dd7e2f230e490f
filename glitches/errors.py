"""Typed errors of the SDK, one per gRPC status a caller can act on."""

from __future__ import annotations

import grpc


class GlitchesError(Exception):
    """A request failed; `code` is the gRPC status name (e.g. "INVALID_ARGUMENT")."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class InvalidArgumentError(GlitchesError):
    """The request itself is wrong; the message says what to change."""


class UnavailableError(GlitchesError):
    """No worker or scheduler could take the request now; retrying later may work."""


class ResourceExhaustedError(GlitchesError):
    """Capacity (KV memory, queue) ran out."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}


def from_rpc_error(error: grpc.RpcError) -> GlitchesError:
    code = error.code()
    return _BY_CODE.get(code, GlitchesError)(code.name, error.details() or "")
