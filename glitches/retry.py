"""Bounded retries with exponential backoff, and one deadline across all attempts.

One policy decides for both clients (RetryPolicy + Attempts: pure, no sleeping, no gRPC calls); two thin
drivers run it, `retrying` for glitches.client and `retrying_async` for glitches.aio. Each driver
takes `open_call(timeout_s)`, which starts one attempt and returns what to iterate (a streaming call, or
a one-element tuple/async generator around a unary call), and yields the messages of the attempt
that succeeds.

Only UNAVAILABLE is retried by default (the scheduler or every worker was unreachable or busy), and a
stream only before its first message: once text has reached the caller, a retry from scratch would
repeat it, so a Generate that has streamed tokens fails with the error instead.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc

from glitches.services.runtime.errors import from_rpc_error

Message = TypeVar("Message")


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

    def backoff_s(self, retry: int, jitter: float | None = None) -> float:
        """Seconds before retry `retry` (1-based); `jitter` in [0.5, 1] (None: drawn at random)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (retry - 1))
        return base * (random.uniform(0.5, 1.0) if jitter is None else jitter)


NO_RETRY = RetryPolicy(max_attempts=1)


class Deadline:
    """One deadline for a call and its retries (None: no deadline); `clock` is in seconds."""

    def __init__(self, timeout_s: float | None, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.at = None if timeout_s is None else clock() + timeout_s

    def remaining_s(self) -> float | None:
        return None if self.at is None else max(0.0, self.at - self._clock())

    def allows(self, wait_s: float) -> bool:
        """True when waiting wait_s still leaves time for another attempt."""
        return self.at is None or self._clock() + wait_s < self.at


class Attempts:
    """The attempts of one call under a policy and a deadline: after each failure, whether to retry and
    after how many seconds. Pure bookkeeping; the drivers do the waiting."""

    def __init__(self, policy: RetryPolicy, deadline: Deadline):
        self.policy = policy
        self.deadline = deadline
        self.made = 0  # attempts started so far

    def start(self) -> float | None:
        """Count a new attempt; its timeout in seconds (what is left of the deadline; None: none)."""
        self.made += 1
        return self.deadline.remaining_s()

    def wait_before_retry_s(self, code: grpc.StatusCode, streamed: bool) -> float | None:
        """Seconds to wait before the next attempt after this one failed with `code`; None: do not retry
        (a code not retried, the attempts used up, the deadline too close, or messages already streamed)."""
        if streamed or code not in self.policy.retry_codes or self.made >= self.policy.max_attempts:
            return None
        wait_s = self.policy.backoff_s(self.made)
        return wait_s if self.deadline.allows(wait_s) else None


def retrying(policy: RetryPolicy, timeout_s: float | None,
             open_call: Callable[[float | None], Iterable[Message]]) -> Iterator[Message]:
    """The messages of the first attempt that is not retried; its failure raises as a glitches.errors
    error. Closing this iterator cancels the call in flight."""
    attempts = Attempts(policy, Deadline(timeout_s))
    while True:
        call, streamed = None, False
        try:
            call = open_call(attempts.start())
            for message in call:
                streamed = True
                yield message
            return
        except grpc.RpcError as error:
            wait_s = _wait_or_raise(attempts, error, streamed)
        finally:
            _cancel(call)
        time.sleep(wait_s)


async def retrying_async(policy: RetryPolicy, timeout_s: float | None,
                         open_call: Callable[[float | None], AsyncIterable[Message]]) -> AsyncIterator[Message]:
    """As `retrying`, for grpc.aio calls; cancelling the task that iterates this cancels the call."""
    attempts = Attempts(policy, Deadline(timeout_s))
    while True:
        call, streamed = None, False
        try:
            call = open_call(attempts.start())
            async for message in call:
                streamed = True
                yield message
            return
        except grpc.RpcError as error:
            wait_s = _wait_or_raise(attempts, error, streamed)
        finally:
            _cancel(call)
        await asyncio.sleep(wait_s)


def _wait_or_raise(attempts: Attempts, error: grpc.RpcError, streamed: bool) -> float:
    """Seconds before the next attempt, or the failure as a glitches.errors error when it is not retried."""
    wait_s = attempts.wait_before_retry_s(error.code(), streamed)
    if wait_s is None:
        raise from_rpc_error(error) from None
    return wait_s


def _cancel(call) -> None:
    """Cancel a streaming call (a no-op once it has finished); unary results have nothing to cancel."""
    cancel = getattr(call, "cancel", None)
    if cancel is not None:
        cancel()
