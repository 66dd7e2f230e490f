"""Per-request authorisation of worker RPCs, without TLS: the scheduler signs, each worker checks.

The scheduler (the only holder of the secret besides the workers) issues, for every worker
call it makes, a token `r1.<expiry>.<mac>`: expiry in unix seconds, mac the hex HMAC-SHA256
of (`r1`, purpose, request id, worker id, expiry), each length-prefixed. Purposes are
"prefill", "decode", "release", "renew" (RenewKvHolds), "warm" (WarmPrefix) and "evict" (EvictCache, the
operator's, with an empty request id: `glitches evict-cache` signs it with the same secret). A
worker with the secret takes Prefill, Decode, Release, RenewKvHolds, WarmPrefix and EvictCache only with a
token for that purpose, that request id, itself, and not expired; otherwise PERMISSION_DENIED.
So a caller without the secret can neither run work on a worker nor decode, free or keep alive another request's KV. Unlike
KV tokens (glitches/services/auth/kv_token.py) these may be presented more than once within their expiry
(a Release retried): they authorise one action on one request, not one transfer. Sniffing a
token off a plaintext link still lets the sniffer do that action until it expires; mTLS
(glitches/services/auth/peer_roles.py) closes that.

The secret is the cluster's KV token secret (GLITCHES_KV_TOKEN_SECRET or
--kv-token-secret-file), now given to GPU workers as well.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from glitches.services.runtime.errors import InvalidArgument, PermissionDenied
from glitches.services.auth.kv_token import MIN_SECRET_BYTES, SECRET_ENV

VERSION = "r1"
PURPOSES = ("prefill", "decode", "release", "renew", "evict", "warm")  # evict: EvictCache, request id ""; warm: WarmPrefix
DEFAULT_TTL_S = 60.0  # seconds a token stays valid after it is issued (a call is checked when it starts)


def _mac(secret: bytes, purpose: str, request_id: str, worker_id: str, expiry_unix_s: int) -> str:
    message = b"".join(f"{len(part.encode())}:".encode() + part.encode()
                       for part in (VERSION, purpose, request_id, worker_id, str(expiry_unix_s)))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _checked_secret(secret: bytes) -> bytes:
    if len(secret) < MIN_SECRET_BYTES:
        raise InvalidArgument(f"a request-auth secret needs at least {MIN_SECRET_BYTES} bytes")
    return secret


class RequestAuthIssuer:
    """The scheduler's side."""

    def __init__(self, secret: bytes, ttl_s: float = DEFAULT_TTL_S, clock=time.time):
        self._secret = _checked_secret(secret)
        self.ttl_s = ttl_s
        self._clock = clock

    def issue(self, purpose: str, request_id: str, worker_id: str) -> str:
        if purpose not in PURPOSES:
            raise InvalidArgument(f"unknown request-auth purpose {purpose!r}")
        expiry = int(self._clock() + self.ttl_s) + 1
        return f"{VERSION}.{expiry}.{_mac(self._secret, purpose, request_id, worker_id, expiry)}"


class RequestAuthVerifier:
    """A worker's side: `check` raises PermissionDenied saying why a call is refused."""

    def __init__(self, secret: bytes, clock=time.time):
        self._secret = _checked_secret(secret)
        self._clock = clock
        self.worker_id = ""  # set once the server's port (and so the worker id) is known

    def check(self, token: str, purpose: str, request_id: str) -> None:
        what = f"{purpose} of request {request_id!r}"
        if not token:
            raise PermissionDenied(f"{what} carries no auth_token; this worker takes {purpose} calls only with the "
                                   "scheduler's authorisation for that request")
        version, _, rest = token.partition(".")
        expiry_text, _, mac = rest.partition(".")
        if version != VERSION or not expiry_text.isdigit() or len(expiry_text) > 12 or not mac:
            raise PermissionDenied(f"{what}: the auth_token is malformed (expected {VERSION}.<expiry>.<mac>)")
        expiry = int(expiry_text)
        expected = _mac(self._secret, purpose, request_id, self.worker_id, expiry)
        if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
            raise PermissionDenied(f"{what}: the auth_token was not issued for this call, request and worker "
                                   f"({self.worker_id}), or under another secret (is {SECRET_ENV} the same on the "
                                   "scheduler and this worker?)")
        now = self._clock()
        if expiry < now:
            raise PermissionDenied(f"{what}: the auth_token expired {now - expiry:.0f} s ago (are the clocks of the "
                                   "scheduler and this worker in step?)")


class OpenAccess:
    """A worker without a secret: every call is let through (it warns at start-up)."""

    worker_id = ""

    def check(self, token: str, purpose: str, request_id: str) -> None:
        return None


class AuthBoundWorkerId:
    """A worker servicer's `worker_id`, bound to its request auth (`self.auth`, a RequestAuthVerifier or
    OpenAccess): the runtime sets the id once the server's port is known, and the tokens the verifier
    accepts name that id, so setting one sets both."""

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @worker_id.setter
    def worker_id(self, value: str) -> None:
        self._worker_id = value
        self.auth.worker_id = value
