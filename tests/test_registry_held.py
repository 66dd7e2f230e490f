"""Registry.publish_held / held_overlap against the real Redis, under a test-only prefix."""

import time

from glitches.kv_plane.prefix_index import block_hashes, root_hash
from glitches.services.cluster.registry import Heartbeat, Registry, WorkerRecord
from tests.conftest import REDIS_URL


def _record(worker_id):
    return WorkerRecord(worker_id=worker_id, kind="fpga", backend="emu", emulated=1, device_name="emu",
                        address="127.0.0.1:1", pid=1, model="m", slots=1, kv_capacity_bytes=100,
                        kv_free_bytes=100, kv_bytes_per_token=10)


def _chain(n_blocks, salt=b""):
    return block_hashes(list(range(16 * n_blocks)), root_hash("m", salt))


def test_overlap_counts_leading_blocks_only(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=5)
    chain = _chain(4)
    for worker_id in ("f0", "f1", "f2"):
        registry.register(_record(worker_id))
    registry.publish_held("f0", chain[:3], [])
    registry.publish_held("f0", chain[:3], [])  # idempotent
    registry.publish_held("f1", chain[1:], [])  # holds later blocks but not the first: no usable prefix
    assert registry.held_overlap(["f0", "f1", "f2", "ghost"], chain) == {"f0": 3, "f1": 0, "f2": 0, "ghost": 0}
    registry.publish_held("f0", [], [chain[1]])  # evicted from the middle: only block 0 still leads
    assert registry.held_overlap(["f0"], chain) == {"f0": 1}
    assert registry.held_overlap(["f0"], _chain(4, salt=b"other tenant")) == {"f0": 0}
    assert registry.held_overlap([], chain) == {} and registry.held_overlap(["f0"], []) == {"f0": 0}
    registry.publish_held("f1", [], chain[1:])
    registry.publish_held("f2", chain, [])
    registry.clear_held("f2")  # a restarted worker holds nothing
    assert registry.held_overlap(["f2"], chain) == {"f2": 0}
    registry.deregister("f0")
    assert not registry.redis.exists(f"{redis_prefix}:held:f0")


def test_held_set_expires_with_the_heartbeat(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=0.4)
    chain = _chain(2)
    beat = Heartbeat(registry, lambda: _record("f0"), interval_s=0.1)
    beat.start()
    registry.publish_held("f0", chain, [])
    time.sleep(0.8)  # two TTLs: alive only because the beats renew the set's expiry
    assert registry.held_overlap(["f0"], chain) == {"f0": 2}
    beat.stop(deregister=False)  # the worker stops beating (as if it died)
    time.sleep(0.6)
    assert registry.held_overlap(["f0"], chain) == {"f0": 0}
    assert not registry.redis.exists(f"{redis_prefix}:held:f0")
