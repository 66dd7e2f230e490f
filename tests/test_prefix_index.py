"""The GPU worker's prefix cache index and its pool (glitches/kv_plane/prefix_index.py, glitches/gpu_worker/kv_pool.py):
hits on full blocks only, salts never share, LRU eviction from a chain's tail, blocks a running request
uses never evicted, free + evictable = total at idle."""

from __future__ import annotations

import torch

from glitches.gpu_worker.kv_pool import KvPool
from glitches.kv_plane.prefix_index import PrefixIndex, block_hashes, root_hash

ROOT = root_hash("model-a", b"tenant-1")


def _pool(blocks: int) -> KvPool:
    return KvPool(blocks, 1, 1, 2, torch.float32, "cpu", prefix_cache=True)


def _run(pool: KvPool, tokens: list[int], reserve_blocks: int, root: bytes = ROOT) -> tuple[list[int], int]:
    """Admit a request for `tokens` (reusing what it can), then release it with its full blocks named."""
    ids, hits = pool.take_prefixed(block_hashes(tokens[:-1], root), reserve_blocks)
    pool.give(ids, block_hashes(tokens, root))
    return ids, hits


def test_names_cover_full_blocks_and_everything_before_them():
    tokens = list(range(100, 150))  # 50 tokens: 3 full blocks and 2 tokens
    names = block_hashes(tokens, ROOT)
    assert len(names) == 3
    assert block_hashes(tokens[:47], ROOT) == names[:2]  # a partial block gets no name
    changed = [tokens[0] + 1] + tokens[1:]
    assert all(a != b for a, b in zip(block_hashes(changed, ROOT), names))  # the chain carries token 0 forward
    assert block_hashes(tokens, root_hash("model-b", b"tenant-1")) != names


def test_a_second_request_reuses_full_blocks_only():
    pool = _pool(16)
    prompt = list(range(40))  # blocks 0-15, 16-31 full; 32-39 partial
    _run(pool, prompt, 4)
    assert pool.cached_blocks == 2
    ids, hits = pool.take_prefixed(block_hashes((prompt + [7, 8])[:-1], ROOT), 4)
    assert hits == 2
    other, other_hits = pool.take_prefixed(block_hashes(list(range(1, 41))[:-1], ROOT), 4)  # same ids shifted
    assert other_hits == 0 and not set(other) & set(ids)
    pool.give(other)
    pool.give(ids)
    # the last token is always computed: a prompt of exactly 2 blocks reuses 1
    _ids, hits = pool.take_prefixed(block_hashes(prompt[:32][:-1], ROOT), 2)
    assert hits == 1
    pool.give(_ids)


def test_salts_never_share_blocks():
    pool = _pool(16)
    prompt = list(range(64))
    _run(pool, prompt, 4, root_hash("m", b"alice"))
    ids, hits = pool.take_prefixed(block_hashes(prompt[:-1], root_hash("m", b"bob")), 4)
    assert hits == 0
    pool.give(ids)
    ids, hits = pool.take_prefixed(block_hashes(prompt[:-1], root_hash("m", b"alice")), 4)
    assert hits == 3
    pool.give(ids)


def test_lru_evicts_the_least_recent_chain_from_its_tail():
    index = PrefixIndex()
    for block, name in enumerate((b"a0", b"a1", b"a2")):
        index.publish(name, block)
    for block in (2, 1, 0):  # released tail first, as the pool does
        index.unref(block)
    index.publish(b"b0", 3)
    index.unref(3)
    assert [index.evict(), index.evict()] == [2, 1]  # chain a, tail first; chain b (more recent) stays
    assert index.match([b"a0", b"a1"]) == [0]  # the shorter prefix still hits
    assert index.evict() == 3  # a0 is referenced now: never evicted
    assert index.evict() is None
    index.unref(0)
    assert index.evict() == 0
    assert index.evictions == 4


def test_a_hit_refreshes_its_chain():
    pool = _pool(6)
    first, second = list(range(33)), list(range(1000, 1033))  # 2 full blocks each (+1 token)
    _run(pool, first, 3)
    _run(pool, second, 3)
    _run(pool, first, 3)  # first is now more recent than second
    ids, hits = pool.take_prefixed([], 4)  # 2 free + 2 evicted: second's, not first's
    assert hits == 0
    _ids, first_hits = pool.take_prefixed(block_hashes(first[:-1], ROOT), 2)
    assert first_hits == 2
    pool.give(ids)
    pool.give(_ids)


def test_running_blocks_are_never_evicted_and_free_plus_evictable_is_total():
    pool = _pool(8)
    prompt = list(range(64))  # 4 full blocks
    _run(pool, prompt, 4)
    assert pool.free_blocks == pool.total_blocks == 8  # 4 free + 4 evictable
    running, hits = pool.take_prefixed(block_hashes(prompt[:-1], ROOT), 5)  # 3 cached + 2 fresh
    assert hits == 3
    assert pool.free_blocks == 3  # 3 free + the 4th cached block (evictable)
    assert pool.take_prefixed([], 4) is None  # would need a running block
    assert pool.free_blocks == 3
    taken, _ = pool.take_prefixed([], 3)
    assert not set(taken) & set(running)
    assert pool.evictions == 1
    pool.give(taken)
    pool.give(running, block_hashes(prompt, ROOT))
    assert pool.free_blocks == pool.total_blocks
    assert pool.cached_blocks == pool.evictable_blocks == 4


def test_without_a_prefix_cache_nothing_is_kept():
    pool = KvPool(4, 1, 1, 2, torch.float32, "cpu")
    ids, hits = pool.take_prefixed(block_hashes(list(range(40)), ROOT), 3)
    assert hits == 0
    pool.give(ids, block_hashes(list(range(48)), ROOT))
    assert pool.cached_blocks == 0 and pool.free_blocks == 4
    assert pool.take_prefixed(block_hashes(list(range(40)), ROOT), 3)[1] == 0
