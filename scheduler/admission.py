"""Admission control: at most `max_active` requests run on this replica; up to `max_queued`
more wait, each at most `queue_wait_s`. Past either bound the request is refused with
RESOURCE_EXHAUSTED and a hint of when to retry, instead of piling up unboundedly."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from services.errors import ResourceExhausted


class Admission:
    def __init__(self, max_active: int, max_queued: int, queue_wait_s: float):
        self.max_active = max_active
        self.max_queued = max_queued
        self.queue_wait_s = queue_wait_s
        self._cond = threading.Condition()
        self.active = 0
        self.queued = 0

    @contextmanager
    def slot(self, cancelled=lambda: False):
        """Hold one of the max_active places for the duration of the block."""
        self._acquire(cancelled)
        try:
            yield
        finally:
            with self._cond:
                self.active -= 1
                self._cond.notify()

    def _acquire(self, cancelled) -> None:
        with self._cond:
            if self.active < self.max_active:
                self.active += 1
                return
            if self.queued >= self.max_queued:
                raise ResourceExhausted(f"this scheduler is full ({self.active} running, {self.queued} queued); "
                                        f"retry in about {self._hint_s():.0f} s or use another replica",
                                        retry_after_s=self._hint_s())
            self.queued += 1
            deadline = time.monotonic() + self.queue_wait_s
            try:
                while self.active >= self.max_active:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or cancelled():
                        raise ResourceExhausted(f"waited {self.queue_wait_s:.0f} s for a place on this scheduler "
                                                f"({self.active} running); retry in about {self._hint_s():.0f} s",
                                                retry_after_s=self._hint_s())
                    self._cond.wait(timeout=min(remaining, 0.5))
                self.active += 1
            finally:
                self.queued -= 1

    def _hint_s(self) -> float:
        return max(1.0, self.queue_wait_s / 2)
