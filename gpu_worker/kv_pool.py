"""Every request's KV on one GPU worker: one tensor in blocks of KV_BLOCK_TOKENS tokens, and the one
allocator of those blocks (a free list under one lock).

Layout: data [layers, 2 (K, V), H_kv, num_blocks * KV_BLOCK_TOKENS, head_dim] in the model's dtype on the
model's device. Token t of a request lives at slot blocks[t // KV_BLOCK_TOKENS] * KV_BLOCK_TOKENS
+ t % KV_BLOCK_TOKENS of every (layer, K/V, head) row, so the decodes of one step read and write every
request's KV with one gather and one scatter per layer (gpu_worker/packed_attention.py) instead of one
pair of ops per request.

The number of blocks is fixed at start-up (a fraction of the device memory left after the weights, or
an explicit size). Admission (gpu_worker/request_table.py) asks `try_take(ceil(tokens / 16))` for
everything a request may hold (prompt + max_new_tokens for GPU assist; the prompt alone for a prefill
whose KV streams to an FPGA) and the request gives its ids back with `give` when it is released, so a
request admitted never runs out of KV half-way and nothing needs preempting. Ids come back most recent
first out again (their pages are already touched on the CPU stand-in).
"""

from __future__ import annotations

import threading

import torch

from kv_plane.kv_abi import KV_BLOCK_TOKENS


def blocks_for(tokens: int) -> int:
    """Blocks that `tokens` tokens of KV take (rounded up)."""
    return -(-tokens // KV_BLOCK_TOKENS)


class KvPool:
    def __init__(self, num_blocks: int, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str):
        if num_blocks < 1:
            raise ValueError(f"a KV pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.device = device
        # bytes of one block: KV_BLOCK_TOKENS tokens of K and V, every layer, every KV head
        self.block_bytes = KV_BLOCK_TOKENS * 2 * num_layers * kv_heads * head_dim * torch.finfo(dtype).bits // 8
        self.data = torch.empty(num_layers, 2, kv_heads, num_blocks * KV_BLOCK_TOKENS, head_dim, dtype=dtype,
                                device=device)
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives block 0 first
        self._lock = threading.Lock()

    @property
    def total_blocks(self) -> int:
        return self.num_blocks

    @property
    def free_blocks(self) -> int:
        with self._lock:
            return len(self._free)

    def try_take(self, blocks: int) -> list[int] | None:
        """`blocks` free block ids, ascending when the pool can (consecutive ids make reads views);
        None (and nothing taken) when fewer are free."""
        with self._lock:
            if blocks > len(self._free):
                return None
            taken = [self._free.pop() for _ in range(blocks)]
        return sorted(taken)

    def take(self, blocks: int) -> list[int]:
        """As try_take, for callers that sized the pool themselves (tests, benchmarks): raises when short."""
        taken = self.try_take(blocks)
        if taken is None:
            raise RuntimeError(f"{blocks} KV blocks asked of a pool with {self.free_blocks} free")
        return taken

    def give(self, block_ids: list[int]) -> None:
        with self._lock:
            self._free.extend(sorted(block_ids, reverse=True))
            if len(self._free) > self.num_blocks:
                raise RuntimeError("KV blocks given back twice")

    def keys(self, layer: int) -> torch.Tensor:
        """[H_kv, slots, D]: layer's K of every block."""
        return self.data[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        return self.data[layer, 1]
