"""Serving the gateway with uvicorn, bounded against slow and idle clients (slowloris).

uvicorn (0.54, h11) offers `timeout_keep_alive` (an idle kept-alive connection is closed after it),
`h11_max_incomplete_event_size` (request line + headers larger than this are a 400) and
`limit_concurrency` (connections + tasks above it are answered 503), but no timeout for a request's
headers: a connection that sends a header byte every few seconds stays open for good, since every
byte re-arms nothing. `HeaderTimeoutProtocol` adds one: from the moment a connection opens (and again
after each response on a kept-alive connection) the request line and headers must be complete within
`header_timeout_s`, or the connection is closed. A slow body is bounded in the app
(glitches/gateway/request_body.py `_read_body`: 408 after DEFAULT_BODY_TIMEOUT_S).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class ServerLimits:
    header_timeout_s: float = 10.0  # request line + headers must arrive within this, seconds
    keep_alive_s: int = 5  # an idle kept-alive connection is closed after this, seconds (uvicorn's default)
    max_header_bytes: int = 16 * 1024  # request line + headers above this: 400 (h11's default, made explicit)
    max_concurrency: int = 1024  # connections + in-flight requests above this: 503


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request headers take over `header_timeout_s`."""

    header_timeout_s = ServerLimits.header_timeout_s

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._headed_cycle = None  # the request cycle whose headers arrived in time
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if getattr(self, "_header_timer", None) is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection from %s: no complete request headers within %g s",
                             self.client, self.header_timeout_s)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and self.cycle is not self._headed_cycle:  # a request's headers arrived
            self._headed_cycle = self.cycle
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # kept alive: the next request's headers get the same deadline
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def protocol_class(limits: ServerLimits) -> type[HeaderTimeoutProtocol]:
    return type("GatewayHttpProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": limits.header_timeout_s})


def uvicorn_options(limits: ServerLimits) -> dict:
    """Keyword arguments of uvicorn.run that apply `limits`."""
    return dict(http=protocol_class(limits), timeout_keep_alive=limits.keep_alive_s,
                h11_max_incomplete_event_size=limits.max_header_bytes, limit_concurrency=limits.max_concurrency)
