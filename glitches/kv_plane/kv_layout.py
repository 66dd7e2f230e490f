"""KV cache layout in HBM (docs/fpga-kernel-abi.md, "KV region") and its emulation.

A request owns one contiguous KV region at the same byte offset `kv_offset` in every
pseudo-channel (PC). Inside it, a *lane* is one (layer, kv_head, K-or-V) stream and a
*block* is 16 consecutive tokens of one lane: float16 [16, head_dim], token-major.
Block b of lane u lives in PC (u + b) % 32 at slot u * slots_per_lane + b // 32, so a
lane's blocks rotate over all 32 PCs and a PC holds each lane's blocks back to back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from glitches.kv_plane import kv_copy_threads
from glitches.kv_plane.kv_abi import HBM_CHANNELS, KV_BLOCK_TOKENS, KV_ELEMENT_BYTES
from glitches.services.runtime.errors import InvalidArgument

K_KIND, V_KIND = 0, 1


@dataclass(frozen=True)
class KvPlan:
    """Sizes and addresses of one request's KV region."""

    num_layers: int
    kv_heads: int
    head_dim: int
    capacity_tokens: int  # tokens the region can hold (prompt + generated)
    element_bytes: int = KV_ELEMENT_BYTES  # 2 (float16, the ABI); 4 only for float32 reference numerics

    @classmethod
    def for_model(cls, dims, capacity_tokens: int, element_bytes: int = KV_ELEMENT_BYTES) -> "KvPlan":
        """dims: anything with num_layers, kv_heads and head_dim (fpga_worker.abi.ModelDims, a KvGeometry)."""
        if capacity_tokens < 1:
            raise InvalidArgument(f"KV capacity must be at least 1 token, got {capacity_tokens}")
        return cls(dims.num_layers, dims.kv_heads, dims.head_dim, capacity_tokens, element_bytes)

    @property
    def lanes(self) -> int:
        return 2 * self.num_layers * self.kv_heads

    @property
    def slots_per_lane(self) -> int:
        """Block slots each lane owns in every PC."""
        return math.ceil(math.ceil(self.capacity_tokens / KV_BLOCK_TOKENS) / HBM_CHANNELS)

    @property
    def block_bytes(self) -> int:
        return KV_BLOCK_TOKENS * self.head_dim * self.element_bytes

    @property
    def region_bytes_per_channel(self) -> int:
        return self.lanes * self.slots_per_lane * self.block_bytes

    def lane(self, layer: int, head: int, kind: int) -> int:
        return (layer * self.kv_heads + head) * 2 + kind

    def layer_slots(self, layer: int) -> tuple[int, int]:
        """[first, stop) block slots of one layer's lanes in every PC: contiguous, since a layer's 2 x kv_heads
        lanes are consecutive and each lane's slots are back to back."""
        first = self.lane(layer, 0, K_KIND) * self.slots_per_lane
        return first, first + 2 * self.kv_heads * self.slots_per_lane

    def address(self, kv_offset: int, layer: int, head: int, kind: int, token: int) -> tuple[int, int]:
        """(PC, byte offset inside the PC) of element 0 of one token's K or V vector."""
        u, b = self.lane(layer, head, kind), token // KV_BLOCK_TOKENS
        slot = u * self.slots_per_lane + b // HBM_CHANNELS
        row = token % KV_BLOCK_TOKENS
        return (u + b) % HBM_CHANNELS, kv_offset + slot * self.block_bytes + row * self.head_dim * self.element_bytes


def region_view(memory: torch.Tensor, channel_bytes: int, kv_offset: int, plan: KvPlan,
                dtype: torch.dtype) -> torch.Tensor:
    """One request's region inside a card's memory, as KvRegion.data wants it.

    memory: uint8 [32 * channel_bytes], PC p at bytes [p * channel_bytes, (p + 1) * channel_bytes).
    Returns a view (no copy) [32 PCs, lanes * slots_per_lane, 16, head_dim] of `dtype`.
    """
    size = plan.region_bytes_per_channel
    if memory.numel() != HBM_CHANNELS * channel_bytes or not 0 <= kv_offset <= channel_bytes - size:
        raise InvalidArgument(f"KV region [{kv_offset}, {kv_offset + size}) does not fit {channel_bytes}-byte PCs")
    if torch.finfo(dtype).bits // 8 != plan.element_bytes:
        raise InvalidArgument(f"a {dtype} region needs a plan of {torch.finfo(dtype).bits // 8}-byte elements")
    per_pc = memory.view(HBM_CHANNELS, channel_bytes)[:, kv_offset: kv_offset + size]
    return per_pc.view(dtype).view(HBM_CHANNELS, plan.lanes * plan.slots_per_lane, KV_BLOCK_TOKENS, plan.head_dim)


def _wide(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The same bytes with 16-byte elements (complex128) along the last dim, where every tensor's bytes allow.

    index_put_ copies element by element; moving a 4 KiB block as 256 elements of 16 bytes instead of
    2,048 of 2 bytes made the relayout of Llama-2-7B-shaped layers about 2x faster here
    (docs/benchmarks.md, KV data plane Run 3). A pure reinterpretation: the bits are moved, never
    computed on. All or none are widened, so their last dims keep matching.
    """
    def fits(t: torch.Tensor) -> bool:
        return t.stride(-1) == 1 and t.shape[-1] * t.element_size() % 16 == 0 and t.data_ptr() % 16 == 0

    if all(fits(t) for t in tensors):
        return tuple(t.view(torch.complex128) for t in tensors)
    return tensors


class KvRegion:
    """One request's KV region, emulated: PC bytes [kv_offset, kv_offset + region) as a typed tensor.

    data: [32 PCs, lanes * slots_per_lane, 16 tokens, head_dim] in `dtype` (float16 per the
    ABI; float32 only for the kernel's reference numerics, which is not an ABI format).
    """

    def __init__(self, plan: KvPlan, dtype: torch.dtype = torch.float16, data: torch.Tensor | None = None):
        """data: the region inside the card's memory (region_view); None allocates a private one."""
        self.plan = plan
        shape = (HBM_CHANNELS, plan.lanes * plan.slots_per_lane, KV_BLOCK_TOKENS, plan.head_dim)
        if data is None:
            data = torch.zeros(shape, dtype=dtype)
        elif tuple(data.shape) != shape or data.dtype != dtype:
            raise InvalidArgument(f"KV region memory {tuple(data.shape)} {data.dtype}; expected {shape} {dtype}")
        self.data = data
        blocks = torch.arange(plan.slots_per_lane * HBM_CHANNELS)  # every block index the capacity allows
        # per layer: PC and slot of every (kind, head, block): [num_layers, 2, kv_heads, blocks]
        lanes = torch.arange(plan.lanes).view(plan.num_layers, plan.kv_heads, 2).transpose(1, 2)
        self._pc = (lanes.unsqueeze(-1) + blocks) % HBM_CHANNELS
        self._slot = lanes.unsqueeze(-1) * plan.slots_per_lane + blocks // HBM_CHANNELS

    def _check_span(self, layer: int, start: int, length: int) -> None:
        if not 0 <= layer < self.plan.num_layers:
            raise InvalidArgument(f"layer {layer} out of range 0..{self.plan.num_layers - 1}")
        if start < 0 or start + length > self.plan.capacity_tokens:
            raise InvalidArgument(f"tokens {start}..{start + length - 1} exceed the reserved "
                                  f"{self.plan.capacity_tokens}-token KV region")

    def write(self, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Relayout a prefill chunk: key, value [1, kv_heads, seq, head_dim] for tokens from seq_start.

        Whole 16-token blocks go in with one index_put_ per kind, straight from K and V (one copy per
        byte; a dtype conversion, when needed, is the one extra), moving 16-byte elements (_wide), K and V
        on two threads when large (glitches/kv_plane/kv_copy_threads.py); a partial block's tokens go row by row.
        """
        want = (1, self.plan.kv_heads, key.shape[2], self.plan.head_dim)
        if tuple(key.shape) != want or tuple(value.shape) != want:
            raise InvalidArgument(f"KV chunk shapes {tuple(key.shape)}, {tuple(value.shape)}; expected {want}")
        seq = key.shape[2]
        self._check_span(layer, seq_start, seq)
        full = seq // KV_BLOCK_TOKENS if seq_start % KV_BLOCK_TOKENS == 0 else 0
        if full:
            first = seq_start // KV_BLOCK_TOKENS
            heads, n = self.plan.kv_heads, full * KV_BLOCK_TOKENS

            def scatter(kind: int, src: torch.Tensor) -> None:
                blocks = src[0, :, :n].to(self.data.dtype)
                data, blocks = _wide(self.data, blocks if blocks.stride(-1) == 1 else blocks.contiguous())
                blocks = blocks.reshape(heads, full, KV_BLOCK_TOKENS, data.shape[-1])
                where = (self._pc[layer][kind, :, first:first + full], self._slot[layer][kind, :, first:first + full])
                data.index_put_(where, blocks)

            nbytes = 2 * heads * n * self.plan.head_dim * self.plan.element_bytes
            kv_copy_threads.run_pair(lambda: scatter(K_KIND, key), lambda: scatter(V_KIND, value), nbytes)
            if n == seq:
                return
            seq_start, key, value, seq = seq_start + n, key[:, :, n:], value[:, :, n:], seq - n
        tokens = torch.arange(seq_start, seq_start + seq)
        blocks, rows = tokens // KV_BLOCK_TOKENS, tokens % KV_BLOCK_TOKENS
        pc = self._pc[layer][:, :, blocks]  # [2, kv_heads, seq]
        slot = self._slot[layer][:, :, blocks]
        both = torch.stack([key[0], value[0]]).to(self.data.dtype)  # [2, kv_heads, seq, head_dim]
        self.data[pc, slot, rows.expand_as(pc)] = both

    def write_token(self, layer: int, position: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Append one token: key, value [kv_heads, head_dim]."""
        self.write(layer, position, key.view(1, -1, 1, self.plan.head_dim), value.view(1, -1, 1, self.plan.head_dim))

    def read(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens 0..length-1 of one layer: K, V float32 [kv_heads, length, head_dim]."""
        self._check_span(layer, 0, length)
        nb = math.ceil(length / KV_BLOCK_TOKENS)
        pc, slot = self._pc[layer][:, :, :nb], self._slot[layer][:, :, :nb]
        blocks = self.data[pc, slot]  # [2, kv_heads, nb, 16, head_dim]
        kv = blocks.reshape(2, self.plan.kv_heads, nb * KV_BLOCK_TOKENS, self.plan.head_dim)[:, :, :length].float()
        return kv[0], kv[1]

    def channel_bytes(self) -> torch.Tensor:
        """The region as raw bytes uint8 [32, region_bytes_per_channel] (float16 regions only)."""
        return self.data.reshape(HBM_CHANNELS, -1).view(torch.uint8)
