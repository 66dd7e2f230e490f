"""Per-client request rates on the gateway, answered with HTTP 429 in OpenAI's error shape.

Two limits, each requests per minute as a token bucket (services.rate_limit), each optional:
- per client, on every /v1/ request: the client is its API key when the gateway requires keys,
  else its IP address (as uvicorn reports it: behind a proxy, the forwarded address only from
  proxies uvicorn trusts, see its --forwarded-allow-ips);
- per OpenAI `user` field within a client, on completions, in addition: a service with one key
  can hold each of its end users to a rate. A request without `user` counts only per client; the
  field is the client's word, so it cannot lift the per-client limit.
The scheduler behind sees only the gateway's own key, so these limits live here.
"""

from __future__ import annotations

import hashlib
import math

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from glitches.gateway.errors import error_body
from glitches.services.auth.api_keys import bearer_key
from glitches.services.auth.rate_limit import KeyRateLimiter


def client_of(scope, keyed: bool) -> tuple[str, str]:
    """(bucket key, how to name it in a message): the API key when keyed, else the client's address."""
    if keyed:
        key = bearer_key(Headers(scope=scope).get("authorization")) or ""
        return "key:" + key, "this API key"
    host = (scope.get("client") or ("unknown", 0))[0]
    return "ip:" + host, f"client address {host}"


def too_many_requests(limiter: KeyRateLimiter, wait_s: float, who: str) -> JSONResponse:
    """429 with Retry-After (whole seconds, rounded up) and retry-after-ms, which OpenAI's clients honour."""
    message = (f"{who} is over its limit of {limiter.requests_per_minute:g} requests per minute on this gateway; "
               f"retry in {wait_s:.1f} s")
    return JSONResponse(error_body(message, "rate_limit_error", code="rate_limit_exceeded"), status_code=429,
                        headers={"Retry-After": str(max(1, math.ceil(wait_s))),
                                 "retry-after-ms": str(max(1, math.ceil(wait_s * 1000)))})


class ClientRateLimitMiddleware:
    """Counts every /v1/ request against its client's bucket; past the rate, 429 before any work."""

    def __init__(self, app, limiter: KeyRateLimiter, keyed: bool):
        self.app = app
        self.limiter = limiter
        self.keyed = keyed  # the gateway requires API keys (this middleware runs after their check)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        key, who = client_of(scope, self.keyed)
        wait_s = self.limiter.take(key)
        if wait_s <= 0:
            return await self.app(scope, receive, send)
        await too_many_requests(self.limiter, wait_s, who)(scope, receive, send)


def check_user(limiter: KeyRateLimiter | None, scope, keyed: bool, user: str | None) -> JSONResponse | None:
    """None when the request may go on; else the 429 for its (client, `user`) pair."""
    if limiter is None or not user:
        return None
    client, _ = client_of(scope, keyed)
    wait_s = limiter.take(f"{client}\x00user:" + hashlib.sha256(user.encode("utf-8", "replace")).hexdigest())
    return too_many_requests(limiter, wait_s, f"user {user[:64]!r}") if wait_s > 0 else None
