"""A registry record the scheduler cannot use (a kind it does not know, or fields that do not parse) is skipped
and logged, never fatal: Generate and Status keep answering from the real workers beside it (issue #12, item 1)."""

from __future__ import annotations

import pytest
import redis

from tests.conftest import REDIS_URL
from tests.e2e.conftest import assert_idle

pytestmark = pytest.mark.e2e

STRAY = {
    # a well-formed record of a kind this scheduler has no placement for
    "npu-0": {"worker_id": "npu-0", "kind": "npu", "backend": "toy", "emulated": "1", "device_name": "toy NPU",
              "address": "127.0.0.1:1", "pid": "1", "model": "SmolLM2-135M-Instruct", "slots": "4",
              "kv_capacity_bytes": "1000000000", "kv_free_bytes": "1000000000", "kv_bytes_per_token": "1"},
    # a half-written record: ints that are not ints, required fields missing
    "garbage-0": {"worker_id": "garbage-0", "kind": "fpga", "slots": "many", "pid": "x"},
}


@pytest.fixture
def stray_records(cluster):
    r = redis.Redis.from_url(REDIS_URL)
    prefix = cluster["prefix"]
    for worker_id, record in STRAY.items():
        r.hset(f"{prefix}:worker:{worker_id}", mapping=record)
        r.set(f"{prefix}:alive:{worker_id}", "1", ex=60)
        r.sadd(f"{prefix}:workers", worker_id)
    yield
    for worker_id in STRAY:
        r.delete(f"{prefix}:worker:{worker_id}", f"{prefix}:alive:{worker_id}")
        r.srem(f"{prefix}:workers", worker_id)


def test_unknown_kind_and_malformed_records_do_not_break_generate(cluster, reference, stray_records):
    prompt = "The capital of France is"
    result = cluster["client"].generate(prompt, max_tokens=8)
    assert list(result.token_ids) == reference["generate"](list(result.prompt_token_ids), 8)
    assert result.decode_worker not in STRAY
    ids = {w.worker_id for w in cluster["client"].status().workers}
    assert "garbage-0" not in ids and {"gpu-0", "fpga-0"} <= ids
    assert_idle(cluster["registry"])


def _stray_records(model: str) -> dict[str, dict | bytes]:
    """worker id -> what is written at P:worker:{id} (a hash's fields, or bytes for a key that is no hash)."""
    whole = dict(backend="emu", emulated="1", device_name="stray", address="127.0.0.1:9", pid="1", model=model,
                 slots="4", kv_capacity_bytes=str(10**12), kv_free_bytes=str(10**12), kv_bytes_per_token="1")
    return {
        "stray-npu": {**whole, "worker_id": "stray-npu", "kind": "npu-x"},  # a kind nobody knows, no roles
        "stray-npu-roles": {**whole, "worker_id": "stray-npu-roles", "kind": "npu-x", "roles": "decode",
                            "decode_class": "-3"},  # roles, but a decode class that is no class
        "stray-garbage": {**whole, "worker_id": "stray-garbage", "kind": "fpga", "slots": "many"},
        "stray-missing": {"worker_id": "stray-missing", "kind": "fpga"},
        "stray-zero-granularity": {**whole, "worker_id": "stray-zero-granularity", "kind": "fpga",
                                   "kv_granularity_tokens": "0"},  # would divide by zero in the KV estimate
        "stray-negative": {**whole, "worker_id": "stray-negative", "kind": "fpga", "slots": "-1", "pid": "-5"},
        "stray-not-a-hash": b"{this is not json, nor a hash}",
    }


def test_records_of_every_kind_of_garbage_are_skipped(cluster, reference):
    client = cluster["client"]
    prefix = cluster["prefix"]
    real = sorted(w.worker_id for w in client.status().workers)
    r = redis.Redis.from_url(REDIS_URL)
    strays = _stray_records(client.status().model)
    try:
        for worker_id, value in strays.items():
            r.sadd(f"{prefix}:workers", worker_id)
            r.set(f"{prefix}:alive:{worker_id}", "1", px=120_000)
            if isinstance(value, dict):
                r.hset(f"{prefix}:worker:{worker_id}", mapping=value)
            else:
                r.set(f"{prefix}:worker:{worker_id}", value)
        for prompt in ("The capital of France is", "def fibonacci(n):"):
            result = client.generate(prompt, max_tokens=8)
            assert list(result.token_ids) == reference["generate"](list(result.prompt_token_ids), 8)
            assert result.decode_device == "fpga" and result.decode_worker in real
            assert result.migrations == 0
        listed = {w.worker_id: w for w in client.status().workers}
        assert set(real) <= set(listed)
        assert "stray-npu" in listed and listed["stray-npu"].kind == "npu-x"  # shown, never placed
        assert not {"stray-garbage", "stray-missing", "stray-not-a-hash", "stray-negative"} & set(listed)
        assert {w.kind for w in listed.values() if w.worker_id in real} == {"gpu", "fpga"}
        assert all(w.roles for w in listed.values() if w.worker_id in real)
    finally:
        for worker_id in strays:
            r.srem(f"{prefix}:workers", worker_id)
            r.delete(f"{prefix}:alive:{worker_id}", f"{prefix}:worker:{worker_id}")
    assert_idle(cluster["registry"])
