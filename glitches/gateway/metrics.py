"""The gateway's Prometheus metrics (GET /metrics): requests by route and status, time to first token
and inter-token latency by route. Each Gateway has its own registry (several apps in one test process).

Routes are labelled by their template (`/v1/models/{model}`), anything unrouted as `other`, so a
client cannot grow the label set with random paths.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROUTES = ("/health", "/healthz", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions",
          "/v1/responses")


def route_label(path: str) -> str:
    if path in ROUTES:
        return path
    return "/v1/models/{model}" if path.startswith("/v1/models/") else "other"


class GatewayMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("glitches_gateway_requests", "HTTP requests answered, by route and status",
                                ("route", "status"), registry=self.registry)
        self.ttft = Histogram("glitches_gateway_ttft_seconds", "Request arrival to first token, seconds",
                              ("route",), buckets=_LATENCY_BUCKETS_S, registry=self.registry)
        self.inter_token = Histogram("glitches_gateway_inter_token_seconds", "Between consecutive tokens, seconds",
                                     ("route",), buckets=_LATENCY_BUCKETS_S, registry=self.registry)

    async def endpoint(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class TokenClock:
    """Observes one request's TTFT and inter-token gaps (call `token()` as each token arrives)."""

    def __init__(self, metrics: GatewayMetrics, route: str, arrived: float):
        self._metrics, self._route, self._arrived = metrics, route, arrived
        self._last: float | None = None

    def token(self) -> None:
        now = time.monotonic()
        if self._last is None:
            self._metrics.ttft.labels(self._route).observe(now - self._arrived)
        else:
            self._metrics.inter_token.labels(self._route).observe(now - self._last)
        self._last = now


class RequestCountMiddleware:
    """Pure ASGI middleware: counts each HTTP response by route and status (499: the client went away first)."""

    def __init__(self, app, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 499}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.requests.labels(route_label(scope.get("path", "")), str(status["code"])).inc()
