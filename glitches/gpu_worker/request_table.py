"""Every request the GPU worker holds, in one place: admission, KV blocks, release.

A request is held from admission (the start of its Prefill) until it is released: at the end of
prefill when its KV streamed to an FPGA, at the end of its Decode stream (GPU assist), or by a
Release RPC. Admission enforces the worker's limits itself, whatever the scheduler believed:

- GPU assist (the KV stays here): at most `slots` such requests, and KV blocks for
  prompt + max_new_tokens free now; otherwise RESOURCE_EXHAUSTED with a retry hint.
- A prefill whose KV streams to an FPGA holds blocks for its prompt while it runs; when they are
  not free it waits for them (up to `wait_s`), since every such hold ends with its prefill.

`on_change` is called after every admission and release (the daemon re-publishes its record).
Anything that must walk the held requests (expiry, for instance) iterates `snapshot()`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from glitches.gpu_worker.kv_pool import KvPool, blocks_for
from glitches.gpu_worker.request_kv import RequestKv
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS
from glitches.services.runtime.errors import AlreadyExists, ResourceExhausted

RETRY_AFTER_S = 1.0  # hint sent with RESOURCE_EXHAUSTED: GPU-assist decodes end within seconds


@dataclass
class HeldRequest:
    request_id: str
    gpu_assist: bool  # True: decodes here; False: its KV streams to an FPGA during prefill
    blocks: int
    kv: RequestKv
    admitted_monotonic: float = field(default_factory=time.monotonic)
    decoding: bool = False  # a Decode stream is running (one at a time)


class RequestTable:
    def __init__(self, pool: KvPool, slots: int, kv_factory: Callable[[list[int]], RequestKv],
                 on_change: Callable[[], None] = lambda: None):
        self.pool = pool  # the one allocator of the worker's KV blocks
        self.slots = slots
        self._kv_factory = kv_factory  # block ids taken from the pool -> the request's RequestKv over them
        self.on_change = on_change
        self._held: dict[str, HeldRequest] = {}
        self._cond = threading.Condition()

    def admit(self, request_id: str, tokens: int, gpu_assist: bool, wait_s: float = 0.0,
              cancelled: Callable[[], bool] = lambda: False, prefix: list[bytes] = ()) -> HeldRequest:
        """Hold `request_id` with KV for `tokens` tokens, or raise (see the module docstring).

        prefix: chain names of the prompt's full blocks that may be reused (glitches/kv_plane/prefix_index.py);
        the held kv's cached_tokens (and length) then cover the cached ones, which need no computing."""
        blocks = blocks_for(tokens)
        if blocks > self.pool.total_blocks:
            raise ResourceExhausted(f"{tokens} tokens of KV ({blocks} blocks of {KV_BLOCK_TOKENS}) exceed this GPU "
                                    f"worker's whole KV budget of {self.pool.total_blocks} blocks")
        deadline = time.monotonic() + wait_s
        with self._cond:
            while True:
                if request_id in self._held:
                    raise AlreadyExists(f"request {request_id} is already held on this worker")
                assists = sum(1 for r in self._held.values() if r.gpu_assist)
                if gpu_assist and assists >= self.slots:
                    raise ResourceExhausted(f"all {self.slots} GPU-assist slots of this worker are taken; retry in "
                                            f"about {RETRY_AFTER_S:.0f} s", retry_after_s=RETRY_AFTER_S)
                taken = self.pool.take_prefixed(list(prefix), blocks)
                if taken is not None:
                    block_ids, hits = taken
                    break
                remaining = deadline - time.monotonic()
                if gpu_assist or remaining <= 0 or cancelled():
                    raise ResourceExhausted(f"{blocks} KV blocks needed, {self.pool.free_blocks} of "
                                            f"{self.pool.total_blocks} free on this GPU worker; retry in about "
                                            f"{RETRY_AFTER_S:.0f} s", retry_after_s=RETRY_AFTER_S)
                self._cond.wait(timeout=min(remaining, 0.1))
            try:
                held = HeldRequest(request_id, gpu_assist, blocks, self._kv_factory(block_ids))
                held.kv.cached_tokens = held.kv.length = hits * KV_BLOCK_TOKENS
            except BaseException:
                self.pool.give(block_ids)
                raise
            self._held[request_id] = held
        self.on_change()
        return held

    def get(self, request_id: str) -> HeldRequest | None:
        with self._cond:
            return self._held.get(request_id)

    def start_decode(self, request_id: str) -> HeldRequest | None:
        """Mark a GPU-assist request as decoding; None if it is not held, AlreadyExists if it decodes already."""
        with self._cond:
            held = self._held.get(request_id)
            if held is None or not held.gpu_assist:
                return None
            if held.decoding:
                raise AlreadyExists(f"request {request_id} is already decoding on this worker")
            held.decoding = True
            return held

    def release(self, request_id: str) -> bool:
        """Drop the request and give its KV blocks back; False when it was not held (idempotent)."""
        with self._cond:
            held = self._held.pop(request_id, None)
            if held is not None:
                held.kv.free()  # its block ids go back to the pool
                self._cond.notify_all()
        if held is not None:
            self.on_change()
        return held is not None

    def snapshot(self) -> list[HeldRequest]:
        with self._cond:
            return list(self._held.values())

    def active(self) -> int:
        """Requests held (each counted once, whatever it is doing)."""
        with self._cond:
            return len(self._held)

    def assist_active(self) -> int:
        with self._cond:
            return sum(1 for r in self._held.values() if r.gpu_assist)
