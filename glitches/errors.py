"""Typed errors of the SDK, one per gRPC status a caller can act on."""

from __future__ import annotations

import grpc


class GlitchesError(Exception):
    """A request failed; `code` is the gRPC status name (e.g. "INVALID_ARGUMENT")."""

    def __init__(self, code: str, message: str, retry_after_s: float | None = None, field: str | None = None,
                 reason: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s  # RESOURCE_EXHAUSTED: when the server says a retry may succeed
        self.field = field  # the request field at fault (e.g. "max_new_tokens", "prompt", "model"), when known
        self.reason = reason  # machine-readable cause (e.g. "context_length_exceeded", "model_not_found")


class InvalidArgumentError(GlitchesError):
    """The request itself is wrong; the message says what to change."""


class UnavailableError(GlitchesError):
    """No worker or scheduler could take the request now; retrying later may work."""


class ResourceExhaustedError(GlitchesError):
    """Capacity (KV memory, queue) ran out."""


class DeadlineExceededError(GlitchesError):
    """The call did not finish within the client's `timeout_s` (retries included)."""


class UnauthenticatedError(GlitchesError):
    """The scheduler wants credentials (an API key) that the call did not carry or that are wrong."""


class PermissionDeniedError(GlitchesError):
    """The credentials are valid but not allowed to do this."""


class NotFoundError(GlitchesError):
    """Something the request names does not exist."""


class CancelledError(GlitchesError):
    """The call was cancelled (by this client, or by the server while it shut down)."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.CANCELLED: CancelledError,
}


def from_rpc_error(error: grpc.RpcError) -> GlitchesError:
    code = error.code()
    return _BY_CODE.get(code, GlitchesError)(code.name, error.details() or "", _retry_after_s(error),
                                             _trailing(error, "glitches-error-field"),
                                             _trailing(error, "glitches-error-reason"))


def _trailing(error: grpc.RpcError, key: str) -> str | None:
    """One trailing metadata value of a failed call (services.errors.ERROR_FIELD_KEY / ERROR_REASON_KEY)."""
    try:
        trailing = error.trailing_metadata() or ()
    except Exception:  # an error raised before any call (no metadata)
        return None
    for k, value in trailing:
        if k == key:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def _retry_after_s(error: grpc.RpcError) -> float | None:
    """The server's retry-after-ms trailing metadata, in seconds (None when absent or unreadable)."""
    try:
        trailing = error.trailing_metadata() or ()
    except Exception:  # an error raised before any call (no metadata)
        return None
    for key, value in trailing:
        if key == "retry-after-ms":
            try:
                return int(value) / 1000
            except (TypeError, ValueError):
                return None
    return None


def invalid_argument(error: Exception) -> InvalidArgumentError:
    """A request the SDK could not even encode (a number out of its field's range, a lone surrogate)."""
    return InvalidArgumentError("INVALID_ARGUMENT", f"the request cannot be encoded: {error}")
