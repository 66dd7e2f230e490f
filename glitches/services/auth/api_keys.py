"""API keys for the client-facing services: the scheduler's gRPC API and the gateway's HTTP API.

Keys come from a file (one per line; blank lines and `# comments` skipped) and/or a comma-separated
list (GLITCHES_API_KEYS). No keys configured means the API is open, as before. Clients send
`authorization: Bearer <key>` (gRPC metadata or HTTP header); health, reflection and metrics stay
open so probes need no key. Keys are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import grpc

from glitches.services.runtime.errors import ResourceExhausted, retry_after_metadata
from glitches.services.runtime.handlers import replace_behaviour
from glitches.services.auth.rate_limit import KeyRateLimiter

from glitches.services.runtime.errors import InvalidArgument

METADATA_KEY = "authorization"  # gRPC metadata keys are lower-case


def load_api_keys(path: str = "", listed: str = "") -> tuple[str, ...]:
    """Keys from the file at `path` and the comma-separated `listed`; () when both are empty."""
    keys = [k.strip() for k in listed.split(",") if k.strip()]
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as error:
            raise InvalidArgument(f"cannot read the API keys file {path!r}: {error.strerror}; "
                                  "give a readable file with one key per line") from None
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise InvalidArgument(f"the API keys file {path!r} holds no key; put one key per line")
    return tuple(dict.fromkeys(keys))


def tenant_salt(key: str | None, keys: tuple[str, ...]) -> bytes:
    """The prefix-cache salt of the tenant that authenticated with `key` (SHA-256 of it, 32 bytes), so two
    keys never share cached KV; b"" (the default tenant) when no keys are configured or `key` is not one."""
    if not keys or not is_valid(key, keys):
        return b""
    return hashlib.sha256(b"glitches-tenant\0" + key.encode()).digest()


def bearer_key(value: str | None) -> str | None:
    """The key of an `authorization: Bearer <key>` value (None when absent or another scheme)."""
    if not value:
        return None
    scheme, _, key = value.partition(" ")
    return key.strip() or None if scheme.lower() == "bearer" else None


def is_valid(key: str | None, keys: tuple[str, ...]) -> bool:
    if key is None:
        return False
    given = key.encode("utf-8", "replace")
    return any(hmac.compare_digest(given, k.encode("utf-8")) for k in keys)


def refusal(key: str | None) -> str:
    if key is None:
        return "missing API key: send it as `authorization: Bearer <key>`"
    return "invalid API key: ask the operator for a key from the server's API keys file"


def _deny(handler: grpc.RpcMethodHandler, message: str,
          code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED,
          trailing: tuple[tuple[str, str], ...] = ()) -> grpc.RpcMethodHandler:
    def abort(request_or_iterator, context):
        if trailing:
            context.set_trailing_metadata(trailing)
        context.abort(code, message)

    return replace_behaviour(handler, lambda _behaviour, _kind: abort)


class ApiKeyInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for calls to `services` (full names) without a valid key; others pass."""

    def __init__(self, keys: tuple[str, ...], services: tuple[str, ...], limiter: KeyRateLimiter | None = None):
        self.keys = keys
        self.prefixes = tuple(f"/{name}/" for name in services)
        self.limiter = limiter  # requests per minute per key; None: unlimited

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(self.prefixes):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        key = bearer_key(metadata.get(METADATA_KEY))
        if not is_valid(key, self.keys):
            return _deny(handler, refusal(key))
        if self.limiter is not None:
            try:
                self.limiter.admit(key)
            except ResourceExhausted as error:
                return _deny(handler, str(error), grpc.StatusCode.RESOURCE_EXHAUSTED,
                             retry_after_metadata(error.retry_after_s))
        return handler
