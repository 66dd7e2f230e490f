"""Domain errors and the one place that maps them to gRPC status codes.

Engines raise these; servicers never build status codes by hand. Each message
says what to change, because it reaches the user verbatim.
"""

from __future__ import annotations

import grpc


class GlitchesError(Exception):
    """Base of every error that should reach a client with a specific status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(GlitchesError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GlitchesError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GlitchesError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(GlitchesError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(GlitchesError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(GlitchesError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s  # when a retry may succeed; sent as trailing metadata RETRY_AFTER_KEY


RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata of RESOURCE_EXHAUSTED: milliseconds until a retry may succeed


def retry_after_metadata(retry_after_s: float | None) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that tells a client when to retry (empty when unknown)."""
    if retry_after_s is None:
        return ()
    return ((RETRY_AFTER_KEY, str(max(1, round(retry_after_s * 1000)))),)


class Unavailable(GlitchesError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(GlitchesError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(GlitchesError):
    code = grpc.StatusCode.CANCELLED


def from_rpc_error(error: grpc.RpcError, context: str) -> GlitchesError:
    """Re-raise a downstream RpcError as the same-coded domain error, with where it came from."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    by_code = {cls.code: cls for cls in GlitchesError.__subclasses__()}
    cls = by_code.get(code, GlitchesError)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        cls = Unavailable
    err = cls(f"{context}: {details}")
    return err
