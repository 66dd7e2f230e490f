"""API keys for the client-facing services: the scheduler's gRPC API and the gateway's HTTP API.

Keys come from a file (one per line; blank lines and `# comments` skipped) and/or a comma-separated
list (GLITCHES_API_KEYS). No keys configured means the API is open, as before. Clients send
`authorization: Bearer <key>` (gRPC metadata or HTTP header); health, reflection and metrics stay
open so probes need no key. Keys are compared in constant time.

A line of the file may name a tenant after the key, `<key> <tenant>`: keys with the same tenant name
share one prefix-cache salt (one tenant's cached prompt shortens the other's TTFT), which is how an
operator shares a cache between keys on purpose; a key alone is its own tenant. The salt is derived
here from what the server authenticated, never taken from the client.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping
from pathlib import Path

import grpc

from glitches.services.runtime.errors import ResourceExhausted, retry_after_metadata
from glitches.services.runtime.handlers import replace_behaviour
from glitches.services.auth.rate_limit import KeyRateLimiter

from glitches.services.runtime.errors import InvalidArgument

METADATA_KEY = "authorization"  # gRPC metadata keys are lower-case


TENANT_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,128}")  # the tenant column of the keys file


def read_api_keys(path: str = "", listed: str = "") -> dict[str, str]:
    """Key -> tenant name ("" for a key alone) from the file at `path` and the comma-separated `listed`
    (keys alone); {} when both are empty. InvalidArgument for an unreadable or keyless file, a line of
    more than two fields, a bad tenant name, or one key given two tenants."""
    tenants = {k.strip(): "" for k in listed.split(",") if k.strip()}
    if not path:
        return tenants
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise InvalidArgument(f"cannot read the API keys file {path!r}: {error.strerror}; "
                              "give a readable file with one key per line") from None
    entries = 0
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) > 2:
            raise InvalidArgument(f"the API keys file {path!r}, line {number}: {len(fields)} fields; write "
                                  "`<key>` or `<key> <tenant>` (a key holds no spaces)")
        key, tenant = fields[0], fields[1] if len(fields) == 2 else ""
        if tenant and not TENANT_NAME.fullmatch(tenant):
            raise InvalidArgument(f"the API keys file {path!r}, line {number}: tenant name {tenant[:40]!r} "
                                  "must be 1-128 characters of letters, digits and . _ : @ -")
        if tenants.get(key, "") and tenant and tenants[key] != tenant:
            raise InvalidArgument(f"the API keys file {path!r}, line {number}: a key listed before with tenant "
                                  f"{tenants[key]!r} is given tenant {tenant!r}; give each key one tenant")
        tenants[key] = tenant or tenants.get(key, "")
        entries += 1
    if not entries:
        raise InvalidArgument(f"the API keys file {path!r} holds no key; put one key per line")
    return tenants


def load_api_keys(path: str = "", listed: str = "") -> tuple[str, ...]:
    """The keys of read_api_keys (the file's, then `listed`'s, without repeats); () when both are empty."""
    return tuple(read_api_keys(path, listed))


def shared_tenants(tenants: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """(key, tenant) of the keys that name a tenant, for settings that keep only those."""
    return tuple((key, tenant) for key, tenant in tenants.items() if tenant)


def tenant_salt(key: str | None, keys: tuple[str, ...], tenants: Mapping[str, str] | None = None) -> bytes:
    """The prefix-cache salt of the tenant that authenticated with `key` (32 bytes): SHA-256 of its tenant
    name when `tenants` gives it one (keys of one tenant share it), else of the key itself, so two keys
    never share cached KV unless the operator put them in one tenant; b"" (the default tenant) when no
    keys are configured or `key` is not one. Names and keys hash under different labels, so a tenant
    named like some key does not share that key's salt."""
    if not keys or not is_valid(key, keys):
        return b""
    tenant = (tenants or {}).get(key, "")
    if tenant:
        return hashlib.sha256(b"glitches-tenant-name\0" + tenant.encode()).digest()
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
