"""RetainedIndex: longest verified prefix, LRU order, and the published hash changes (pure bookkeeping)."""

from glitches.decode_contract.retained_kv import RetainedIndex
from glitches.kv_plane.prefix_index import block_hashes, root_hash

ROOT = root_hash("m", b"salt")
SYSTEM = list(range(32))  # two full blocks both conversations share


def test_longest_verified_prefix_wins_and_is_capped_by_the_ids():
    index = RetainedIndex()
    index.add("a", SYSTEM + [1] * 20, ROOT, 100)
    index.add("b", SYSTEM + [2] * 40, ROOT, 100)
    entry, n = index.best(SYSTEM + [2] * 40 + [9], ROOT)
    assert entry.key == "b" and n == 72
    entry, n = index.best(SYSTEM + [1] * 5 + [3], ROOT)  # a partial block still counts, ids compared
    assert entry.key == "a" and n == 37
    assert index.best(SYSTEM + [2] * 40, root_hash("m", b"other")) == (None, 0)  # another tenant: no hit
    assert index.best(list(range(10)), ROOT) == (None, 0)  # shorter than one block: nothing to look up


def test_lru_order_follows_hits():
    index = RetainedIndex()
    index.add("a", SYSTEM, ROOT, 1)
    index.add("b", [5] * 16, ROOT, 1)
    assert index.lru() == "a"
    index.best(SYSTEM + [0], ROOT)  # a hit refreshes a
    assert index.lru() == "b" and index.lru(exclude="b") == "a"
    assert index.evictable_bytes() == 2


def test_a_shared_block_is_published_once_and_withdrawn_with_its_last_holder():
    index = RetainedIndex()
    shared = block_hashes(SYSTEM, ROOT)
    index.add("a", SYSTEM + [1] * 16, ROOT, 1)
    index.add("b", SYSTEM + [2] * 16, ROOT, 1)
    added, removed = index.drain()
    assert set(shared) <= set(added) and len(added) == 4 and removed == []
    index.remove("a")
    added, removed = index.drain()
    assert added == [] and removed == block_hashes(SYSTEM + [1] * 16, ROOT)[2:]  # a's own block only
    index.take("b")
    index.add("c", SYSTEM, ROOT, 1)  # b's shared blocks go and come back before a drain: no change for them
    added, removed = index.drain()
    assert added == [] and removed == block_hashes(SYSTEM + [2] * 16, ROOT)[2:]
    assert index.held_hashes() == set(shared)
