"""One request's KV on the GPU worker: its blocks of the worker's KvPool (glitches/gpu_worker/kv_pool.py).

`slots` [capacity] (long, on the device) maps the request's token t to its slot in the pool's rows;
`capacity` is its blocks x KV_BLOCK_TOKENS tokens, `length` the tokens written and complete in every layer.
write() scatters a chunk into the pool; read() returns the first `length` tokens of a layer as
[1, H_kv, length, D] (a view when the request's blocks are consecutive, else a gathered copy).
A RequestKv made without a pool gets a private one of exactly its blocks (tests, benchmarks).

Prefix cache: `cached_tokens` leading tokens came from cached blocks (already written: `length`
starts there); `tokens` are the ids whose KV sits at positions 0.. (the prefill's tokens, then each
decoded token fed); with a chain `root` (glitches/kv_plane/prefix_index.py), free() names the full blocks
of tokens[:length] so the pool keeps them as cache. Without a root nothing is named (KV that arrived
from elsewhere, or reuse off).
"""

from __future__ import annotations

import torch

from glitches.gpu_worker.kv_pool import KvPool
from glitches.kv_plane.prefix_index import block_hashes
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS


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
        # one run of consecutive ids (cached blocks then fresh ones need not be): reads can be views
        one_run = blocks > 0 and self.block_ids == list(range(self.block_ids[0], self.block_ids[0] + blocks))
        self._base = self.block_ids[0] * KV_BLOCK_TOKENS if one_run else None  # first slot, when reads can be views
        self.length = 0  # tokens written and complete in every layer
        self.cached_tokens = 0  # leading tokens whose KV came from the prefix cache (a multiple of 16)
        self.tokens: list[int] = []  # token ids at positions 0.. (for naming blocks at free)
        self.root: bytes | None = None  # chain start (model, tenant salt); None: publish nothing

    def free(self) -> None:
        """Give the blocks back to the pool (the request is released); the object must not be used after."""
        if self.block_ids:
            names = block_hashes(self.tokens[:self.length], self.root) if self.root is not None else []
            self.pool.give(self.block_ids, names)
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
