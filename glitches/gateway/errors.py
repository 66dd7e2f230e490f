"""OpenAI-style error bodies, and the HTTP status of each gRPC status the scheduler returns."""

from __future__ import annotations

import math

from starlette.responses import JSONResponse

from glitches.errors import GlitchesError

# gRPC status name -> (HTTP status, OpenAI error type)
_HTTP_OF_GRPC = {
    "INVALID_ARGUMENT": (400, "invalid_request_error"),
    "OUT_OF_RANGE": (400, "invalid_request_error"),
    "FAILED_PRECONDITION": (400, "invalid_request_error"),
    "UNAUTHENTICATED": (401, "authentication_error"),
    "PERMISSION_DENIED": (403, "permission_error"),
    "NOT_FOUND": (404, "not_found_error"),
    "ALREADY_EXISTS": (409, "invalid_request_error"),
    "RESOURCE_EXHAUSTED": (429, "rate_limit_error"),
    "CANCELLED": (499, "cancelled"),
    "UNIMPLEMENTED": (501, "server_error"),
    "UNAVAILABLE": (503, "service_unavailable"),
    "DEADLINE_EXCEEDED": (504, "timeout"),
}


class RequestError(Exception):
    """A request the gateway refuses before it reaches the scheduler (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def http_status_of(error: GlitchesError) -> tuple[int, str]:
    """(HTTP status, OpenAI error type) for an SDK error; unknown codes are 500 server_error."""
    return _HTTP_OF_GRPC.get(error.code, (500, "server_error"))


# the scheduler's reason for an INVALID_ARGUMENT (services.errors.REASON_*) -> (HTTP status, OpenAI code)
_REASONS = {"model_not_found": (404, "model_not_found"), "context_length_exceeded": (400, "context_length_exceeded"),
            "prompt_too_long": (400, "context_length_exceeded")}


def from_sdk_error(error: GlitchesError, params: dict[str, str] | None = None) -> JSONResponse:
    """The OpenAI error of an SDK error. `params` maps the scheduler's field names (error.field: "prompt",
    "max_new_tokens", ...) to this route's body fields ("messages", "max_completion_tokens", ...)."""
    status, error_type = http_status_of(error)
    code = error.code.lower()
    field = getattr(error, "field", None)
    param = (params or {}).get(field, field) if field else None
    reason = getattr(error, "reason", None)
    if reason in _REASONS and error.code == "INVALID_ARGUMENT":
        status, code = _REASONS[reason]
        error_type = "invalid_request_error"
    headers = None
    if error.retry_after_s is not None:  # the scheduler said when: OpenAI's clients wait that long
        headers = {"Retry-After": str(max(1, math.ceil(error.retry_after_s))),
                   "retry-after-ms": str(max(1, math.ceil(error.retry_after_s * 1000)))}
    return JSONResponse(error_body(error.message, error_type, param, code), status_code=status, headers=headers)


def from_request_error(error: RequestError) -> JSONResponse:
    error_type = "not_found_error" if error.status == 404 else "invalid_request_error"
    return JSONResponse(error_body(error.message, error_type, error.param, error.code), status_code=error.status)
