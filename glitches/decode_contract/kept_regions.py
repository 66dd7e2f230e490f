"""One card's KV regions: held by requests, kept as cache after a normal finish, evicted least recently used.

Shared by every card that places KV in one KV space (hbm_manager.KvSpace, a region at the same `kv_offset`
in every pseudo-channel): the emulated cards' store (emu_kv.EmulatedKvStore, a shared-memory segment) and
the xrt card's (fpga_worker/xrt_kv.py, XRT buffers). This class owns the bookkeeping; a subclass owns the
bytes: it makes a request's `Region` (`_region`) and copies a held prefix between two regions
(`_copy_prefix`, HBM to HBM).

Retention (issue #27): a request that finished normally may leave its region behind as reusable cache
(`retain`), indexed by retained_kv.RetainedIndex; a later request whose prompt starts with the same
tokens takes it over (`adopt`). Design choice: the held region is adopted IN PLACE when its capacity
covers the new request's prompt + max_new_tokens (no copy: the new request's region simply is the old
one, at the same kv_offset, with the same per-request layout), else a new region is reserved and the
held tokens' KV is copied into it and the old region freed. Why not the block table of held pages + new
pages (docs/fpga-kernel-abi.md section 4; the kernel already takes any table)? This KV space gives each
request one contiguous region whose lane stride depends on its capacity (StepArgs.for_region), so pages
cannot be appended to a held region; in place (or one copy) keeps every request's table the consecutive
pages of one region, so ABI v2 needs no change, and a paged allocator (lane stride = block_bytes,
per-page refcounts for shared prefixes) can later adopt held pages instead.
Eviction: `reserve`/`adopt` evict retained regions least recently used first until the new region
fits, and refuse (RESOURCE_EXHAUSTED) only when nothing evictable is left. Only retained regions are
ever evicted: a region a request holds (receiving KV, sealed or decoding) is not in the index.
`evict_cache` (the operator's Worker/EvictCache) frees every retained region at once.
`free_bytes` (Info.kv_free_bytes, what placement compares a request's KV with) is the largest region one
reservation can get now, evicting every retained region (eviction is immediate on reserve, so the scheduler
may plan on it): regions are contiguous, so free space split by running requests is not offered as one
(a card never reports memory it cannot give). `free_now_bytes` and `evictable_bytes` are the free and
evictable totals; at idle free + evictable = capacity = free_bytes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from glitches.decode_contract.request_checks import forget, lookup
from glitches.decode_contract.retained_kv import RetainedIndex
from glitches.kv_plane.hbm_manager import KvSpace
from glitches.kv_plane.kv_abi import HBM_CHANNELS
from glitches.kv_plane.kv_layout import KvPlan
from glitches.kv_plane.kv_types import KvPlacement
from glitches.services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted


@dataclass
class Region:
    kv_offset: int  # bytes from the start of every PC
    plan: KvPlan
    written: torch.Tensor  # bool [num_layers, capacity_tokens]: which tokens' KV has arrived
    space_key: str  # the region's name in the KV space (unique per reservation, outlives the request id)


class KeptRegions:
    def __init__(self, space: KvSpace, dims: tuple[int, int, int], dtype: torch.dtype):
        """dims: (num_layers, kv_heads, head_dim); dtype: the elements' type in the region."""
        self.space, self.dims, self.dtype = space, dims, dtype
        self.element_bytes = torch.finfo(dtype).bits // 8
        self._held: dict[str, Region] = {}  # request id -> its region
        self._lock = threading.RLock()  # guards _held and _kept; held across evict-then-reserve
        self.retained = RetainedIndex()  # finished requests' regions kept as cache
        self._kept: dict[str, Region] = {}  # space key -> a retained region
        self._reservations = 0  # makes space keys unique
        self.evictions = 0  # retained regions evicted to make room
        self.adopt_lookups = 0  # adopt calls (DecodeFromHeld, partial transfers) since start
        self.adopt_hits = 0  # of them, those that reused a held prefix (n > 0)
        self.adopted_tokens = 0  # prompt tokens reused from held KV since start

    # --- the subclass's: the bytes ---------------------------------------------------------------
    def _region(self, space_key: str, kv_offset: int, plan: KvPlan) -> Region:
        """The request's region at kv_offset (a subclass adds its view on the memory)."""
        return Region(kv_offset, plan, torch.zeros(plan.num_layers, plan.capacity_tokens, dtype=torch.bool), space_key)

    def _copy_prefix(self, source: Region, target: Region, tokens: int) -> None:
        """Copy tokens [0, tokens) of every lane from source to target (their layouts differ: capacities do)."""
        raise NotImplementedError

    # --- bookkeeping ------------------------------------------------------------------------------
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
                self._free_kept(victim)
                self.evictions += 1

    def _free_kept(self, space_key: str) -> None:
        self.retained.remove(space_key)
        self._kept.pop(space_key, None)
        self.space.release(space_key)

    @property
    def capacity_bytes(self) -> int:
        return self.space.capacity_bytes

    def free_bytes(self) -> int:
        """Bytes one reservation can get now: the largest region, retained regions evicted (module docstring)."""
        with self._lock:
            return self.space.largest_region_bytes(ignoring=set(self._kept))

    def free_now_bytes(self) -> int:
        return self.space.free_bytes()

    def evictable_bytes(self) -> int:
        return self.retained.evictable_bytes()

    def plan(self, capacity_tokens: int) -> KvPlan:
        if capacity_tokens < 1:
            raise InvalidArgument(f"KV capacity must be at least 1 token, got {capacity_tokens}")
        return KvPlan(*self.dims, capacity_tokens, self.element_bytes)

    def reserve(self, request_id: str, max_tokens: int, keep: str | None = None) -> Region:
        """A region for `max_tokens`, evicting retained regions (never `keep`) when needed."""
        plan = self.plan(max_tokens)
        with self._lock:
            if request_id in self._held:
                raise AlreadyExists(f"request {request_id} already holds KV on this card")
            key = self._space_key(request_id)
            offset = self._place(key, plan.region_bytes_per_channel, keep)  # ResourceExhausted
            try:
                held = self._region(key, offset, plan)
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
            if not 0 < len(tokens) <= held.plan.capacity_tokens:
                self.space.release(held.space_key)
                return False
            nbytes = held.plan.region_bytes_per_channel * HBM_CHANNELS
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
            if max_tokens <= old.plan.capacity_tokens:  # in place
                self.retained.take(entry.key)
                del self._kept[entry.key]
                old.written.zero_()
                old.written[:, :n] = True
                self._held[request_id] = old
                return n
            new = self.reserve(request_id, max_tokens, keep=entry.key)  # evicts others, never the source
            try:
                self._copy_prefix(old, new, n)
            except BaseException:
                self.release(request_id)  # the source stays kept
                raise
            new.written[:, :n] = True
            self._free_kept(entry.key)  # its tokens live on in the new region
            return n

    def get(self, request_id: str) -> Region:
        return lookup(self._held, self._lock, request_id)

    def find(self, request_id: str) -> Region | None:
        with self._lock:
            return self._held.get(request_id)

    def release(self, request_id: str) -> bool:
        with self._lock:
            held = self._held.pop(request_id, None)
            if held is not None:
                self.space.release(held.space_key)
        return held is not None

    def evict_cache(self) -> tuple[int, int, int]:
        """Forced eviction (the operator's Worker/EvictCache): free every retained region, counted as evictions.

        A region a request holds (receiving KV, adopted by a partial transfer, decoding) is never in the
        retained index, so it stays. Returns (regions, their named full blocks, their bytes on the card)."""
        regions = blocks = nbytes = 0
        with self._lock:
            for key in self.retained.keys():
                entry = self.retained.remove(key)
                self._kept.pop(key, None)
                self.space.release(key)
                self.evictions += 1
                regions, blocks, nbytes = regions + 1, blocks + len(entry.hashes), nbytes + entry.nbytes
        return regions, blocks, nbytes

    def drop_retained(self) -> None:
        """Free every retained region (the cache is gone, as on a restart)."""
        with self._lock:
            for key in self.retained.keys():
                self._free_kept(key)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def claim(self, held: Region, layer: int, seq_start: int, tokens: int) -> None:
        """Record tokens [seq_start, seq_start + tokens) of `layer` as written; InvalidArgument outside the
        region or over tokens already written (however the bytes came)."""
        plan = held.plan
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

    def placement(self, request_id: str) -> KvPlacement:
        held = self.get(request_id)
        return KvPlacement(held.kv_offset, held.plan, self.dtype)


class KeptKvCalls:
    """The retention calls a card answers straight from its KeptRegions (`self.kv`); `self._requests` and
    `self._lock` are the card's own request table."""

    def kv_free_bytes(self) -> int:
        return self.kv.free_bytes()

    def kv_cached_bytes(self) -> int:
        return self.kv.evictable_bytes()

    def return_adopted(self, request_id: str, tokens: list[int], root: bytes) -> bool:
        """A partial transfer into an adopted region failed: keep the region as cache of `tokens` (the held prefix,
        which the transfer never writes) instead of freeing it. False: the request held nothing."""
        forget(self._requests, self._lock, request_id)
        return self.kv.retain(request_id, tokens, root)

    def evict_cache(self) -> tuple[int, int, int]:
        """Every retained region freed (KeptRegions.evict_cache): (regions, blocks, bytes)."""
        return self.kv.evict_cache()

    def held_changes(self) -> tuple[list[bytes], list[bytes]]:
        """Chain hashes (added, removed) to the KV kept as cache since the last call (held_publisher.py)."""
        return self.kv.retained.drain()
