"""Typed errors of the SDK, one per gRPC status a caller can act on.

These are the classes of services.errors (one hierarchy for servers and SDK), under the SDK's public
names. Each has `.code` (the gRPC status name, e.g. "INVALID_ARGUMENT"), `.message` (what to change;
also `str(error)`), and where known `.field`, `.reason` and `.retry_after_s`.
"""

from __future__ import annotations

from glitches.services.runtime.errors import (AlreadyExists, Cancelled, DeadlineExceeded, FailedPrecondition, GlitchesError,
                             InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated,
                             Unavailable, error_for, from_rpc_error)

InvalidArgumentError = InvalidArgument  # the request itself is wrong; the message says what to change
UnavailableError = Unavailable  # no worker or scheduler could take the request now; retrying later may work
ResourceExhaustedError = ResourceExhausted  # capacity (KV memory, queue, rate limit) ran out; see retry_after_s
DeadlineExceededError = DeadlineExceeded  # the call did not finish within the client's timeout_s (retries included)
UnauthenticatedError = Unauthenticated  # the scheduler wants an API key the call did not carry, or a wrong one
PermissionDeniedError = PermissionDenied  # the credentials are valid but not allowed to do this
NotFoundError = NotFound  # something the request names does not exist
CancelledError = Cancelled  # the call was cancelled (by this client, or by the server while it shut down)
FailedPreconditionError = FailedPrecondition  # the system is not in a state to do this (e.g. a card not loaded)
AlreadyExistsError = AlreadyExists  # something the request creates exists already

__all__ = ["AlreadyExistsError", "CancelledError", "DeadlineExceededError", "FailedPreconditionError",
           "GlitchesError", "InvalidArgumentError", "NotFoundError", "PermissionDeniedError",
           "ResourceExhaustedError", "UnauthenticatedError", "UnavailableError", "error_for", "from_rpc_error",
           "invalid_argument"]


def invalid_argument(error: Exception) -> InvalidArgument:
    """A request the SDK could not even encode (a number out of its field's range, a lone surrogate)."""
    return InvalidArgument(f"the request cannot be encoded: {error}")
