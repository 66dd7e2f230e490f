"""The GPU's prefix cache, published for routing: the pool reports the names it caches and evicts, and the
publisher writes them to the real Redis (P:held:{id}), where the scheduler's overlap reads them."""

from __future__ import annotations

import torch

from glitches.gpu_worker.kv_pool import KvPool
from glitches.kv_plane.prefix_index import block_hashes, root_hash
from glitches.services.cluster.held_publisher import HeldPublisher
from glitches.services.cluster.registry import Registry, WorkerRecord
from tests.conftest import REDIS_URL


def _pool(blocks: int) -> KvPool:
    return KvPool(blocks, num_layers=1, kv_heads=1, head_dim=2, dtype=torch.float32, device="cpu", prefix_cache=True)


def test_pool_reports_cached_then_evicted_names():
    pool = _pool(4)
    names = block_hashes(list(range(48)), root_hash("m", b"t"))  # 3 full blocks
    ids, hits = pool.take_prefixed(names, 3)
    pool.give(ids, names)
    assert pool.held_changes() == (names[::-1], []) and pool.held_changes() == ([], [])  # named tail first
    again, hits = pool.take_prefixed(names, 3)  # a hit: nothing new is cached
    assert hits == 3
    pool.give(again, names)
    assert pool.held_changes() == ([], [])
    pool.give(pool.take(4))  # needs every block: the chain is evicted from its tail
    assert pool.held_changes() == ([], [names[2], names[1], names[0]])


def test_publisher_writes_what_the_pool_holds_and_routing_reads_it(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=30)
    registry.register(WorkerRecord(worker_id="gpu-0", kind="gpu", backend="cpu", emulated=1, device_name="cpu",
                                   address="127.0.0.1:1", pid=1, model="m", slots=1, kv_capacity_bytes=1,
                                   kv_free_bytes=1, kv_bytes_per_token=1))
    pool = _pool(4)
    publisher = HeldPublisher(registry, lambda: "gpu-0", pool.held_changes)
    names = block_hashes(list(range(48)), root_hash("m", b"t"))
    ids, _ = pool.take_prefixed(names, 3)
    pool.give(ids, names)
    assert publisher.publish_once()
    assert registry.held_overlap(["gpu-0"], names) == {"gpu-0": 3}
    pool.give(pool.take(3))  # the free block and two evicted: the chain's last two
    assert publisher.publish_once()
    assert registry.held_overlap(["gpu-0"], names) == {"gpu-0": 1}
    registry.close()
