"""Domain errors and the one place that maps them to and from gRPC status codes.

Engines raise these; servicers never build status codes by hand (services.error_interceptor does).
The SDK raises the same classes from a failed call (from_rpc_error) and exports them under its public
names in glitches.errors. Each message says what to change, because it reaches the user verbatim.
"""

from __future__ import annotations

import grpc


class GlitchesError(Exception):
    """Base of every GLITCHES error: raised by servers (mapped to its status by the error interceptor)
    and by the SDK (glitches.errors re-exports these classes under its public names).

    `status_code` is the gRPC status (a class attribute of each subclass; the base's instances may carry
    any other code, e.g. INTERNAL or UNIMPLEMENTED from a server); `code` is its name ("INVALID_ARGUMENT").
    `message` says what to change and is `str(error)`; it reaches the user verbatim as the status details.
    `field` names the request field at fault (a SamplingParams/GenerateRequest field name such as
    "max_new_tokens", "prompt", "model", "response_format") and `reason` is a machine-readable
    cause (one of the REASON_* below); both travel as trailing metadata (ERROR_FIELD_KEY,
    ERROR_REASON_KEY) so clients map them without parsing the message. `retry_after_s` (seconds, mostly
    on RESOURCE_EXHAUSTED) says when a retry may succeed; it travels as RETRY_AFTER_KEY.
    """

    status_code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str = "", field: str | None = None, reason: str | None = None,
                 retry_after_s: float | None = None, status_code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason
        self.retry_after_s = retry_after_s
        if status_code is not None:
            self.status_code = status_code

    @property
    def code(self) -> str:
        """The gRPC status name, e.g. "UNAVAILABLE"."""
        return self.status_code.name


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
    status_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GlitchesError):
    status_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GlitchesError):
    status_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(GlitchesError):
    status_code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(GlitchesError):
    status_code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(GlitchesError):
    status_code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None, **kwargs):
        super().__init__(message, retry_after_s=retry_after_s, **kwargs)


RETRY_AFTER_KEY = "retry-after-ms"  # trailing metadata of RESOURCE_EXHAUSTED: milliseconds until a retry may succeed


def retry_after_metadata(retry_after_s: float | None) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that tells a client when to retry (empty when unknown)."""
    if retry_after_s is None:
        return ()
    return ((RETRY_AFTER_KEY, str(max(1, round(retry_after_s * 1000)))),)


class Unavailable(GlitchesError):
    status_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(GlitchesError):
    status_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(GlitchesError):
    status_code = grpc.StatusCode.CANCELLED


class Unauthenticated(GlitchesError):
    status_code = grpc.StatusCode.UNAUTHENTICATED


class WorkerLost(Unavailable):
    """A worker died, froze or vanished during a request (its call failed UNAVAILABLE, its stream stalled or
    ended early): the request can continue on another worker. `worker_id` names the one lost."""

    def __init__(self, message: str, worker_id: str = "", **kwargs):
        super().__init__(message, **kwargs)
        self.worker_id = worker_id


class KvRefused(GlitchesError):
    """A decode worker refused a request's KV: no room for it now (RESOURCE_EXHAUSTED) or a KV token it would
    not take (PERMISSION_DENIED). Nothing moved: the request can try another decode worker."""

    def __init__(self, message: str, worker_id: str = "", **kwargs):
        super().__init__(message, **kwargs)
        self.worker_id = worker_id


class WorkerFull(ResourceExhausted):
    """A worker has no slot or KV free for the request now (a GPU refusing GPU assist): place it again shortly."""


# The one table from a status code to its error class; codes not here become the base class.
_CLASS_OF_CODE: dict[grpc.StatusCode, type[GlitchesError]] = {cls.status_code: cls for cls in (
    InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, PermissionDenied, ResourceExhausted,
    Unavailable, DeadlineExceeded, Cancelled, Unauthenticated)}


def error_for(status_code: grpc.StatusCode, message: str, **details) -> GlitchesError:
    """The error of `status_code`, of its class (InvalidArgument for INVALID_ARGUMENT...) or else of the
    base class carrying the code; `details`: field, reason, retry_after_s."""
    cls = _CLASS_OF_CODE.get(status_code)
    return cls(message, **details) if cls else GlitchesError(message, status_code=status_code, **details)


def from_rpc_error(error: grpc.RpcError, context: str = "") -> GlitchesError:
    """The domain error of a failed gRPC call, with its field, reason and retry-after from the trailing metadata.

    Without `context` (the SDK: the caller's own call failed) the code is kept as is. With `context`
    (a server re-raising a downstream call's failure, e.g. "decode on fpga-0 failed") the message is
    prefixed with it, and a downstream DEADLINE_EXCEEDED becomes Unavailable: the worker was too slow,
    which is not the caller's own deadline running out."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else str(error)) or ""
    try:
        trailing = error.trailing_metadata() or ()
    except Exception:  # noqa: BLE001 - an error raised before any call carries no metadata
        trailing = ()
    if context:
        details = f"{context}: {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            code = grpc.StatusCode.UNAVAILABLE
    return error_for(code, details, field=metadata_value(trailing, ERROR_FIELD_KEY),
                     reason=metadata_value(trailing, ERROR_REASON_KEY),
                     retry_after_s=_retry_after_s(metadata_value(trailing, RETRY_AFTER_KEY)))


def _retry_after_s(milliseconds: str | None) -> float | None:
    """RETRY_AFTER_KEY's value in seconds (None when absent or not a number)."""
    try:
        return None if milliseconds is None else int(milliseconds) / 1000
    except ValueError:
        return None
