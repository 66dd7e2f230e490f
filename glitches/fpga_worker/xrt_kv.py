"""The xrt card's KV regions: kept_regions.KeptRegions (reserve, retain, verified adopt, LRU eviction) over the
card's 32 HBM buffers (XRT BOs, one per pseudo-channel), plus the host staging segment senders on this host write.

Bytes move three ways, each written to the BOs and synced to the card:
- `write` (TransferKV): one chunk, block by block, to its ABI addresses.
- `mark_written` (TransferKVPlaced, transport shm): exactly the noticed tokens, from the staging segment.
- `_copy_prefix` (adoption of a held region too small for the new request): the held region's bytes are synced
  from the card (the kernel wrote the stepped tokens' KV there, not the host), relaid into the new region's
  layout on the host (KvRegion read then write: lane strides differ with capacity), written and synced back.
  Host round trip, per PC one sync each way; in-place adoption (the usual case: regions hold whole 512-token
  units) moves nothing.
A partial transfer writes only tokens [held, prompt) (the held prefix is claimed at adoption), by either way.
"""

from __future__ import annotations

import numpy as np
import torch

from glitches.decode_contract.kept_regions import KeptRegions, Region
from glitches.fpga_worker.abi import HBM_CHANNELS, KV_BLOCK_TOKENS
from glitches.fpga_worker.xrt_capi import Bo, SyncDirection
from glitches.kv_plane.hbm_manager import KvSpace
from glitches.kv_plane.hbm_segment import HbmSegment
from glitches.kv_plane.kv_layout import K_KIND, V_KIND, KvRegion, region_view
from glitches.services.runtime.errors import InvalidArgument


class XrtKv(KeptRegions):
    def __init__(self, hbm: list[Bo], channel_bytes: int, kv_base: int, dims: tuple[int, int, int], tag: str):
        """hbm: the 32 PC buffers; dims: (num_layers, kv_heads, head_dim) of float16 KV."""
        self.hbm, self.channel_bytes = hbm, channel_bytes
        block_bytes = KV_BLOCK_TOKENS * dims[2] * 2
        super().__init__(KvSpace(kv_base, channel_bytes, block_bytes), dims, torch.float16)
        self.staging = HbmSegment(HBM_CHANNELS * channel_bytes, tag)  # host staging for senders on this host

    def write(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Write one chunk (key, value [1, kv_heads, seq, head_dim]) block by block to its HBM addresses."""
        held = self.get(request_id)
        plan = held.plan
        want = (1, plan.kv_heads, key.shape[2], plan.head_dim)
        if tuple(key.shape) != want or tuple(value.shape) != want:
            raise InvalidArgument(f"KV chunk shapes {tuple(key.shape)}, {tuple(value.shape)}; expected {want}")
        stop = seq_start + key.shape[2]
        self.claim(held, layer, seq_start, key.shape[2])  # layer and span inside the region, nothing written twice
        kinds = {K_KIND: key[0].to(torch.float16).numpy(), V_KIND: value[0].to(torch.float16).numpy()}
        for kind, tensor in kinds.items():  # tensor: float16 [kv_heads, seq, head_dim]
            for head in range(plan.kv_heads):
                first = seq_start
                while first < stop:  # one write per block the chunk touches
                    last = min(stop, (first // KV_BLOCK_TOKENS + 1) * KV_BLOCK_TOKENS)
                    pc, offset = plan.address(held.kv_offset, layer, head, kind, first)
                    data = np.ascontiguousarray(tensor[head, first - seq_start: last - seq_start])
                    self.hbm[pc].write(data, offset)
                    self.hbm[pc].sync(SyncDirection.TO_DEVICE, data.nbytes, offset)
                    first = last

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        """Copy exactly the noticed tokens of `layer` from the staging segment to the card (bo.write + bo.sync)."""
        held = self.get(request_id)
        plan, stop = held.plan, seq_start + tokens
        self.claim(held, layer, seq_start, tokens)
        row = plan.head_dim * 2  # bytes of one token's K or V vector
        staged = self.staging.memory.numpy()
        for kind in (K_KIND, V_KIND):
            for head in range(plan.kv_heads):
                first_block, last_block = seq_start // KV_BLOCK_TOKENS, (stop - 1) // KV_BLOCK_TOKENS
                for residue in range(min(HBM_CHANNELS, last_block - first_block + 1)):
                    b0 = first_block + residue  # blocks b0, b0 + 32, ... share one PC at consecutive slots
                    b1 = b0 + (last_block - b0) // HBM_CHANNELS * HBM_CHANNELS
                    pc, begin = plan.address(held.kv_offset, layer, head, kind, max(seq_start, b0 * KV_BLOCK_TOKENS))
                    _, end = plan.address(held.kv_offset, layer, head, kind,
                                          min(stop, (b1 + 1) * KV_BLOCK_TOKENS) - 1)
                    end += row
                    base = pc * self.channel_bytes
                    self.hbm[pc].write(staged[base + begin: base + end], begin)
                    self.hbm[pc].sync(SyncDirection.TO_DEVICE, end - begin, begin)

    def _window(self, region: Region) -> torch.Tensor:
        """The region's bytes as the card holds them: uint8 [32 * region_bytes_per_channel], PC p at row p."""
        size = region.plan.region_bytes_per_channel
        rows = []
        for bo in self.hbm:
            bo.sync(SyncDirection.FROM_DEVICE, size, region.kv_offset)
            rows.append(bo.read(size, region.kv_offset))
        return torch.from_numpy(np.concatenate(rows))

    def _copy_prefix(self, source: Region, target: Region, tokens: int) -> None:
        size = target.plan.region_bytes_per_channel
        old = KvRegion(source.plan, self.dtype, region_view(self._window(source), source.plan.region_bytes_per_channel,
                                                            0, source.plan, self.dtype))
        new_bytes = torch.zeros(HBM_CHANNELS * size, dtype=torch.uint8)
        new = KvRegion(target.plan, self.dtype, region_view(new_bytes, size, 0, target.plan, self.dtype))
        for layer in range(source.plan.num_layers):
            key, value = old.read(layer, tokens)  # float32 [H_kv, tokens, D]: exact for float16 elements
            new.write(layer, 0, key.unsqueeze(0), value.unsqueeze(0))
        rows = new_bytes.numpy().reshape(HBM_CHANNELS, size)
        for pc, bo in enumerate(self.hbm):
            bo.write(rows[pc], target.kv_offset)
            bo.sync(SyncDirection.TO_DEVICE, size, target.kv_offset)

    def close(self) -> None:
        self.staging.close()  # host shared memory only; the BOs are the card's (XrtCard.close)
