"""Which finished requests' KV a card keeps as reusable cache, and which one a new prompt can reuse.

Pure bookkeeping (no memory): the card's KV store (emu_kv.py) owns the regions and asks this index.

Protocol:
- `add(key, tokens, root, nbytes)` when a request that finished normally leaves its region behind
  (`key` names the region in the KV space; `tokens` are the ids whose KV the region holds, prompt +
  generated tokens the card stepped; `root` is prefix_index.root_hash(model, salt); `nbytes` the
  region's bytes on the whole card). Its full 16-token blocks are named by the hash chain of
  glitches/kv_plane/prefix_index.py, the same names the GPU's prefix cache and the router use.
- `best(prompt, root)` finds the entry sharing the longest prefix with `prompt`: candidates come from
  the hash chain (any of the prompt's block hashes the index holds), then the token ids are compared,
  so a hash collision or a different salt never yields a match. The count is the common prefix in
  tokens (a partial last block counts too: its KV depends only on the tokens before it).
- `take(key)` removes an entry that a new request adopts (in use again: no longer evictable);
  `lru(exclude)` names the least recently added or hit entry to evict; `remove(key)` after eviction.
- `drain()` returns (added, removed) chain hashes since the last drain, for the Redis publisher
  (Registry.publish_held): a hash is added when the first entry holding it arrives and removed when
  the last one goes, so two conversations sharing a system prompt publish it once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from glitches.kv_plane.prefix_index import block_hashes


@dataclass(frozen=True)
class RetainedEntry:
    key: str  # the region's name in the KV space
    tokens: tuple[int, ...]  # ids whose KV the region holds, position 0 first
    root: bytes  # prefix_index.root_hash(model, salt)
    hashes: tuple[bytes, ...]  # chain hashes of the full 16-token blocks of `tokens`
    nbytes: int  # KV bytes of the region on the whole card


def common_prefix(a: tuple[int, ...] | list[int], b: list[int]) -> int:
    """How many leading token ids a and b share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class RetainedIndex:
    def __init__(self):
        self._entries: OrderedDict[str, RetainedEntry] = OrderedDict()  # least recently used first
        self._by_hash: dict[bytes, set[str]] = {}  # chain hash -> keys of the entries holding that block
        self._added: set[bytes] = set()
        self._removed: set[bytes] = set()
        self._lock = threading.Lock()

    def add(self, key: str, tokens: list[int], root: bytes, nbytes: int) -> RetainedEntry:
        entry = RetainedEntry(key, tuple(tokens), root, tuple(block_hashes(list(tokens), root)), nbytes)
        with self._lock:
            self._entries[key] = entry
            for h in entry.hashes:
                holders = self._by_hash.setdefault(h, set())
                if not holders:
                    self._note(h, added=True)
                holders.add(key)
        return entry

    def _note(self, h: bytes, added: bool) -> None:
        """Record a published-set change; a change undone before the next drain cancels out."""
        mine, other = (self._added, self._removed) if added else (self._removed, self._added)
        if h in other:
            other.discard(h)
        else:
            mine.add(h)

    def remove(self, key: str) -> RetainedEntry | None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return None
            for h in entry.hashes:
                holders = self._by_hash.get(h)
                if holders is None:
                    continue
                holders.discard(key)
                if not holders:
                    del self._by_hash[h]
                    self._note(h, added=False)
            return entry

    take = remove  # adoption: the entry leaves the cache (its region is in use again)

    def best(self, prompt: list[int], root: bytes) -> tuple[RetainedEntry | None, int]:
        """The entry with the longest verified common prefix with `prompt` under `root`, and its length."""
        with self._lock:
            keys = set()
            for h in block_hashes(prompt, root):
                holders = self._by_hash.get(h)
                if not holders:
                    break  # a chain: no later block can be held by the same prefix
                keys |= holders
            best, best_n = None, 0
            for key in keys:
                entry = self._entries[key]
                n = common_prefix(entry.tokens, prompt) if entry.root == root else 0
                if n > best_n:
                    best, best_n = entry, n
            if best is not None:
                self._entries.move_to_end(best.key)  # a hit refreshes the whole chain
            return best, best_n

    def lru(self, exclude: str | None = None) -> str | None:
        with self._lock:
            return next((k for k in self._entries if k != exclude), None)

    def evictable_bytes(self) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    def held_hashes(self) -> set[bytes]:
        with self._lock:
            return set(self._by_hash)

    def drain(self) -> tuple[list[bytes], list[bytes]]:
        """(added, removed) chain hashes since the last drain."""
        with self._lock:
            added, removed = sorted(self._added), sorted(self._removed)
            self._added, self._removed = set(), set()
            return added, removed
