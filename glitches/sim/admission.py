"""The scheduler's admission control, for the simulator (as glitches/scheduler/admission.py does it live).

At most `max_active` requests run at once (a place is held from admission until the request's last token,
placement's own wait for a device included); up to `max_queued` more wait for a place, first come first
served, each at most `queue_wait_s` seconds; a request that finds the queue full, or waits longer, is
refused (live: RESOURCE_EXHAUSTED with a retry hint; here: the record's `rejected` is set and it produces no
token). max_active 0 means no admission control (every request goes straight to placement), the default
for catalogue simulations, whose question is what the devices can serve; a live validation sets the
scheduler's figures (glitches/scheduler/settings.py: 24 running, 8 queued, 30 s).

Protocol: `enter()` returns an event that fires with True when the request holds a place, or with False when
it is refused (at once, or after queue_wait_s); a holder calls `leave()` once when it ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import simpy

from glitches.services.runtime.errors import InvalidArgument


@dataclass(frozen=True)
class AdmissionLimits:
    max_active: int = 0  # requests running at once; 0 = no admission control
    max_queued: int = 0  # requests waiting for a place; beyond: refused
    queue_wait_s: float = 30.0  # longest wait for a place, seconds

    def __post_init__(self):
        if self.max_active < 0 or self.max_queued < 0 or self.queue_wait_s < 0:
            raise InvalidArgument(f"admission limits must be >= 0, got {self}")


class SimAdmission:
    def __init__(self, env: simpy.Environment, limits: AdmissionLimits):
        self.env, self.limits = env, limits
        self.active = 0
        self._waiting: deque[simpy.Event] = deque()

    def enter(self) -> simpy.Event:
        event = self.env.event()
        if self.active < self.limits.max_active:
            self.active += 1
            return event.succeed(True)
        if len(self._waiting) >= self.limits.max_queued:
            return event.succeed(False)
        self._waiting.append(event)
        self.env.process(self._expire(event))
        return event

    def leave(self) -> None:
        self.active -= 1
        if self._waiting:  # the place passes to the oldest waiter
            self.active += 1
            self._waiting.popleft().succeed(True)

    def _expire(self, event: simpy.Event):
        yield self.env.timeout(self.limits.queue_wait_s)
        if not event.triggered:
            self._waiting.remove(event)
            event.succeed(False)
