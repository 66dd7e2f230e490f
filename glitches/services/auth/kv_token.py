"""KV-transfer tokens: the scheduler authorises each KV transfer, the receiving worker checks it.

A token is `v1.<expiry>.<mac>`: expiry in unix seconds (an integer), and mac the hex
HMAC-SHA256, under a secret the scheduler and the KV-receiving workers share, of
(version, request id, receiving worker id, expiry), each length-prefixed so no two
field tuples encode alike. The GPU worker only forwards it (PrefillRequest.target.kv_token
-> KvHeader.kv_token); it needs no secret. A receiver accepts a token once: it is for
this request id, this worker id, not expired, and not seen before (used tokens are kept
until they expire, at most `max_remembered` of them).

Partial transfers (issue #27, DecodeTarget.held_prefix_tokens = held > 0): the mac also covers
("held", held), so a token issued for "send [held, prompt), the card holds the rest" authorises neither
a full transfer nor one at another offset, and a full transfer's token no partial one. For held = 0
the fields are exactly the four above: tokens issued before partial transfers stay valid.

Checking costs one HMAC on the receiver and adds no round trip: the token travels in
messages that are sent anyway.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import os
import secrets
import threading
import time
from pathlib import Path

from glitches.services.runtime.errors import InvalidArgument, PermissionDenied, ResourceExhausted

VERSION = "v1"
SECRET_ENV = "GLITCHES_KV_TOKEN_SECRET"  # read only from the environment: never a flag (argv shows in ps)
MIN_SECRET_BYTES = 16  # 128 bits; `new_secret()` makes 32
DEFAULT_TTL_S = 60.0  # how long a token stays valid after the scheduler issues it, seconds
DEFAULT_MAX_REMEMBERED = 100_000  # used tokens a receiver keeps against replay (~100 B each)


def new_secret() -> str:
    """A fresh random secret: 32 bytes as 64 hex characters."""
    return secrets.token_hex(32)


def load_secret(path: str = "", value: str = "") -> bytes:
    """The secret from the file at `path` (surrounding whitespace dropped) or `value`; b"" when neither is set."""
    if path and value:
        raise InvalidArgument(f"the KV token secret is given twice (--kv-token-secret-file and {SECRET_ENV}); "
                              "give one")
    if path:
        try:
            value = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            raise InvalidArgument(f"cannot read the KV token secret file {path!r}: {error}; give a readable "
                                  "UTF-8 file holding the secret") from None
    secret = value.strip().encode("utf-8")
    if (path or value) and len(secret) < MIN_SECRET_BYTES:
        raise InvalidArgument(f"the KV token secret has {len(secret)} bytes, fewer than {MIN_SECRET_BYTES}; "
                              "use a long random one, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`")
    return secret


def secret_from_environment(path: str = "") -> bytes:
    """The secret from `path` or the GLITCHES_KV_TOKEN_SECRET variable (the CLI's one place for it)."""
    return load_secret(path, os.environ.get(SECRET_ENV, ""))


def _mac(secret: bytes, request_id: str, worker_id: str, expiry_unix_s: int, held_tokens: int = 0) -> str:
    parts = (VERSION, request_id, worker_id, str(expiry_unix_s))
    if held_tokens:  # a partial transfer: length prefixes keep the 6 fields apart from any 4
        parts += ("held", str(held_tokens))
    message = b"".join(f"{len(part.encode())}:".encode() + part.encode() for part in parts)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


class KvTokenIssuer:
    """The scheduler's side: one token per (attempt's request id, receiving worker)."""

    def __init__(self, secret: bytes, ttl_s: float = DEFAULT_TTL_S, clock=time.time):
        if len(secret) < MIN_SECRET_BYTES:
            raise InvalidArgument(f"a KV token secret needs at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self.ttl_s = ttl_s
        self._clock = clock  # unix seconds

    def issue(self, request_id: str, worker_id: str, held_tokens: int = 0) -> str:
        """held_tokens: the prefix (tokens) the receiver already holds, for a partial transfer; 0 a full one."""
        expiry = int(self._clock() + self.ttl_s) + 1  # +1: rounding never shortens the ttl
        return f"{VERSION}.{expiry}.{_mac(self._secret, request_id, worker_id, expiry, held_tokens)}"


class KvTokenVerifier:
    """A receiving worker's side: accept each token once, for this worker and the request it names."""

    def __init__(self, secret: bytes, clock=time.time, max_remembered: int = DEFAULT_MAX_REMEMBERED):
        if len(secret) < MIN_SECRET_BYTES:
            raise InvalidArgument(f"a KV token secret needs at least {MIN_SECRET_BYTES} bytes")
        self._secret = secret
        self._clock = clock  # unix seconds
        self.max_remembered = max_remembered
        self._used: set[str] = set()  # macs of accepted tokens not yet expired
        self._expiries: list[tuple[int, str]] = []  # heap of (expiry, mac) over _used
        self._lock = threading.Lock()

    def remembered(self) -> int:
        with self._lock:
            return len(self._used)

    def check(self, token: str, request_id: str, worker_id: str, held_tokens: int = 0) -> None:
        """Accept `token` for KV of `request_id` sent to `worker_id` (a partial transfer when held_tokens > 0:
        the receiver holds tokens [0, held_tokens)), or raise PermissionDenied saying why."""
        if not token:
            raise PermissionDenied(f"KV transfer for request {request_id!r} carries no token; this worker accepts KV "
                                   "only with a token the scheduler issued (KvHeader.kv_token)")
        version, _, rest = token.partition(".")
        expiry_text, _, mac = rest.partition(".")
        if version != VERSION or not expiry_text.isdigit() or len(expiry_text) > 12 or not mac:
            raise PermissionDenied(f"KV transfer for request {request_id!r}: the token is malformed "
                                   f"(expected {VERSION}.<expiry>.<mac>)")
        expiry = int(expiry_text)
        expected = _mac(self._secret, request_id, worker_id, expiry, held_tokens)
        if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace")):
            what = f"a partial transfer from token {held_tokens}" if held_tokens else "a full transfer"
            raise PermissionDenied(f"KV transfer for request {request_id!r}: the token was not issued for this "
                                   f"request and worker ({worker_id}) as {what}, or under another secret (are "
                                   f"{SECRET_ENV} of the scheduler and this worker the same?)")
        now = self._clock()
        if expiry < now:
            raise PermissionDenied(f"KV transfer for request {request_id!r}: the token expired {now - expiry:.0f} s "
                                   "ago (are the scheduler's and this worker's clocks in step?)")
        with self._lock:
            self._forget_expired(now)
            if mac in self._used:
                raise PermissionDenied(f"KV transfer for request {request_id!r}: the token was already used; "
                                       "each transfer needs a fresh one")
            if len(self._used) >= self.max_remembered:
                raise ResourceExhausted(f"this worker holds {self.max_remembered} unexpired KV tokens; "
                                        "retry when some expire")
            self._used.add(mac)
            heapq.heappush(self._expiries, (expiry, mac))

    def _forget_expired(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] < now:
            self._used.discard(heapq.heappop(self._expiries)[1])
