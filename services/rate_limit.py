"""Requests per key per minute, as a token bucket per key (refilled continuously)."""

from __future__ import annotations

import threading
import time

from services.errors import ResourceExhausted


class KeyRateLimiter:
    def __init__(self, requests_per_minute: float, clock=time.monotonic):
        self.rate_per_s = requests_per_minute / 60.0
        self.burst = max(1.0, requests_per_minute)  # a full minute's worth may come at once
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._lock = threading.Lock()

    def admit(self, key: str) -> None:
        """Take one request from the key's bucket, or RESOURCE_EXHAUSTED saying when to retry."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait_s = (1.0 - tokens) / self.rate_per_s
                raise ResourceExhausted(f"this API key is over its limit of {self.rate_per_s * 60:g} requests per "
                                        f"minute; retry in {wait_s:.1f} s")
            self._buckets[key] = (tokens - 1.0, now)
