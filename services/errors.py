"""Domain errors and the one place that maps them to gRPC status codes.

Engines raise these; servicers never build status codes by hand. Each message
says what to change, because it reaches the user verbatim.
"""

from __future__ import annotations

import grpc


class GlitchesError(Exception):
    """Base of every error that should reach a client with a specific status.

    `field` names the request field at fault (a SamplingParams/GenerateRequest field name such as
    "max_new_tokens", "prompt", "model", "response_format") and `reason` is a machine-readable
    cause (one of the REASON_* below); both travel as trailing metadata (ERROR_FIELD_KEY,
    ERROR_REASON_KEY) so clients map them without parsing the message.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str = "", field: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.field = field
        self.reason = reason


ERROR_FIELD_KEY = "glitches-error-field"  # trailing metadata: the request field at fault
ERROR_REASON_KEY = "glitches-error-reason"  # trailing metadata: a REASON_* value
REASON_MODEL_NOT_FOUND = "model_not_found"  # GenerateRequest.model names a model the cluster does not serve
REASON_CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # prompt + max_new_tokens > the model's context
REASON_PROMPT_TOO_LONG = "prompt_too_long"  # the prompt is above --max-prompt-tokens
REASON_INVALID_RESPONSE_FORMAT = "invalid_response_format"  # a JSON Schema the grammar compiler refuses


def error_metadata(error: Exception) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries an error's field and reason (empty when it has neither)."""
    pairs = []
    if getattr(error, "field", None):
        pairs.append((ERROR_FIELD_KEY, error.field))
    if getattr(error, "reason", None):
        pairs.append((ERROR_REASON_KEY, error.reason))
    return tuple(pairs)


def metadata_value(metadata, key: str) -> str | None:
    """The value of `key` in gRPC (trailing) metadata, or None."""
    for k, v in metadata or ():
        if k == key:
            return v if isinstance(v, str) else v.decode("utf-8", "replace")
    return None


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

    def __init__(self, message: str, retry_after_s: float | None = None, **kwargs):
        super().__init__(message, **kwargs)
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
    try:
        trailing = error.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - an error raised before any call carries no metadata
        trailing = ()
    return cls(f"{context}: {details}", field=metadata_value(trailing, ERROR_FIELD_KEY),
               reason=metadata_value(trailing, ERROR_REASON_KEY))
