"""A DecodeBackend wrapper that reports every change of free KV space (reserve, release).

The worker wires `on_change` to its heartbeat's poke(), so the registry record's
kv_free_bytes follows reservations within one Redis round trip instead of one heartbeat
interval, and the scheduler's placement (which skips FPGAs without room) sees it.
"""

from __future__ import annotations

from collections.abc import Callable

from fpga_worker.backend import DecodeBackend
from fpga_worker.forwarding_backend import ForwardingBackend


class NotifyingBackend(ForwardingBackend):
    def __init__(self, inner: DecodeBackend, on_change: Callable[[], None]):
        super().__init__(inner)
        self.on_change = on_change

    def reserve(self, request_id: str, max_tokens: int) -> None:
        self.inner.reserve(request_id, max_tokens)
        self.on_change()

    def release(self, request_id: str) -> bool:
        released = self.inner.release(request_id)
        if released:
            self.on_change()
        return released
