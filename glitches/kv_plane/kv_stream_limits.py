"""Bounds on one KV-receiving stream: a deadline for its header, a stall limit between messages,
and a cap on how many such streams a worker serves at once.

A gRPC Python handler blocks its pool thread in `next(request_iterator)`, which has no timeout,
so a sender that opens a stream and sends nothing would hold that thread for good (issue #14:
40 idle TransferKV streams starved Info and Release). `deadline_messages` pulls the stream on a
helper thread and hands each message over a queue with a timeout: the header must arrive within
`header_s`, every later message within `stall_s` of the previous one, else DEADLINE_EXCEEDED and
the handler returns (gRPC then ends the call, which ends the helper thread's `next`).

`StreamBudget` caps concurrent streams (RESOURCE_EXHAUSTED at once beyond it, never a wait), so
with the worker's pool sized as base threads + the budget, control RPCs always find a thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from glitches.services.runtime.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted

HEADER_TIMEOUT_S = 2.0  # a KV stream's header must arrive within this, seconds
STALL_TIMEOUT_S = 30.0  # default gap allowed between two messages of one stream, seconds
_DONE = object()


def check_limits(header_s: float, stall_s: float, max_streams: int) -> None:
    """The flags --kv-header-timeout-s, --kv-stall-timeout-s and --max-kv-streams of any worker that takes KV."""
    if not 0 < header_s <= HEADER_TIMEOUT_S:
        raise InvalidArgument(f"--kv-header-timeout-s must be in (0, {HEADER_TIMEOUT_S:g}], got {header_s}")
    if stall_s <= 0:
        raise InvalidArgument(f"--kv-stall-timeout-s must be positive, got {stall_s}")
    if max_streams < 1:
        raise InvalidArgument(f"--max-kv-streams must be at least 1, got {max_streams}")


def deadline_messages(messages: Iterable, header_s: float = HEADER_TIMEOUT_S,
                      stall_s: float = STALL_TIMEOUT_S) -> Iterator:
    """Yield `messages` in order; DEADLINE_EXCEEDED when the first takes over header_s or a gap over stall_s."""
    handoff: queue.Queue = queue.Queue(maxsize=2)  # backpressure: the reader stays at most 2 messages ahead
    stop = threading.Event()

    def pull() -> None:
        try:
            for message in messages:
                while not stop.is_set():
                    try:
                        handoff.put(message, timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put((_DONE, None))
        except BaseException as error:  # the call ended (cancelled, deadline): wake the consumer
            if not stop.is_set():
                handoff.put((_DONE, error))

    reader = threading.Thread(target=pull, name="kv-stream-reader", daemon=True)
    reader.start()
    timeout, what = header_s, f"no KV header within {header_s:g} s of the stream's start"
    try:
        while True:
            try:
                item = handoff.get(timeout=timeout)
            except queue.Empty:
                raise DeadlineExceeded(f"KV stream: {what}; the sender must send the header first and then "
                                       f"keep sending (at most {stall_s:g} s between messages)") from None
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _DONE:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
            timeout, what = stall_s, f"the sender stalled over {stall_s:g} s between two messages"
    finally:
        stop.set()


class StreamBudget:
    """At most `limit` KV streams at once; one more is RESOURCE_EXHAUSTED at once."""

    def __init__(self, limit: int):
        self.limit = limit
        self._active = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        with self._lock:
            return self._active

    @contextmanager
    def slot(self):
        with self._lock:
            if self._active >= self.limit:
                raise ResourceExhausted(f"this worker already serves {self.limit} KV streams (--max-kv-streams); "
                                        "retry shortly or send the KV to another worker", retry_after_s=1.0)
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
