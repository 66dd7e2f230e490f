"""Bounded retries with exponential backoff, and one deadline across all attempts.

Only UNAVAILABLE is retried (the scheduler or every worker was unreachable or busy), and a stream
only before its first message: once text has reached the caller, a retry would repeat it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts the first try (1 = never retry). Backoff before retry k (k = 1, 2, ...) is
    min(max_backoff_s, initial_backoff_s * multiplier ** (k - 1)), times a random factor in [0.5, 1]."""

    max_attempts: int = 3
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    retry_codes: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE,)

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1 (1 = no retry), got {self.max_attempts}")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0 or self.multiplier < 1:
            raise ValueError("backoffs must be >= 0 seconds and multiplier >= 1")

    def backoff_s(self, retry: int) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return base * random.uniform(0.5, 1.0)


NO_RETRY = RetryPolicy(max_attempts=1)


class Deadline:
    """One deadline for a call and its retries (None: no deadline)."""

    def __init__(self, timeout_s: float | None):
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    def remaining_s(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - time.monotonic())

    def allows(self, wait_s: float) -> bool:
        """True when waiting wait_s still leaves time for another attempt."""
        return self.at is None or time.monotonic() + wait_s < self.at


def next_backoff_s(policy: RetryPolicy, error: grpc.RpcError, attempt: int, deadline: Deadline) -> float | None:
    """Seconds to wait before retrying after `attempt` (1-based) failed with `error`; None: do not retry."""
    if error.code() not in policy.retry_codes or attempt >= policy.max_attempts:
        return None
    wait_s = policy.backoff_s(attempt)
    return wait_s if deadline.allows(wait_s) else None
