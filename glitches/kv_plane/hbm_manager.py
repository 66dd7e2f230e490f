"""KV space of one card's HBM: first-fit regions in whole KV blocks (docs/fpga-kernel-abi.md, section 4).

Every pseudo-channel (PC) has the same layout, so one allocator over the per-PC
offsets [kv_base, channel_bytes) serves all 32: a request's region sits at the same
`kv_offset` in every PC. Offsets and sizes are whole KV blocks (`block_bytes` =
16 tokens x head_dim x 2 bytes), so capacity = HBM size - weight image, rounded
down to blocks, and every free byte reported is a byte a region can use.
"""

from __future__ import annotations

import threading

from glitches.kv_plane.kv_abi import HBM_CHANNELS
from glitches.services.runtime.errors import AlreadyExists, InvalidArgument, ResourceExhausted


class KvSpace:
    def __init__(self, kv_base: int, channel_bytes: int, block_bytes: int):
        if kv_base >= channel_bytes:
            raise InvalidArgument(f"a {channel_bytes}-byte pseudo-channel cannot hold the weight image "
                                  f"(kv_base {kv_base}); give a larger --hbm-bytes")
        self.kv_base, self.block_bytes = kv_base, block_bytes
        self.blocks_per_channel = (channel_bytes - kv_base) // block_bytes  # KV blocks per PC
        self._regions: dict[str, tuple[int, int]] = {}  # request id -> (first block, blocks) per PC
        self._lock = threading.Lock()

    @property
    def capacity_bytes(self) -> int:
        """KV bytes of the whole card (all PCs)."""
        return HBM_CHANNELS * self.blocks_per_channel * self.block_bytes

    def _gaps(self, ignoring=()) -> list[tuple[int, int]]:
        """Free (first block, blocks) runs per PC, in address order, the regions named in `ignoring` counted as
        free; caller holds the lock."""
        taken = [r for key, r in self._regions.items() if key not in ignoring]
        gaps, cursor = [], 0
        for start, length in sorted(taken) + [(self.blocks_per_channel, 0)]:
            if start > cursor:
                gaps.append((cursor, start - cursor))
            cursor = max(cursor, start + length)
        return gaps

    def reserve(self, request_id: str, region_bytes_per_channel: int) -> int:
        """Place a region of `region_bytes_per_channel` (a whole number of blocks); returns its kv_offset."""
        if region_bytes_per_channel % self.block_bytes:
            raise InvalidArgument(f"KV region of {region_bytes_per_channel} bytes per PC is not a whole number "
                                  f"of {self.block_bytes}-byte blocks")
        need = region_bytes_per_channel // self.block_bytes
        with self._lock:
            if request_id in self._regions:
                raise AlreadyExists(f"request {request_id} already holds KV on this card")
            gaps = self._gaps()
            start = next((s for s, n in gaps if n >= need), None)
            if start is None:
                largest = max((n for _, n in gaps), default=0) * self.block_bytes * HBM_CHANNELS
                raise ResourceExhausted(
                    f"KV needs {need * self.block_bytes * HBM_CHANNELS} bytes of HBM in one region but the largest "
                    f"free region is {largest} bytes; use fewer tokens or another worker")
            self._regions[request_id] = (start, need)
        return self.kv_base + start * self.block_bytes

    def release(self, request_id: str) -> bool:
        with self._lock:
            return self._regions.pop(request_id, None) is not None

    def free_blocks(self) -> int:
        """Free KV blocks of the whole card (all PCs)."""
        with self._lock:
            return HBM_CHANNELS * sum(n for _, n in self._gaps())

    def free_bytes(self) -> int:
        return self.free_blocks() * self.block_bytes

    def largest_region_bytes(self, ignoring=()) -> int:
        """The largest region (bytes, all PCs) one reservation could get if the regions named in `ignoring`
        (evictable cache) were freed: regions are contiguous, so this, not the sum of the gaps, is what a
        request can be given when running requests split the space."""
        with self._lock:
            return HBM_CHANNELS * max((n for _, n in self._gaps(ignoring)), default=0) * self.block_bytes
