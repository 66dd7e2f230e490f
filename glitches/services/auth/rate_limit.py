"""Requests per key per minute, as a token bucket per key (refilled continuously).

A key is whatever the caller counts by: an API key on the scheduler; on the gateway a
client's key or address, or a (client, OpenAI `user`) pair. Buckets that have refilled
completely are dropped (a new one starts full, so nothing changes), which bounds memory
by the keys seen within about one minute.
"""

from __future__ import annotations

import threading
import time

from glitches.services.runtime.errors import ResourceExhausted

PRUNE_AT = 10_000  # buckets held before full ones are dropped (then again at twice what is left)


class KeyRateLimiter:
    def __init__(self, requests_per_minute: float, clock=time.monotonic):
        if requests_per_minute <= 0:
            raise ValueError(f"requests_per_minute must be positive, got {requests_per_minute}")
        self.requests_per_minute = requests_per_minute
        self.rate_per_s = requests_per_minute / 60.0
        self.burst = max(1.0, requests_per_minute)  # a full minute's worth may come at once
        self._clock = clock  # seconds, monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill time)
        self._prune_at = PRUNE_AT
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one request from the key's bucket: 0.0 when admitted, else the seconds until one is free."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate_per_s
            self._buckets[key] = (tokens - 1.0, now)
            if len(self._buckets) >= self._prune_at:
                self._prune(now)
            return 0.0

    def admit(self, key: str, who: str = "this API key") -> None:
        """Take one request, or RESOURCE_EXHAUSTED saying when to retry."""
        wait_s = self.take(key)
        if wait_s > 0:
            raise ResourceExhausted(f"{who} is over its limit of {self.requests_per_minute:g} requests per "
                                    f"minute; retry in {wait_s:.1f} s", retry_after_s=wait_s)

    def tracked(self) -> int:
        """Buckets held now (keys seen recently)."""
        with self._lock:
            return len(self._buckets)

    def _prune(self, now: float) -> None:
        full = [key for key, (tokens, last) in self._buckets.items()
                if tokens + (now - last) * self.rate_per_s >= self.burst]
        for key in full:
            del self._buckets[key]
        self._prune_at = max(PRUNE_AT, 2 * len(self._buckets))
