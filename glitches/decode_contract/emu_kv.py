"""The KV store of every emulated card: one KV space (hbm_manager.KvSpace, blocks at ABI offsets) over
the emulated HBM, which is a shared-memory segment (hbm_segment.HbmSegment).

A request's region is a view on the segment at its `kv_offset` in every pseudo-channel, laid out as
docs/fpga-kernel-abi.md "KV region" says (kv_layout.KvRegion). KV reaches it either through
`write` (TransferKV: the receiver copies each chunk in) or straight from a sender on the same host
that mapped the segment (TransferKVPlaced, transport shm), which then reports each span with
`mark_written`. `written` [layers, capacity_tokens] records which tokens arrived either way, so
overlaps and gaps are refused whichever way the bytes came.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from glitches.decode_contract.request_checks import lookup
from glitches.kv_plane.hbm_manager import KvSpace
from glitches.kv_plane.hbm_segment import HbmSegment
from glitches.kv_plane.kv_abi import HBM_CHANNELS, KV_ALIGN
from glitches.kv_plane.kv_layout import KvPlan, KvRegion, region_view
from glitches.kv_plane.kv_types import KvMemory, KvPlacement
from glitches.services.runtime.errors import InvalidArgument


@dataclass
class HeldKv:
    kv_offset: int  # bytes from the start of every PC
    region: KvRegion  # a view on the segment
    written: torch.Tensor  # bool [num_layers, capacity_tokens]


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
        self._held: dict[str, HeldKv] = {}
        self._lock = threading.Lock()

    @property
    def capacity_bytes(self) -> int:
        return self.space.capacity_bytes

    def free_bytes(self) -> int:
        return self.space.free_bytes()

    def plan(self, capacity_tokens: int) -> KvPlan:
        if capacity_tokens < 1:
            raise InvalidArgument(f"KV capacity must be at least 1 token, got {capacity_tokens}")
        return KvPlan(*self.dims, capacity_tokens, self.element_bytes)

    def reserve(self, request_id: str, max_tokens: int) -> HeldKv:
        plan = self.plan(max_tokens)
        offset = self.space.reserve(request_id, plan.region_bytes_per_channel)  # AlreadyExists/ResourceExhausted
        try:
            data = region_view(self.segment.memory, self.channel_bytes, offset, plan, self.dtype)
            held = HeldKv(offset, KvRegion(plan, self.dtype, data),
                          torch.zeros(plan.num_layers, plan.capacity_tokens, dtype=torch.bool))
        except BaseException:
            self.space.release(request_id)
            raise
        with self._lock:
            self._held[request_id] = held
        return held

    def get(self, request_id: str) -> HeldKv:
        return lookup(self._held, self._lock, request_id)

    def release(self, request_id: str) -> bool:
        with self._lock:
            held = self._held.pop(request_id, None)
        self.space.release(request_id)
        return held is not None

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
