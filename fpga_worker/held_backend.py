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

import torch

from fpga_worker.backend import DecodeBackend, DeviceFacts, KvGeometry, KvMemory, KvPlacement
from services.errors import ResourceExhausted
from services.kv_holds import KvHolds


class HeldBackend(DecodeBackend):
    def __init__(self, inner: DecodeBackend, slots: int, holds: KvHolds):
        self.inner, self.slots, self.holds = inner, slots, holds
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

    def facts(self) -> DeviceFacts:
        return self.inner.facts()

    def geometry(self) -> KvGeometry:
        return self.inner.geometry()

    def kv_free_bytes(self) -> int:
        return self.inner.kv_free_bytes()

    def kv_granularity_tokens(self) -> int:
        return self.inner.kv_granularity_tokens()

    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.inner.write_kv(request_id, layer, seq_start, key, value)

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        self.inner.seal(request_id, prompt_tokens)
        self.holds.received(request_id)  # complete: from now on it expires unless renewed or decoding

    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        return self.inner.step(request_id, token_id, position)

    def active_requests(self) -> list[str]:
        return self.inner.active_requests()

    def modeled_step_s(self, context_tokens: int) -> float:
        return self.inner.modeled_step_s(context_tokens)

    def kv_memory(self) -> KvMemory | None:
        return self.inner.kv_memory()

    def placement(self, request_id: str) -> KvPlacement:
        return self.inner.placement(request_id)

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        self.inner.mark_written(request_id, layer, seq_start, tokens)

    def layer_landed(self, request_id: str, layer: int, tokens: int) -> None:
        self.inner.layer_landed(request_id, layer, tokens)
