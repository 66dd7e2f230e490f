"""Workers described by capabilities: stray or malformed registry records are skipped (logged once), never fatal,
and placement orders decode-role workers by decode class whatever their kind is called."""

import logging

import redis

from glitches.scheduler.placement import ClusterSnapshot, PlacementRequest, WorkerView, place
from glitches.services.cluster.registry import Registry, WorkerRecord
from glitches.services.cluster.worker_caps import (DECODE_CLASS_DEDICATED, DECODE_CLASS_GPU, ROLE_ASSIST, ROLE_DECODE, ROLE_PREFILL,
                                  capabilities_of, parse_roles, unusable_reason)
from tests.conftest import REDIS_URL

REQ = PlacementRequest(prompt_tokens=10, max_new_tokens=5, kv_bytes_needed=100)


def _record(worker_id, kind="fpga", **extra):
    fields = dict(backend="emu", emulated=1, device_name="emu", address="127.0.0.1:1", pid=1, model="m", slots=1,
                  kv_capacity_bytes=100, kv_free_bytes=100, kv_bytes_per_token=10)
    return WorkerRecord(worker_id=worker_id, kind=kind, **{**fields, **extra})


def _write_raw(prefix: str, worker_id: str, fields: dict | bytes | None) -> None:
    """A record straight into Redis, as a stray or broken worker (or a person) might leave it."""
    client = redis.Redis.from_url(REDIS_URL)
    client.sadd(f"{prefix}:workers", worker_id)
    client.set(f"{prefix}:alive:{worker_id}", "1")
    if isinstance(fields, dict):
        client.hset(f"{prefix}:worker:{worker_id}", mapping=fields)
    elif isinstance(fields, bytes):  # not a hash at all
        client.set(f"{prefix}:worker:{worker_id}", fields)


def test_builtin_kinds_keep_their_roles_without_the_new_fields():
    assert capabilities_of("gpu", "", 0).roles == {ROLE_PREFILL, ROLE_ASSIST}
    fpga = capabilities_of("fpga", "", 0)
    assert fpga.roles == {ROLE_DECODE} and fpga.decode_class == DECODE_CLASS_DEDICATED
    assert capabilities_of("npu-x", "", 0).roles == frozenset()
    assert parse_roles("decode, warp-drive,prefill") == {ROLE_DECODE, ROLE_PREFILL}  # unknown names dropped


def test_unusable_reasons():
    assert unusable_reason(_record("f0")) == ""
    assert "no roles" in unusable_reason(_record("n0", kind="npu-x"))
    assert unusable_reason(_record("n1", kind="npu-x", roles="decode", decode_class=5)) == ""
    assert "decode class 0" in unusable_reason(_record("n2", kind="npu-x", roles="decode"))
    assert "kv_granularity_tokens" in unusable_reason(_record("f1", kv_granularity_tokens=0))
    assert "slots" in unusable_reason(_record("f2", slots=-1))


def test_malformed_records_are_skipped_and_logged_once(redis_prefix, caplog):
    registry = Registry(REDIS_URL, redis_prefix)
    registry.register(_record("f0"))
    _write_raw(redis_prefix, "npu-0", {"worker_id": "npu-0", "kind": "npu-x", "address": "127.0.0.1:2"})  # missing
    _write_raw(redis_prefix, "bad-int", {**{k: str(v) for k, v in vars(_record("bad-int")).items()},
                                         "slots": "lots"})
    _write_raw(redis_prefix, "bad-utf8", {"worker_id": b"\xff\xfe", "kind": "fpga"})
    _write_raw(redis_prefix, "not-a-hash", b"{not json")
    npu = _record("npu-1", kind="npu-x")  # complete, but says nothing it can do
    registry.register(npu)
    with caplog.at_level(logging.WARNING, logger="glitches.services.cluster.registry"):
        for _ in range(3):
            states = registry.workers()
    assert [s.record.worker_id for s in states] == ["f0", "npu-1"]
    warnings = [r.getMessage() for r in caplog.records]
    for worker_id in ("npu-0", "bad-int", "bad-utf8", "not-a-hash"):
        assert sum(worker_id in m for m in warnings) == 1, warnings  # once, not once per read
    assert unusable_reason(states[1].record)  # listed, but placement cannot use it


def test_placement_prefers_lower_decode_class_of_any_kind():
    snap = ClusterSnapshot((
        WorkerView("g0", "gpu", 4, 0, 10**9),
        WorkerView("f0", "fpga", 1, 0, 10**9),
        WorkerView("npu0", "npu-x", 1, 0, 10**6, roles=frozenset({ROLE_DECODE}), decode_class=5),
        WorkerView("gd0", "gpu", 1, 0, 10**9, roles=frozenset({ROLE_DECODE}), decode_class=DECODE_CLASS_GPU),
        WorkerView("mystery", "npu-y", 8, 0, 10**12),  # no roles: never placed
    ))
    decision = place(snap, REQ)
    assert decision.prefill_worker == "g0"
    assert decision.decode_candidates == ("npu0", "f0", "gd0")
    assert decision.gpu_assist_worker == "g0"


def test_a_prefill_role_of_another_kind_prefills():
    snap = ClusterSnapshot((WorkerView("t0", "tpu-z", 2, 0, 10**9, roles=frozenset({ROLE_PREFILL})),
                            WorkerView("f0", "fpga", 1, 0, 10**9)))
    decision = place(snap, REQ)
    assert decision.prefill_worker == "t0" and decision.decode_candidates == ("f0",)
    assert decision.gpu_assist_worker is None  # it has no assist role


def test_the_scheduler_skips_a_record_it_cannot_place_and_says_so_once(redis_prefix, caplog):
    from glitches.scheduler.orchestrator import ModelInfo, Orchestrator
    from glitches.scheduler.settings import SchedulerSettings

    registry = Registry(REDIS_URL, redis_prefix)
    registry.register(_record("f0"))
    registry.register(_record("npu-0", kind="npu-x"))  # no roles
    registry.register(_record("f1", kv_granularity_tokens=0))  # would divide by zero in the KV estimate
    orchestrator = Orchestrator(SchedulerSettings(), registry, ModelInfo("m", None, (2,), 512, vocab_size=100))
    with caplog.at_level(logging.WARNING, logger="glitches.scheduler.orchestrator"):
        for _ in range(3):
            assert list(orchestrator._live_workers(set())) == ["f0"]
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("npu-0" in m for m in warnings) == 1 and sum("f1" in m for m in warnings) == 1, warnings
