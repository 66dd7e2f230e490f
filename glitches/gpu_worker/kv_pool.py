"""Every request's KV on one GPU worker: one tensor in blocks of KV_BLOCK_TOKENS tokens, and the one
allocator of those blocks (a free list under one lock).

Layout: data [layers, 2 (K, V), H_kv, num_blocks * KV_BLOCK_TOKENS, head_dim] in the model's dtype on the
model's device. Token t of a request lives at slot blocks[t // KV_BLOCK_TOKENS] * KV_BLOCK_TOKENS
+ t % KV_BLOCK_TOKENS of every (layer, K/V, head) row, so the decodes of one step read and write every
request's KV with one gather and one scatter per layer (glitches/gpu_worker/packed_attention.py) instead of one
pair of ops per request.

The number of blocks is fixed at start-up (a fraction of the device memory left after the weights, or
an explicit size). Admission (glitches/gpu_worker/request_table.py) asks `try_take(ceil(tokens / 16))` for
everything a request may hold (prompt + max_new_tokens for GPU assist; the prompt alone for a prefill
whose KV streams to an FPGA) and the request gives its ids back with `give` when it is released, so a
request admitted never runs out of KV half-way and nothing needs preempting. Ids come back most recent
first out again (their pages are already touched on the CPU stand-in).

With a prefix cache (glitches/kv_plane/prefix_index.py) a released request's full blocks, named by the
hash chain of their tokens, stay as evictable cache instead of going back to the free list;
`take_prefixed` hands a new request the cached blocks of its prefix first and evicts the least
recently used evictable blocks when the free list is short. `free_blocks` counts both free and
evictable blocks (either can be given to a request now), so at idle free_blocks = total_blocks.
`held_changes()` returns the names that became cached or were evicted since its last call (the
worker publishes them for KV-aware routing, Registry.publish_held, off the request path).
`evict_cache()` drops every evictable block at once (Worker/EvictCache), never one a request references.
"""

from __future__ import annotations

import threading

import torch

from glitches.kv_plane.prefix_index import PrefixIndex
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS


def blocks_for(tokens: int) -> int:
    """Blocks that `tokens` tokens of KV take (rounded up)."""
    return -(-tokens // KV_BLOCK_TOKENS)


class KvPool:
    def __init__(self, num_blocks: int, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str, prefix_cache: bool = False):
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
        self.prefix = PrefixIndex() if prefix_cache else None  # None: every released block goes back to _free
        self.lookup_blocks = 0  # full prompt blocks looked up in the prefix cache since start
        self.hit_blocks = 0  # of those, found cached (reused instead of computed)
        self._changes: dict[bytes, bool] = {}  # name -> cached (True) or evicted (False), its last change since

    @property
    def total_blocks(self) -> int:
        return self.num_blocks

    @property
    def free_blocks(self) -> int:
        """Blocks a request can be given now: free plus evictable cache."""
        with self._lock:
            return len(self._free) + (self.prefix.evictable_blocks if self.prefix else 0)

    @property
    def cached_blocks(self) -> int:
        """Blocks named in the prefix cache (used by running requests or evictable); 0 without one."""
        with self._lock:
            return self.prefix.cached_blocks if self.prefix else 0

    @property
    def evictable_blocks(self) -> int:
        with self._lock:
            return self.prefix.evictable_blocks if self.prefix else 0

    @property
    def evictions(self) -> int:
        with self._lock:
            return self.prefix.evictions if self.prefix else 0

    def try_take(self, blocks: int) -> list[int] | None:
        """`blocks` block ids, ascending when the pool can (consecutive ids make reads views);
        None (and nothing taken) when fewer are free or evictable."""
        taken = self.take_prefixed([], blocks)
        return taken[0] if taken is not None else None

    def take_prefixed(self, names: list[bytes], blocks: int) -> tuple[list[int], int] | None:
        """(ids, hits): `blocks` block ids whose first `hits` are the cached blocks of the longest cached
        prefix of `names` (the chain names of the request's full prompt blocks, in order; each now
        referenced by the caller), the rest fresh (free first, then evicted LRU cache), ascending.
        None, and nothing taken, when the fresh ones are not available."""
        with self._lock:
            hits = self.prefix.match(names[:blocks]) if self.prefix and names else []
            need = blocks - len(hits)
            if need > len(self._free) + (self.prefix.evictable_blocks if self.prefix else 0):
                for block in reversed(hits):
                    self.prefix.unref(block)
                return None
            fresh = [self._free.pop() for _ in range(min(need, len(self._free)))]
            while len(fresh) < need:
                block, name = self.prefix.evict_named()
                fresh.append(block)
                self._changes[name] = False
            if self.prefix and names:
                self.lookup_blocks += min(len(names), blocks)
                self.hit_blocks += len(hits)
        return hits + sorted(fresh), len(hits)

    def take(self, blocks: int) -> list[int]:
        """As try_take, for callers that sized the pool themselves (tests, benchmarks): raises when short."""
        taken = self.try_take(blocks)
        if taken is None:
            raise RuntimeError(f"{blocks} KV blocks asked of a pool with {self.free_blocks} free")
        return taken

    def give(self, block_ids: list[int], names: list[bytes] = ()) -> None:
        """A released request's blocks, in token order; names[i]: the chain name of block_ids[i] when that
        block is full and computed (only a leading run). With a prefix cache, named blocks stay as
        evictable cache (entered tail first, so eviction eats a chain from its tail); the rest are freed."""
        with self._lock:
            freed = []
            for i in range(len(block_ids) - 1, -1, -1):
                block = block_ids[i]
                if self.prefix is not None and self.prefix.is_named(block):  # a hit, or published before
                    self.prefix.unref(block)
                elif self.prefix is not None and i < len(names) and self.prefix.publish(names[i], block):
                    self.prefix.unref(block)
                    self._changes[names[i]] = True
                else:
                    freed.append(block)
            self._free.extend(sorted(freed, reverse=True))
            if len(self._free) + (self.prefix.cached_blocks if self.prefix else 0) > self.num_blocks:
                raise RuntimeError("KV blocks given back twice")

    def evict_cache(self) -> tuple[int, int]:
        """Forced eviction (the operator's Worker/EvictCache): every evictable cached block goes back to the free
        list and is recorded for held_changes; blocks a running request references stay. Returns
        (blocks evicted, cached blocks left because requests use them)."""
        with self._lock:
            if self.prefix is None:
                return 0, 0
            evicted = []
            while (victim := self.prefix.evict_named()) is not None:
                block, name = victim
                evicted.append(block)
                self._changes[name] = False
            self._free.extend(sorted(evicted, reverse=True))
            return len(evicted), self.prefix.cached_blocks

    def held_changes(self) -> tuple[list[bytes], list[bytes]]:
        """(cached, evicted) block names since the last call, each by its last change."""
        with self._lock:
            changes, self._changes = self._changes, {}
        return [n for n, cached in changes.items() if cached], [n for n, cached in changes.items() if not cached]

    def keys(self, layer: int) -> torch.Tensor:
        """[H_kv, slots, D]: layer's K of every block."""
        return self.data[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        return self.data[layer, 1]
