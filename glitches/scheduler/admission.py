"""Admission control: at most `max_active` requests run on this replica; up to `max_queued`
more wait, each at most `queue_wait_s`. Past either bound the request is refused with
RESOURCE_EXHAUSTED and a hint of when to retry, instead of piling up unboundedly.

A queued request also waits no longer than its caller's deadline allows (less QUEUE_MARGIN_S):
overload is answered RESOURCE_EXHAUSTED with a retry hint, never a DEADLINE_EXCEEDED. The
scheduler's gRPC thread pool is sized max_active + max_queued + control headroom
(glitches/scheduler/settings.py), so admission always engages before the pool fills and health, Status
and the refusals themselves keep threads to answer with."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from glitches.services.runtime.errors import ResourceExhausted

QUEUE_MARGIN_S = 0.5  # a queued request gives up this long before its caller's deadline, seconds


class Admission:
    def __init__(self, max_active: int, max_queued: int, queue_wait_s: float):
        self.max_active = max_active
        self.max_queued = max_queued
        self.queue_wait_s = queue_wait_s
        self._cond = threading.Condition()
        self.active = 0
        self.queued = 0

    @contextmanager
    def slot(self, cancelled=lambda: False, time_remaining=lambda: None):
        """Hold one of the max_active places for the duration of the block.

        time_remaining() -> seconds left of the caller's deadline, or None without one.
        """
        self._acquire(cancelled, time_remaining())
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify()

    def _acquire(self, cancelled, time_remaining: float | None) -> None:
        with self._cond:
            if self.active < self.max_active:
                self.active += 1
                return
            if self.queued >= self.max_queued:
                raise ResourceExhausted(f"this scheduler is full ({self.active} running, {self.queued} queued); "
                                        f"retry in about {self._hint_s():.0f} s or use another replica",
                                        retry_after_s=self._hint_s())
            wait_s = self.queue_wait_s
            if time_remaining is not None:
                wait_s = max(0.0, min(wait_s, time_remaining - QUEUE_MARGIN_S))
            self.queued += 1
            deadline = time.monotonic() + wait_s
            try:
                while self.active >= self.max_active:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or cancelled():
                        raise ResourceExhausted(f"waited {wait_s:.1f} s for a place on this scheduler "
                                                f"({self.active} running); retry in about {self._hint_s():.0f} s",
                                                retry_after_s=self._hint_s())
                    self._cond.wait(timeout=min(remaining, 0.5))
                self.active += 1
            finally:
                self.queued -= 1

    def _hint_s(self) -> float:
        return max(1.0, self.queue_wait_s / 2)
