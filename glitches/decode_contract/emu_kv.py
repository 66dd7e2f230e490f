"""The KV store of every emulated card: one KV space (hbm_manager.KvSpace, blocks at ABI offsets) over
the emulated HBM, which is a shared-memory segment (hbm_segment.HbmSegment).

A request's region is a view on the segment at its `kv_offset` in every pseudo-channel, laid out as
docs/fpga-kernel-abi.md "KV region" says (kv_layout.KvRegion). KV reaches it either through
`write` (TransferKV: the receiver copies each chunk in) or straight from a sender on the same host
that mapped the segment (TransferKVPlaced, transport shm), which then reports each span with
`mark_written`. `written` [layers, capacity_tokens] records which tokens arrived either way, so
overlaps and gaps are refused whichever way the bytes came.

Retention (issue #27): reserve, retain, adopt, eviction and the free / evictable split are
kept_regions.KeptRegions' (shared with the xrt card); this store adds the segment's bytes: each region's
view, and adoption's copy of a held prefix into a larger region (KvRegion read, then write: float16
elements round-trip through float32 exactly).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glitches.decode_contract.kept_regions import KeptKvCalls, KeptRegions, Region
from glitches.kv_plane.hbm_manager import KvSpace
from glitches.kv_plane.hbm_segment import HbmSegment
from glitches.kv_plane.kv_abi import HBM_CHANNELS, KV_ALIGN
from glitches.kv_plane.kv_layout import KvPlan, KvRegion, region_view
from glitches.kv_plane.kv_types import KvMemory, KvPlacement
from glitches.services.runtime.errors import InvalidArgument


@dataclass
class HeldKv(Region):
    region: KvRegion  # a view on the segment


class EmulatedKvStore(KeptRegions):
    def __init__(self, hbm_bytes: int, kv_base: int, num_layers: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float16, tag: str = "fpga"):
        if hbm_bytes % HBM_CHANNELS:
            raise InvalidArgument(f"--hbm-bytes {hbm_bytes} must split evenly over {HBM_CHANNELS} pseudo-channels")
        self.channel_bytes = hbm_bytes // HBM_CHANNELS
        self.kv_base = -(-kv_base // KV_ALIGN) * KV_ALIGN  # the ABI's 4 KiB alignment of the KV region
        element_bytes = torch.finfo(dtype).bits // 8
        block_bytes = KvPlan(num_layers, kv_heads, head_dim, 1, element_bytes).block_bytes
        space = KvSpace(self.kv_base, self.channel_bytes, block_bytes)  # refuses HBM too small for weights
        super().__init__(space, (num_layers, kv_heads, head_dim), dtype)
        self.segment = HbmSegment(hbm_bytes, tag)

    def _region(self, space_key: str, kv_offset: int, plan: KvPlan) -> HeldKv:
        data = region_view(self.segment.memory, self.channel_bytes, kv_offset, plan, self.dtype)
        return HeldKv(kv_offset, plan, torch.zeros(plan.num_layers, plan.capacity_tokens, dtype=torch.bool),
                      space_key, KvRegion(plan, self.dtype, data))

    def _copy_prefix(self, source: HeldKv, target: HeldKv, tokens: int) -> None:
        for layer in range(source.plan.num_layers):
            key, value = source.region.read(layer, tokens)  # float32 [H_kv, tokens, D]: exact for float16 elements
            target.region.write(layer, 0, key.unsqueeze(0), value.unsqueeze(0))

    def write(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Copy one chunk ([1, kv_heads, seq, head_dim]) into the region (the one copy, like a DMA)."""
        held = self.get(request_id)
        held.region.write(layer, seq_start, key, value)  # validates layer, shapes and span
        self.claim(held, layer, seq_start, key.shape[2])

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        self.claim(self.get(request_id), layer, seq_start, tokens)

    def memory(self) -> KvMemory:
        return KvMemory(self.segment.memory, self.channel_bytes, str(self.segment.path))

    def close(self) -> None:
        self.segment.close()


class EmulatedKvCalls(KeptKvCalls):
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
