"""Every daemon's HTTP side port: /healthz, /readyz and Prometheus /metrics.

/healthz   200 while the process answers at all (liveness).
/readyz    200 once the daemon can take work (model loaded, registered in Redis), else
           503 with the reason as the body.
/metrics   the role's prometheus-client registry, text exposition format.
Read-only JSON routes a daemon adds (HttpSide.add_json_route), e.g. the GPU worker's
/steps?since=<seq> (glitches/gpu_worker/step_log.py); a bad query answers 400 with the reason.

It starts before the model loads, so /healthz answers during a long start-up and
/readyz says what it is waiting for. A ThreadingHTTPServer on daemon threads:
scrapes never wait for each other, and the server never keeps the process alive.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# Returns "" when ready, else why not (e.g. "loading the model").
ReadinessCheck = Callable[[], str]
# A read-only JSON route: the query's parameters -> the JSON body; ValueError -> 400 with its message.
JsonRoute = Callable[[dict[str, str]], dict]


class Readiness:
    """What /readyz reports: a reason while starting, then a live check once serving."""

    def __init__(self, reason: str = "starting"):
        self._reason = reason
        self._check: ReadinessCheck | None = None
        self._lock = threading.Lock()

    def waiting_for(self, reason: str) -> None:
        with self._lock:
            self._reason, self._check = reason, None

    def serving(self, check: ReadinessCheck) -> None:
        with self._lock:
            self._check = check

    def why_not_ready(self) -> str:
        with self._lock:
            reason, check = self._reason, self._check
        if check is None:
            return reason
        try:
            return check()
        except Exception as error:  # noqa: BLE001 - a failing check means not ready, with the reason
            return f"readiness check failed: {type(error).__name__}: {error}"


def _handler(registry: CollectorRegistry, readiness: Readiness, routes: dict[str, JsonRoute]):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            path, _, query = self.path.partition("?")
            if path == "/healthz":
                self._send(200, b"ok\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                reason = readiness.why_not_ready()
                body = (f"not ready: {reason}\n" if reason else "ready\n").encode()
                self._send(503 if reason else 200, body, "text/plain; charset=utf-8")
            elif path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in routes:
                try:
                    body = routes[path](dict(parse_qsl(query)))
                except ValueError as error:
                    self._send(400, f"bad query: {error}\n".encode(), "text/plain; charset=utf-8")
                    return
                self._send(200, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):  # scrapes every few seconds would flood the daemon's log
            log.debug("%s %s", self.address_string(), fmt % args)

    return Handler


class HttpSide:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, readiness: Readiness):
        """Bind host:port (0 = any free port) and serve on a daemon thread."""
        try:
            self.routes: dict[str, JsonRoute] = {}
            self.server = ThreadingHTTPServer((host, port), _handler(registry, readiness, self.routes))
        except OSError as error:
            raise OSError(f"could not bind the HTTP side port {host}:{port}: {error}; "
                          f"pick another --http-port (0 = any free port)") from error
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="http-side", daemon=True)
        self._thread.start()
        log.info("HTTP side port on %s:%d (/healthz /readyz /metrics)", host, self.port)

    def add_json_route(self, path: str, route: JsonRoute) -> None:
        """Serve GET `path` (e.g. "/steps") as route(query parameters) in JSON, from now on."""
        self.routes[path] = route

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
