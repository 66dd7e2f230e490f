"""Writes one request's K/V straight into a same-host card's HBM segment (transport shm).

The placement (worker.proto KvPlacement) says where: the segment file, its per-PC size, the
request's `kv_offset` and the region's plan. The segment is mapped once per path and kept (a
worker's segment lives as long as the worker). Each layer is written at the ABI's addresses
(glitches/kv_plane/kv_layout.py):
- CPU tensors: one scatter from the model's K/V into the mapped region (one copy per byte);
- CUDA tensors: the layer's blocks are arranged on the device in the order they lie in each
  pseudo-channel (a layer's slots are one contiguous run per PC), then copied device-to-host
  into the segment with 32 asynchronous copies on the writer's own stream, the segment being
  registered as pinned memory; the notice is sent once the copies finished. This path is
  written for CUDA but was NOT run here (no GPU in this session).
Every write stays inside [kv_offset, kv_offset + region_bytes_per_channel) of each PC:
region_view refuses a placement that would not.
"""

from __future__ import annotations

import threading

import torch

from glitches.kv_plane.hbm_segment import map_segment
from glitches.kv_plane.kv_abi import HBM_CHANNELS
from glitches.kv_plane.kv_layout import KvPlan, KvRegion, region_view
from glitches.kv_plane.kv_wire import DTYPES
from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument

_maps: dict[tuple[str, int], tuple[object, torch.Tensor]] = {}  # (path, size) -> (mmap, uint8 tensor)
_maps_lock = threading.Lock()
_pinned: set[tuple[str, int]] = set()


def mapped(path: str, size: int) -> torch.Tensor:
    """The segment as uint8 [size], mapped once per (path, size); drops mappings of other sizes of it."""
    with _maps_lock:
        hit = _maps.get((path, size))
        if hit is None:
            try:
                hit = _maps[(path, size)] = map_segment(path, size)
            except (OSError, ValueError) as error:
                raise FailedPrecondition(f"transport shm: cannot map the card's segment {path} ({error}); the "
                                         "worker is not on this host's /dev/shm: use nixl or grpc") from None
        return hit[1]


class ShmLayerWriter:
    def __init__(self, placement):
        dtype = DTYPES.get(placement.dtype)
        if dtype is None:
            raise InvalidArgument(f"placement dtype {placement.dtype!r} is not one of {sorted(DTYPES)}")
        if placement.shm_bytes != HBM_CHANNELS * placement.channel_bytes:
            raise InvalidArgument(f"placement: segment of {placement.shm_bytes} bytes is not 32 PCs of "
                                  f"{placement.channel_bytes}")
        plan = KvPlan(placement.num_layers, placement.kv_heads, placement.head_dim, placement.capacity_tokens,
                      torch.finfo(dtype).bits // 8)
        if plan.region_bytes_per_channel != placement.region_bytes_per_channel:
            raise InvalidArgument("placement: region size does not match its plan")
        self.path, self.plan, self.dtype = placement.shm_path, plan, dtype
        self.memory = mapped(placement.shm_path, placement.shm_bytes)
        self.region = KvRegion(plan, dtype, region_view(self.memory, placement.channel_bytes, placement.kv_offset,
                                                        plan, dtype))
        self._stream = None

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor, ready=None, start: int = 0) -> list[int]:
        """Write tokens [start, start + seq) of one layer (K, V [1, kv_heads, seq, head_dim]); returns [layer] once
        the bytes are there (the layers whose notice may go, as NixlLayerWriter.write).

        ready: a torch.cuda.Event recorded on the stream that produced key/value (CUDA only).
        start > 0 (a partial transfer: the region holds [0, start) already) writes only the given tokens'
        slots; on CUDA it goes through the host (the arranged copy below writes whole layers).
        """
        if key.is_cuda and start:
            if ready is not None:
                ready.synchronize()
            key, value = key.cpu(), value.cpu()
        if key.is_cuda:
            self._write_cuda(layer, key, value, ready)
        else:
            self.region.write(layer, start, key, value)  # one scatter: the only copy of these bytes
        return [layer]

    def flush(self) -> list[int]:
        """Nothing is in flight: every write() finished before it returned."""
        return []

    # --- CUDA (untested here: no GPU in this session) ---------------------------------------------
    def _pin(self) -> None:
        key = (self.path, self.memory.numel())
        if key in _pinned:
            return
        status = torch.cuda.cudart().cudaHostRegister(self.memory.data_ptr(), self.memory.numel(), 0)
        if int(status) != 0:
            raise FailedPrecondition(f"cudaHostRegister of the KV segment failed (cudaError {int(status)})")
        _pinned.add(key)

    def arranged(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """One layer's blocks in the order they lie in each PC, on key's device: yields (pc, blocks
        [2 * kv_heads * slots_per_lane, 16, head_dim]) for the PC's run of slots layer_slots(layer).

        Device-agnostic (the CUDA path copies each to the host; tests check it on the CPU). Slots past
        the tokens written get zeros, which no reader sees (reads stop at the tokens written).
        """
        plan, spl = self.plan, self.plan.slots_per_lane
        seq, heads, dim = key.shape[2], plan.kv_heads, plan.head_dim
        blocks = spl * HBM_CHANNELS  # block indices the capacity allows per lane
        lanes = torch.zeros(heads, 2, blocks * 16, dim, dtype=self.dtype, device=key.device)
        lanes[:, 0, :seq] = key[0].to(self.dtype)
        lanes[:, 1, :seq] = value[0].to(self.dtype)
        lanes = lanes.view(2 * heads, blocks, 16, dim)  # local lane (h * 2 + kind), block, row, dim
        first, _ = plan.layer_slots(layer)
        local = torch.arange(2 * heads, device=key.device)
        u = local + first // spl  # global lane index
        j = torch.arange(spl, device=key.device)
        for pc in range(HBM_CHANNELS):
            b = ((pc - u) % HBM_CHANNELS).unsqueeze(1) + HBM_CHANNELS * j  # [2H, spl]: block in this PC
            yield pc, lanes[local.unsqueeze(1), b].reshape(-1, 16, dim)  # [2H * spl, 16, D]

    def _write_cuda(self, layer: int, key: torch.Tensor, value: torch.Tensor, ready) -> None:
        self._pin()
        if self._stream is None:
            self._stream = torch.cuda.Stream(device=key.device)
        stream = self._stream
        first, stop = self.plan.layer_slots(layer)
        with torch.cuda.stream(stream):
            if ready is not None:
                stream.wait_event(ready)
            key.record_stream(stream)
            value.record_stream(stream)
            done = torch.cuda.Event()
            for pc, blocks in self.arranged(layer, key, value):
                self.region.data[pc, first:stop].copy_(blocks, non_blocking=True)
            done.record(stream)
        done.synchronize()
