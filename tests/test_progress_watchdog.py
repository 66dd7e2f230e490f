"""The decode progress watchdog: a stalled stream is cancelled; a slow one whose worker still beats is not."""

from __future__ import annotations

from glitches.scheduler.progress_watchdog import ALIVE_GRACE_FACTOR, STEP_FACTOR, ProgressWatchdog


class _Call:
    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_stream_without_progress_past_its_limit_is_cancelled():
    clock, call = _Clock(), _Call()
    watchdog = ProgressWatchdog(clock=clock)
    ticket = watchdog.watch(call, stall_s=5.0)
    clock.now += 4.9
    assert watchdog.check() == [] and not call.cancelled
    clock.now += 0.2
    assert watchdog.check() == [ticket] and call.cancelled and ticket.stalled
    assert watchdog.check() == []  # reported once


def test_the_limit_grows_with_the_slowest_step_seen():
    clock, call = _Clock(), _Call()
    watchdog = ProgressWatchdog(clock=clock)
    ticket = watchdog.watch(call, stall_s=5.0)
    watchdog.progress(ticket, step_s=2.0)
    clock.now += 5.0 + STEP_FACTOR * 2.0 - 0.1
    assert watchdog.check() == []
    clock.now += 0.2
    assert watchdog.check() == [ticket]


def test_a_slow_worker_that_still_beats_gets_the_grace_then_is_cancelled():
    clock, call = _Clock(), _Call()
    beating = [True]
    watchdog = ProgressWatchdog(clock=clock)
    ticket = watchdog.watch(call, stall_s=5.0, alive=lambda: beating[0])
    clock.now += 6.0
    assert watchdog.check() == [] and not call.cancelled  # slow, not dead
    clock.now += 5.0 * ALIVE_GRACE_FACTOR  # a device hung behind a live heartbeat thread
    assert watchdog.check() == [ticket] and call.cancelled


def test_a_worker_whose_heartbeat_stopped_is_cancelled_at_the_limit():
    clock, call = _Clock(), _Call()
    beating = [True]
    watchdog = ProgressWatchdog(clock=clock)
    ticket = watchdog.watch(call, stall_s=5.0, alive=lambda: beating[0])
    clock.now += 6.0
    assert watchdog.check() == []
    beating[0] = False  # SIGSTOP: the heartbeat key expires
    assert watchdog.check() == [ticket]


def test_a_registry_error_counts_as_not_alive():
    clock, call = _Clock(), _Call()

    def broken():
        raise ConnectionError("redis down")

    watchdog = ProgressWatchdog(clock=clock)
    ticket = watchdog.watch(call, stall_s=5.0, alive=broken)
    clock.now += 6.0
    assert watchdog.check() == [ticket]
