"""What a decode device's KV memory, one request's placement in it, and one token of KV look like.

Shared by both ends of the data plane: the receivers map or register `KvMemory`, a placement
names the region a sender writes, and `KvGeometry` is the per-token cost every sink publishes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS


@dataclass(frozen=True)
class KvMemory:
    """The card's memory as the KV data plane sees it: PC p is bytes [p * channel_bytes, (p + 1) * channel_bytes)."""

    memory: torch.Tensor  # uint8 [32 * channel_bytes], the bytes the card decodes from (or its host staging)
    channel_bytes: int
    shm_path: str = ""  # a file on /dev/shm a sender on this host may map; "" when not shared


@dataclass(frozen=True)
class KvPlacement:
    """Where one request's KV region lies (docs/fpga-kernel-abi.md, "KV region")."""

    kv_offset: int  # bytes from the start of every PC
    plan: "object"  # kv_plane.kv_layout.KvPlan
    dtype: torch.dtype  # element type stored in the region


@dataclass(frozen=True)
class KvGeometry:
    """What one token of KV costs on the device."""

    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        # K and V, every layer, every KV head
        return 2 * self.num_layers * self.kv_heads * self.head_dim * torch.finfo(self.dtype).bits // 8

    @property
    def block_bytes(self) -> int:
        # one ABI KV block: 16 tokens of one (layer, head, K or V) lane
        return KV_BLOCK_TOKENS * self.head_dim * torch.finfo(self.dtype).bits // 8
