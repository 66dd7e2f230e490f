"""The Redis registry against the real Redis at 127.0.0.1:6379, under a test-only prefix."""

import threading
import time

from glitches.services.cluster.registry import Heartbeat, Registry, WorkerRecord
from tests.conftest import REDIS_URL


def _record(worker_id, kind="fpga", slots=1):
    return WorkerRecord(worker_id=worker_id, kind=kind, backend="emu", emulated=1, device_name="emu",
                        address="127.0.0.1:1", pid=1, model="m", slots=slots, kv_capacity_bytes=100,
                        kv_free_bytes=100, kv_bytes_per_token=10)


def test_register_list_and_expire(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=0.3)
    registry.register(_record("f0"))
    [state] = registry.workers()
    assert state.healthy and state.record == _record("f0")
    time.sleep(0.4)
    assert not registry.workers()[0].healthy  # heartbeat expired
    registry.deregister("f0")
    assert registry.workers() == []


def test_concurrent_claims_never_exceed_slots(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix)
    registry.register(_record("f0", slots=2))
    registry.register(_record("f1", slots=1))
    won = []

    def claim(i):
        won.append(registry.claim_first_free(f"r{i}", "decode", ["f0", "f1"]))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(w for w in won if w) == ["f0", "f0", "f1"]
    assert registry.occupancy() == {"f0": 2, "f1": 1}
    for i in range(20):
        registry.release(f"r{i}", "decode")
        registry.release(f"r{i}", "decode")  # a second release changes nothing
    assert registry.occupancy() == {} and registry.claims() == {}


def test_dead_worker_is_never_claimed(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix)
    registry.register(_record("f0"))
    registry.redis.delete(f"{redis_prefix}:alive:f0")
    assert registry.claim_first_free("r", "decode", ["f0"]) is None
    assert not registry.claim_alive("r", "prefill", "f0")


def test_heartbeat_keeps_a_worker_alive_and_deregisters_on_stop(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=0.5)
    beat = Heartbeat(registry, lambda: _record("g0", kind="gpu"), interval_s=0.1)
    beat.start()
    time.sleep(0.8)
    assert registry.workers()[0].healthy
    beat.stop()
    assert registry.workers() == []


def test_expired_leases_are_swept_and_renewed_ones_are_kept(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, lease_ttl_s=0.3)
    registry.register(_record("f0", slots=2))
    assert registry.claim_first_free("dead", "decode", ["f0"]) == "f0"
    assert registry.claim_first_free("alive", "decode", ["f0"]) == "f0"
    for _ in range(4):
        time.sleep(0.1)
        registry.renew("alive")
    assert registry.sweep_expired() == ["dead:decode"]
    assert registry.occupancy() == {"f0": 1} and list(registry.claims()) == ["alive:decode"]
    registry.release("alive", "decode")
    assert registry.sweep_expired() == [] and registry.occupancy() == {}


def test_a_dead_worker_s_record_expires_some_heartbeat_ttls_after_its_last_beat(redis_prefix):
    """Status lists a dead worker unhealthy for DEAD_RECORD_TTL_FACTOR TTLs; then nothing of it is left in Redis."""
    from glitches.services.cluster.registry import DEAD_RECORD_TTL_FACTOR

    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=0.05)
    registry.register(_record("f0"))
    registry.publish_held("f0", [b"\x01" * 8], [])
    time.sleep(0.1)
    assert [(s.record.worker_id, s.healthy) for s in registry.workers()] == [("f0", False)]
    time.sleep(0.05 * DEAD_RECORD_TTL_FACTOR)
    assert registry.workers() == []
    assert list(registry.redis.scan_iter(f"{redis_prefix}:*")) == []  # record, set, liveness, held blocks
    registry.register(_record("f0"))  # it comes back: listed again
    assert [s.record.worker_id for s in registry.workers()] == ["f0"]
    registry.deregister("f0")
    registry.close()
