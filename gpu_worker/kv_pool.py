"""Every request's KV on one GPU worker in one tensor, in blocks of BLOCK_TOKENS tokens.

Layout: data [layers, 2 (K, V), H_kv, num_blocks * BLOCK_TOKENS, head_dim] in the model's dtype on the
model's device. Token t of a request lives at slot blocks[t // BLOCK_TOKENS] * BLOCK_TOKENS + t % BLOCK_TOKENS
of every (layer, K/V, head) row, so the decodes of one step read and write every request's KV with one
gather and one scatter per layer (gpu_worker/packed_attention.py) instead of one pair of ops per request.

The pool hands out block ids; gpu_worker/kv_budget.py decides whether a request may have them (admission),
so `take` is only called for blocks the budget granted. Blocks come back with `give`, most recent first out
again (their pages are already touched on the CPU stand-in).
"""

from __future__ import annotations

import threading

import torch

from gpu_worker.kv_budget import BLOCK_TOKENS


class KvPool:
    def __init__(self, num_blocks: int, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str):
        self.num_blocks = num_blocks
        self.device = device
        self.data = torch.empty(num_layers, 2, kv_heads, num_blocks * BLOCK_TOKENS, head_dim, dtype=dtype,
                                device=device)
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives block 0 first
        self._lock = threading.Lock()

    def take(self, blocks: int) -> list[int]:
        """`blocks` free block ids, ascending when the pool can (consecutive ids make reads views)."""
        with self._lock:
            if blocks > len(self._free):
                raise RuntimeError(f"{blocks} KV blocks asked of a pool with {len(self._free)} free "
                                   "(the budget must grant them first)")
            taken = [self._free.pop() for _ in range(blocks)]
        return sorted(taken)

    def give(self, block_ids: list[int]) -> None:
        with self._lock:
            self._free.extend(sorted(block_ids, reverse=True))

    def free_blocks(self) -> int:
        with self._lock:
            return len(self._free)

    def keys(self, layer: int) -> torch.Tensor:
        """[H_kv, slots, D]: layer's K of every block."""
        return self.data[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        return self.data[layer, 1]
