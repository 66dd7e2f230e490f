"""Prefix-cache index of a KV pool: full KV blocks named by a hash chain over token ids (the GPU
worker's pool uses it; a decode device retaining finished requests' KV names its blocks the same way).

Block i of a token sequence (tokens [16 i, 16 i + 16), KV_BLOCK_TOKENS = 16) is named
hash_i = SHA-256(hash_{i-1} || its 16 token ids as little-endian uint32), and hash_{-1} =
SHA-256("glitches-prefix-v1" || model || salt). So a name covers every token before the block
too, the model, and the tenant salt: two tenants (two salts) never share a name. Only full
blocks are named; a partial last block is never cached.

States of a block the index knows (the pool owns every block, e.g. glitches/gpu_worker/kv_pool.py):
- referenced: used by one or more running requests (refs > 0); never evicted;
- evictable: cached, used by none; kept in LRU order, the least recently used evicted first.
  A released chain enters the LRU tail-first (its last block is older than its first), so
  eviction eats a chain from its tail and a shorter prefix stays useful.

Protocol (every call under the pool's lock; the index has no lock of its own):
  match(hashes)          -> the blocks of the longest cached prefix of `hashes`; each gets a ref.
  publish(hash, block)   -> a block a request computed becomes named (ref 1, the request's);
                            False when the name is taken (the caller keeps the block unnamed).
  unref(block)           -> one ref less; at 0 the block joins the LRU as most recent.
  evict()                -> the least recently used evictable block, forgotten; None when none
                            (evict_named: with the name it had).
Invariant at idle: pool free + evictable = total.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict

from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS

DEFAULT_SALT = b"glitches-default-tenant"  # requests that carry no API-key identity share this salt


def root_hash(model: str, salt: bytes) -> bytes:
    """hash_{-1}: the chain's start for one model and one tenant salt."""
    return hashlib.sha256(b"glitches-prefix-v1\0" + model.encode() + b"\0" + salt).digest()


def block_hashes(tokens: list[int], root: bytes) -> list[bytes]:
    """The names of the full blocks of `tokens` (len(tokens) // 16 of them), chained from `root`."""
    names, parent = [], root
    for start in range(0, len(tokens) - KV_BLOCK_TOKENS + 1, KV_BLOCK_TOKENS):
        parent = hashlib.sha256(parent + struct.pack(f"<{KV_BLOCK_TOKENS}I", *tokens[start:start + KV_BLOCK_TOKENS])
                                ).digest()
        names.append(parent)
    return names


class PrefixIndex:
    def __init__(self):
        self._block_of: dict[bytes, int] = {}  # name -> block id
        self._name_of: dict[int, bytes] = {}  # block id -> name
        self._refs: dict[int, int] = {}  # named block -> running requests using it (absent: 0)
        self._lru: OrderedDict[int, None] = OrderedDict()  # evictable named blocks, least recent first
        self.evictions = 0  # blocks evicted since start

    @property
    def cached_blocks(self) -> int:
        """Named blocks (referenced or evictable)."""
        return len(self._block_of)

    @property
    def evictable_blocks(self) -> int:
        return len(self._lru)

    def is_named(self, block: int) -> bool:
        return block in self._name_of

    def match(self, hashes: list[bytes]) -> list[int]:
        """Blocks of the longest cached prefix of `hashes`, each referenced once more (taken off the LRU)."""
        found = []
        for name in hashes:
            block = self._block_of.get(name)
            if block is None:
                break
            found.append(block)
        for block in found:
            self._refs[block] = self._refs.get(block, 0) + 1
            self._lru.pop(block, None)
        return found

    def publish(self, name: bytes, block: int) -> bool:
        """Name `block` (computed by a running request, which holds the one ref); False if `name` is taken."""
        if name in self._block_of or block in self._name_of:
            return False
        self._block_of[name] = block
        self._name_of[block] = name
        self._refs[block] = 1
        return True

    def unref(self, block: int) -> None:
        """One running request fewer on a named block; unreferenced, it becomes the most recent evictable."""
        refs = self._refs.get(block, 0) - 1
        if refs < 0:
            raise RuntimeError(f"KV block {block} unreferenced more often than referenced")
        if refs:
            self._refs[block] = refs
            return
        self._refs.pop(block, None)
        self._lru[block] = None
        self._lru.move_to_end(block)

    def evict(self) -> int | None:
        """Forget the least recently used evictable block and return its id (now the pool's to reuse)."""
        evicted = self.evict_named()
        return None if evicted is None else evicted[0]

    def evict_named(self) -> tuple[int, bytes] | None:
        """As evict, with the name the block had (for publishing what is no longer held)."""
        if not self._lru:
            return None
        block, _ = self._lru.popitem(last=False)
        name = self._name_of.pop(block)
        del self._block_of[name]
        self.evictions += 1
        return block, name
