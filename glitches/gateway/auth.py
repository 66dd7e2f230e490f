"""API keys on the gateway: an ASGI middleware that answers 401 (OpenAI's JSON error) to any /v1/
request without `Authorization: Bearer <key>` carrying a configured key. /healthz stays open."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from glitches.gateway.errors import error_body
from glitches.services.auth.api_keys import bearer_key, is_valid, refusal


class ApiKeyMiddleware:
    def __init__(self, app, keys: tuple[str, ...]):
        self.app = app
        self.keys = keys

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            return await self.app(scope, receive, send)
        key = bearer_key(Headers(scope=scope).get("authorization"))
        if is_valid(key, self.keys):
            return await self.app(scope, receive, send)
        reply = JSONResponse(error_body(refusal(key), "authentication_error", code="invalid_api_key"),
                             status_code=401, headers={"WWW-Authenticate": "Bearer"})
        await reply(scope, receive, send)
