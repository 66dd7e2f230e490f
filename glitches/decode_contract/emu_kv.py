"""The KV store of every emulated card: one KV space (hbm_manager.KvSpace, blocks at ABI offsets) over
the emulated HBM, which is a shared-memory segment (hbm_segment.HbmSegment).

A request's region is a view on the segment at its `kv_offset` in every pseudo-channel, laid out as
docs/fpga-kernel-abi.md "KV region" says (kv_layout.KvRegion). KV reaches it either through
`write` (TransferKV: the receiver copies each chunk in) or straight from a sender on the same host
that mapped the segment (TransferKVPlaced, transport shm), which then reports each span with
`mark_written`. `written` [layers, capacity_tokens] records which tokens arrived either way, so
overlaps and gaps are refused whichever way the bytes came.

Retention (issue #27): a request that finished normally may leave its region behind as reusable cache
(`retain`), indexed by retained_kv.RetainedIndex; a later request whose prompt starts with the same
tokens takes it over (`adopt`). Design choice: the held region is adopted IN PLACE when its capacity
covers the new request's prompt + max_new_tokens (no copy: the new request's region simply is the old
one, at the same kv_offset, with the same per-request layout), else a new region is reserved and the
held tokens' KV is copied into it (HBM to HBM on a card) and the old region freed. Why not the block
table of held pages + new pages (docs/fpga-kernel-abi.md section 4; the kernel already takes any table)?
This KV space gives each request one contiguous region whose lane stride depends on its capacity
(StepArgs.for_region), so pages cannot be appended to a held region; in place (or one copy) keeps every
request's table the consecutive pages of one region, so ABI v2 needs no change, and a paged allocator
(lane stride = block_bytes, per-page refcounts for shared prefixes) can later adopt held pages instead.
Eviction: `reserve`/`adopt` evict retained regions least recently used first until the new region
fits, and refuse (RESOURCE_EXHAUSTED) only when nothing evictable is left. Only retained regions are
ever evicted: a region a request holds (receiving KV, sealed or decoding) is not in the index.
`free_bytes` counts free + evictable (eviction is immediate on reserve, so the scheduler may plan on
it); `free_now_bytes` and `evictable_bytes` give the two parts. At idle free + evictable = capacity.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from glitches.decode_contract.request_checks import forget, lookup
from glitches.decode_contract.retained_kv import RetainedIndex
from glitches.kv_plane.hbm_manager import KvSpace
from glitches.kv_plane.hbm_segment import HbmSegment
from glitches.kv_plane.kv_abi import HBM_CHANNELS, KV_ALIGN
from glitches.kv_plane.kv_layout import KvPlan, KvRegion, region_view
from glitches.kv_plane.kv_types import KvMemory, KvPlacement
from glitches.services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted


@dataclass
class HeldKv:
    kv_offset: int  # bytes from the start of every PC
    region: KvRegion  # a view on the segment
    written: torch.Tensor  # bool [num_layers, capacity_tokens]
    space_key: str = ""  # the region's name in the KV space (unique per reservation, outlives the request id)


class EmulatedKvStore:
    def __init__(self, hbm_bytes: int, kv_base: int, num_layers: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float16, tag: str = "fpga"):
        if hbm_bytes % HBM_CHANNELS:
            raise InvalidArgument(f"--hbm-bytes {hbm_bytes} must split evenly over {HBM_CHANNELS} pseudo-channels")
        self.channel_bytes = hbm_bytes // HBM_CHANNELS
        self.kv_base = -(-kv_base // KV_ALIGN) * KV_ALIGN  # the ABI's 4 KiB alignment of the KV region
        self.dims = (num_layers, kv_heads, head_dim)
        self.dtype = dtype
        self.element_bytes = torch.finfo(dtype).bits // 8
        block_bytes = KvPlan(num_layers, kv_heads, head_dim, 1, self.element_bytes).block_bytes
        self.space = KvSpace(self.kv_base, self.channel_bytes, block_bytes)  # refuses HBM too small for weights
        self.segment = HbmSegment(hbm_bytes, tag)
        self._held: dict[str, HeldKv] = {}  # request id -> its region
        self._lock = threading.RLock()  # guards _held and _kept; held across evict-then-reserve
        self.retained = RetainedIndex()  # finished requests' regions kept as cache
        self._kept: dict[str, HeldKv] = {}  # space key -> a retained region
        self._reservations = 0  # makes space keys unique
        self.evictions = 0  # retained regions evicted to make room
        self.adopt_lookups = 0  # adopt calls (DecodeFromHeld) since start
        self.adopt_hits = 0  # of them, those that reused a held prefix (n > 0)
        self.adopted_tokens = 0  # prompt tokens reused from held KV since start

    def _space_key(self, request_id: str) -> str:
        self._reservations += 1
        return f"{request_id}#{self._reservations}"

    def _place(self, space_key: str, region_bytes_per_channel: int, keep: str | None = None) -> int:
        """Reserve in the KV space, evicting retained regions (LRU, never `keep`) until it fits.

        The caller holds the lock. Regions are contiguous, so eviction may free more than the bytes
        asked for before a large enough gap appears (fragmentation), never a region a request holds."""
        while True:
            try:
                return self.space.reserve(space_key, region_bytes_per_channel)
            except ResourceExhausted:
                victim = self.retained.lru(exclude=keep)
                if victim is None:
                    raise
                self._evict(victim)

    def _evict(self, space_key: str) -> None:
        self._free_kept(space_key)
        self.evictions += 1

    def _free_kept(self, space_key: str) -> None:
        self.retained.remove(space_key)
        self._kept.pop(space_key, None)
        self.space.release(space_key)

    @property
    def capacity_bytes(self) -> int:
        return self.space.capacity_bytes

    def free_bytes(self) -> int:
        """Bytes a reservation can get now: free + evictable (see the module docstring)."""
        return self.space.free_bytes() + self.retained.evictable_bytes()

    def free_now_bytes(self) -> int:
        return self.space.free_bytes()

    def evictable_bytes(self) -> int:
        return self.retained.evictable_bytes()

    def plan(self, capacity_tokens: int) -> KvPlan:
        if capacity_tokens < 1:
            raise InvalidArgument(f"KV capacity must be at least 1 token, got {capacity_tokens}")
        return KvPlan(*self.dims, capacity_tokens, self.element_bytes)

    def reserve(self, request_id: str, max_tokens: int, keep: str | None = None) -> HeldKv:
        """A region for `max_tokens`, evicting retained regions (never `keep`) when needed."""
        plan = self.plan(max_tokens)
        with self._lock:
            if request_id in self._held:
                raise AlreadyExists(f"request {request_id} already holds KV on this card")
            key = self._space_key(request_id)
            offset = self._place(key, plan.region_bytes_per_channel, keep)  # ResourceExhausted
            try:
                data = region_view(self.segment.memory, self.channel_bytes, offset, plan, self.dtype)
                held = HeldKv(offset, KvRegion(plan, self.dtype, data),
                              torch.zeros(plan.num_layers, plan.capacity_tokens, dtype=torch.bool), key)
            except BaseException:
                self.space.release(key)
                raise
            self._held[request_id] = held
        return held

    def retain(self, request_id: str, tokens: list[int], root: bytes) -> bool:
        """Keep a normally finished request's region as cache; `tokens`: the ids whose KV it holds, in order.

        False (and the region is freed) when the request holds nothing or `tokens` do not fit its region.
        """
        with self._lock:
            held = self._held.pop(request_id, None)
            if held is None:
                return False
            if not 0 < len(tokens) <= held.region.plan.capacity_tokens:
                self.space.release(held.space_key)
                return False
            nbytes = held.region.plan.region_bytes_per_channel * HBM_CHANNELS
            self._kept[held.space_key] = held
            self.retained.add(held.space_key, tokens, root, nbytes)
        return True

    def adopt(self, request_id: str, prompt: list[int], root: bytes, max_tokens: int, min_held: int) -> int:
        """Give `request_id` a region whose first n tokens hold `prompt`'s KV; returns n.

        n is the longest verified held prefix, at most len(prompt) - 1 (the last prompt token is always
        left to step: its logits give the first new token). n < min_held: FAILED_PRECONDITION, nothing
        changed. n = 0 (nothing held): a fresh region. In place when the held region's capacity covers
        max_tokens, else copied into a new region (module docstring).
        """
        with self._lock:
            if request_id in self._held:
                raise AlreadyExists(f"request {request_id} already holds KV on this card")
            entry, n = self.retained.best(prompt, root)
            n = min(n, len(prompt) - 1)
            self.adopt_lookups += 1
            if n < min_held:
                raise FailedPrecondition(f"prefix no longer held on this card: it holds {n} of the prompt's "
                                         f"{len(prompt)} tokens, fewer than the {min_held} asked for; send the "
                                         "prompt's KV the normal way")
            if entry is None or n == 0:
                self.reserve(request_id, max_tokens)
                return 0
            self.adopt_hits += 1
            self.adopted_tokens += n
            old = self._kept[entry.key]
            if max_tokens <= old.region.plan.capacity_tokens:  # in place
                self.retained.take(entry.key)
                del self._kept[entry.key]
                old.written.zero_()
                old.written[:, :n] = True
                self._held[request_id] = old
                return n
            new = self.reserve(request_id, max_tokens, keep=entry.key)  # evicts others, never the source
            for layer in range(old.region.plan.num_layers):
                key, value = old.region.read(layer, n)  # float32 [H_kv, n, D]: exact for float16 elements
                new.region.write(layer, 0, key.unsqueeze(0), value.unsqueeze(0))
            new.written[:, :n] = True
            self._free_kept(entry.key)  # its tokens live on in the new region
            return n

    def get(self, request_id: str) -> HeldKv:
        return lookup(self._held, self._lock, request_id)

    def find(self, request_id: str) -> HeldKv | None:
        with self._lock:
            return self._held.get(request_id)

    def release(self, request_id: str) -> bool:
        with self._lock:
            held = self._held.pop(request_id, None)
            if held is not None:
                self.space.release(held.space_key)
        return held is not None

    def drop_retained(self) -> None:
        """Free every retained region (the cache is gone, as on a restart)."""
        with self._lock:
            for key in self.retained.keys():
                self._free_kept(key)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def _claim(self, held: HeldKv, layer: int, seq_start: int, tokens: int) -> None:
        plan = held.region.plan
        if not 0 <= layer < plan.num_layers:
            raise InvalidArgument(f"layer {layer} out of range 0..{plan.num_layers - 1}")
        if tokens < 1 or seq_start < 0 or seq_start + tokens > plan.capacity_tokens:
            raise InvalidArgument(f"layer {layer}: tokens [{seq_start}, {seq_start + tokens}) lie outside the "
                                  f"{plan.capacity_tokens}-token KV region reserved")
        span = held.written[layer, seq_start: seq_start + tokens]
        if span.any():
            raise InvalidArgument(f"layer {layer}: tokens [{seq_start}, {seq_start + tokens}) overlap KV already "
                                  "written; send each token once")
        span.fill_(True)

    def write(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Copy one chunk ([1, kv_heads, seq, head_dim]) into the region (the one copy, like a DMA)."""
        held = self.get(request_id)
        held.region.write(layer, seq_start, key, value)  # validates layer, shapes and span
        self._claim(held, layer, seq_start, key.shape[2])

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        self._claim(self.get(request_id), layer, seq_start, tokens)

    def memory(self) -> KvMemory:
        return KvMemory(self.segment.memory, self.channel_bytes, str(self.segment.path))

    def placement(self, request_id: str) -> KvPlacement:
        held = self.get(request_id)
        return KvPlacement(held.kv_offset, held.region.plan, self.dtype)

    def close(self) -> None:
        self.segment.close()


class EmulatedKvCalls:
    """The KvSink calls both emulated cards answer straight from their EmulatedKvStore (`self.kv`),
    after `self._get(request_id)` has checked the request is reserved (NOT_FOUND otherwise)."""

    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self._get(request_id)
        self.kv.write(request_id, layer, seq_start, key, value)

    def kv_memory(self) -> KvMemory | None:
        return self.kv.memory()

    def placement(self, request_id: str) -> KvPlacement:
        return self.kv.placement(request_id)

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        self._get(request_id)
        self.kv.mark_written(request_id, layer, seq_start, tokens)

    def return_adopted(self, request_id: str, tokens: list[int], root: bytes) -> bool:
        """A partial transfer into an adopted region failed: keep the region as cache of `tokens` (the held prefix,
        which the transfer never writes) instead of freeing it. False: the request held nothing."""
        forget(self._requests, self._lock, request_id)
        return self.kv.retain(request_id, tokens, root)

    def held_changes(self) -> tuple[list[bytes], list[bytes]]:
        """Chain hashes (added, removed) to the KV kept as cache since the last call (held_publisher.py)."""
        return self.kv.retained.drain()
