"""One request's KV on the GPU worker: its blocks of the worker's KvPool (gpu_worker/kv_pool.py).

`slots` [capacity] (long, on the device) maps the request's token t to its slot in the pool's rows;
`capacity` is its blocks x KV_BLOCK_TOKENS tokens, `length` the tokens written and complete in every layer.
write() scatters a chunk into the pool; read() returns the first `length` tokens of a layer as
[1, H_kv, length, D] (a view when the request's blocks are consecutive, else a gathered copy).
A RequestKv made without a pool gets a private one of exactly its blocks (tests, benchmarks).
"""

from __future__ import annotations

import torch

from gpu_worker.kv_pool import KvPool
from kv_plane.kv_abi import KV_BLOCK_TOKENS


class RequestKv:
    def __init__(self, blocks: int, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str, pool: KvPool | None = None, block_ids: list[int] | None = None):
        """block_ids: `blocks` ids admission already took from `pool` (ascending); None takes them here."""
        self.pool = pool or KvPool(blocks, num_layers, kv_heads, head_dim, dtype, device)
        self.block_ids = block_ids if block_ids is not None else self.pool.take(blocks)
        self.capacity = blocks * KV_BLOCK_TOKENS  # tokens
        ids = torch.tensor(self.block_ids, dtype=torch.long)
        self.slots = (ids.repeat_interleave(KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS
                      + torch.arange(KV_BLOCK_TOKENS).repeat(blocks)).to(device)  # [capacity]
        # the pool hands out ascending distinct ids, so they are one run when the last is first + blocks - 1
        one_run = blocks > 0 and self.block_ids[-1] - self.block_ids[0] == blocks - 1
        self._base = self.block_ids[0] * KV_BLOCK_TOKENS if one_run else None  # first slot, when reads can be views
        self.length = 0  # tokens written and complete in every layer

    def free(self) -> None:
        """Give the blocks back to the pool (the request is released); the object must not be used after."""
        if self.block_ids:
            self.pool.give(self.block_ids)
            self.block_ids = []

    def write(self, layer: int, start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store key/value [1, H_kv, n, D] at token positions start..start+n of `layer`."""
        end = start + key.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV write up to token {end} past the reserved {self.capacity}")
        if self._base is not None:
            self.pool.keys(layer)[:, self._base + start:self._base + end] = key[0]
            self.pool.values(layer)[:, self._base + start:self._base + end] = value[0]
            return
        slots = self.slots[start:end]
        self.pool.keys(layer).index_copy_(1, slots, key[0])
        self.pool.values(layer).index_copy_(1, slots, value[0])

    def read(self, layer: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values [1, H_kv, length, D] of tokens 0..length of `layer`."""
        if self._base is not None:
            span = slice(self._base, self._base + length)
            return self.pool.keys(layer)[:, span].unsqueeze(0), self.pool.values(layer)[:, span].unsqueeze(0)
        slots = self.slots[:length]
        return (self.pool.keys(layer).index_select(1, slots).unsqueeze(0),
                self.pool.values(layer).index_select(1, slots).unsqueeze(0))
