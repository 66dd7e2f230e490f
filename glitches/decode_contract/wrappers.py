"""Wrappers composed around a KV sink (or a whole decode device) before the servicer is built.

Each overrides only the calls it adds to; everything else (step, facts, geometry, write_kv...)
is the wrapped object's own, through attribute lookup (`SinkWrapper.__getattr__`), so a method
added to the device interface never needs a forwarding line here. Compose them outermost first:

    KvHeld(SlotLimit(Notifying(card), slots), holds)    the FPGA worker
    KvHeld(intake, holds)                               a decode-role GPU worker (its RequestTable counts slots)

- `Notifying`: reserve, release (and a card's adopt, retain, return_adopted, evict_cache) call `on_change()`
  (the worker sets it to its heartbeat's poke() once the heartbeat exists), so the registry record's
  kv_free_bytes follows reservations within one Redis round trip instead of one heartbeat interval.
- `SlotLimit`: at most `slots` requests hold KV at once; one more reservation is RESOURCE_EXHAUSTED
  before anything is placed (the registry's claims are the scheduler's view; this is the card's own,
  so a caller that skips the registry cannot over-fill it).
- `KvHeld`: every reservation is a hold in `holds` (glitches/services/cluster/kv_holds.py); once sealed (the transfer
  complete) it expires unless the scheduler renews it; the holds' reaper releases through the
  sink under this wrapper.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from glitches.decode_contract.sink import KvSink
from glitches.services.runtime.errors import ResourceExhausted
from glitches.services.cluster.kv_holds import KvHolds


class SinkWrapper:
    """Base of the wrappers: what a wrapper does not define is `inner`'s."""

    def __init__(self, inner: KvSink):
        self.inner = inner

    def __getattr__(self, name: str):
        return getattr(self.inner, name)  # only reached for names this wrapper does not define


class Notifying(SinkWrapper):
    def __init__(self, inner: KvSink, on_change: Callable[[], None] = lambda: None):
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

    def adopt(self, request_id: str, prompt: list[int], root: bytes, max_tokens: int, min_held: int) -> int:
        held = self.inner.adopt(request_id, prompt, root, max_tokens, min_held)  # a reservation, from held KV
        self.on_change()
        return held

    def return_adopted(self, request_id: str, tokens: list[int], root: bytes) -> bool:
        kept = self.inner.return_adopted(request_id, tokens, root)  # the reservation is cache again
        self.on_change()
        return kept

    def retain(self, request_id: str, tokens: list[int], root: bytes) -> bool:
        kept = self.inner.retain(request_id, tokens, root)  # a finished request's KV becomes cache: free again
        self.on_change()  # (its release then finds nothing to free, so it would not poke)
        return kept

    def evict_cache(self) -> tuple[int, int, int]:
        """Worker/EvictCache: (regions, blocks, bytes); a card that keeps no KV evicts nothing. The record's
        cached bytes drop now, not at the next beat."""
        evict = getattr(self.inner, "evict_cache", None)
        if evict is None:
            return 0, 0, 0
        evicted = evict()
        self.on_change()
        return evicted


class SlotLimit(SinkWrapper):
    def __init__(self, inner: KvSink, slots: int):
        super().__init__(inner)
        self.slots = slots
        self._reserve_lock = threading.Lock()  # count + reserve as one step

    def _check_free_slot(self) -> None:
        held = len(self.inner.active_requests())
        if held >= self.slots:
            raise ResourceExhausted(f"this worker's {self.slots} slot(s) are all taken ({held} requests hold "
                                    "KV); send the request to another worker or retry later")

    def reserve(self, request_id: str, max_tokens: int) -> None:
        with self._reserve_lock:
            self._check_free_slot()
            self.inner.reserve(request_id, max_tokens)

    def adopt(self, request_id: str, prompt: list[int], root: bytes, max_tokens: int, min_held: int) -> int:
        with self._reserve_lock:
            self._check_free_slot()
            return self.inner.adopt(request_id, prompt, root, max_tokens, min_held)


class KvHeld(SinkWrapper):
    def __init__(self, inner: KvSink, holds: KvHolds):
        super().__init__(inner)
        self.holds = holds

    def reserve(self, request_id: str, max_tokens: int) -> None:
        self.inner.reserve(request_id, max_tokens)
        self.holds.hold(request_id, max_tokens * self.inner.geometry().bytes_per_token, receiving=True)

    def release(self, request_id: str) -> bool:
        self.holds.forget(request_id)
        return self.inner.release(request_id)

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        self.inner.seal(request_id, prompt_tokens)
        self.holds.received(request_id)

    def adopt(self, request_id: str, prompt: list[int], root: bytes, max_tokens: int, min_held: int,
              receiving: bool = False) -> int:
        """receiving: the rest of the prompt's KV still arrives (a partial transfer): held until seal, as reserve."""
        held = self.inner.adopt(request_id, prompt, root, max_tokens, min_held)
        self.holds.hold(request_id, max_tokens * self.inner.geometry().bytes_per_token, receiving=receiving)
        return held  # complete (unless receiving): from now on it expires unless renewed or decoding

    def return_adopted(self, request_id: str, tokens: list[int], root: bytes) -> bool:
        self.holds.forget(request_id)
        return self.inner.return_adopted(request_id, tokens, root)
