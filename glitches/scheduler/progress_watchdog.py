"""Decode progress watchdog: a decode stream that yields no token for too long is treated as a dead worker.

A frozen worker (SIGSTOP, a hung card, a wedged host) keeps its TCP connection open, so the
stream neither ends nor fails; its heartbeat stops, but the request would wait for its whole
deadline. `watch(call, stall_s)` registers a stream; the request's loop calls `progress(ticket,
step_s)` on every token. One thread checks every `interval_s`: a stream without progress for
stall_s + STEP_FACTOR x the slowest step it has seen is cancelled and its ticket marked
`stalled`, so the orchestrator migrates the request as if the worker had died.

A slow device is not a dead one: a stream registered with `alive` (a check of the worker's
heartbeat in the registry) that is past its limit while its worker still beats gets
ALIVE_GRACE_FACTOR x the limit before it is cancelled. A frozen process (SIGSTOP, a wedged
host) stops beating, so it is caught at the limit; a worker whose heartbeat thread runs while
its device hangs is caught at the longer limit. (Seen: the emulated W4A8 kernel's first step
took over 5 s on a loaded 2-core machine, and the watchdog migrated a healthy request.)
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

STEP_FACTOR = 4.0  # a step may take this many times the slowest one seen before the stall clock runs out
ALIVE_GRACE_FACTOR = 12.0  # a stream whose worker still beats is cancelled after this many times its limit


@dataclass
class Ticket:
    call: object  # a gRPC streaming call (has cancel())
    stall_s: float
    last_progress: float  # time.monotonic()
    slowest_step_s: float = 0.0
    stalled: bool = False
    alive: object = None  # () -> bool: the worker's heartbeat is fresh; None: not known

    def limit_s(self) -> float:
        return self.stall_s + STEP_FACTOR * self.slowest_step_s

    def is_late(self, now: float) -> bool:
        """Past the limit and, when its worker still beats, past the longer limit too."""
        idle_s = now - self.last_progress
        if idle_s <= self.limit_s():
            return False
        if self.alive is None or idle_s > ALIVE_GRACE_FACTOR * self.limit_s():
            return True
        try:
            return not self.alive()
        except Exception:  # the registry cannot say: judge by the stream alone
            return True


class ProgressWatchdog:
    def __init__(self, interval_s: float = 0.25, clock=time.monotonic):
        self._interval_s = interval_s
        self._clock = clock
        self._by_id: dict[int, Ticket] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, call, stall_s: float, alive=None) -> Ticket:
        ticket = Ticket(call, stall_s, self._clock(), alive=alive)
        with self._lock:
            self._by_id[id(ticket)] = ticket
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="decode-watchdog", daemon=True)
                self._thread.start()
        return ticket

    def progress(self, ticket: Ticket, step_s: float = 0.0) -> None:
        ticket.last_progress = self._clock()
        ticket.slowest_step_s = max(ticket.slowest_step_s, step_s)

    def unwatch(self, ticket: Ticket) -> None:
        with self._lock:
            self._by_id.pop(id(ticket), None)

    def check(self) -> list[Ticket]:
        """Cancel every stream past its limit; returns their tickets."""
        now = self._clock()
        with self._lock:
            candidates = [t for t in self._by_id.values() if not t.stalled]
        late = [t for t in candidates if t.is_late(now)]  # outside the lock: alive() may ask Redis
        with self._lock:
            late = [t for t in late if self._by_id.pop(id(t), None) is not None]
            for ticket in late:
                ticket.stalled = True
        for ticket in late:
            ticket.call.cancel()
        return late

    def _run(self) -> None:
        while True:
            time.sleep(self._interval_s)
            self.check()
