"""A registry record the scheduler cannot use (a kind it does not know, or fields that do not parse) is skipped
and logged, never fatal: Generate and Status keep answering from the real workers beside it."""

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
