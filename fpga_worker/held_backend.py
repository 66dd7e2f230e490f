"""A DecodeBackend wrapper through which the worker owns its card's memory.

- Slot limit: at most `slots` requests hold KV at once; one more reservation is
  RESOURCE_EXHAUSTED before anything is placed (the registry's claims are the
  scheduler's view; this is the card's own, so a caller that skips the registry
  cannot over-fill it).
- Expiry: every reservation is a hold in `holds` (services/kv_holds.py); once sealed (the
  transfer complete) it expires unless the scheduler renews it; the reaper releases through
  `inner`.
"""

from __future__ import annotations

import threading

from fpga_worker.backend import DecodeBackend
from fpga_worker.forwarding_backend import ForwardingBackend
from services.errors import ResourceExhausted
from services.kv_holds import KvHolds


class HeldBackend(ForwardingBackend):
    def __init__(self, inner: DecodeBackend, slots: int, holds: KvHolds):
        super().__init__(inner)
        self.slots, self.holds = slots, holds
        self._reserve_lock = threading.Lock()  # count + reserve as one step

    def reserve(self, request_id: str, max_tokens: int) -> None:
        with self._reserve_lock:
            held = len(self.inner.active_requests())
            if held >= self.slots:
                raise ResourceExhausted(f"this worker's {self.slots} slot(s) are all taken ({held} requests hold "
                                        "KV); send the request to another worker or retry later")
            self.inner.reserve(request_id, max_tokens)
        self.holds.hold(request_id, max_tokens * self.inner.geometry().bytes_per_token, receiving=True)

    def release(self, request_id: str) -> bool:
        self.holds.forget(request_id)
        return self.inner.release(request_id)

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        self.inner.seal(request_id, prompt_tokens)
        self.holds.received(request_id)  # complete: from now on it expires unless renewed or decoding
