"""The scheduler's reuse routing against the real Redis: what workers publish as held decides the path, and a
hint that goes away (the card evicted and published it) sends the request the normal way."""

from __future__ import annotations

import pytest

from glitches.kv_plane.prefix_index import DEFAULT_SALT, block_hashes, root_hash
from glitches.scheduler.orchestrator import Orchestrator
from glitches.scheduler.placement import PATH_EXTEND, PATH_FRESH, PATH_TRANSFER
from glitches.scheduler.settings import SchedulerSettings
from glitches.scheduler.validation import ModelInfo
from glitches.services.cluster.registry import Registry, WorkerRecord
from glitches.services.generation.sampling import Sampling
from tests.conftest import REDIS_URL

MODEL = "m"
PROMPT = list(range(1, 65))  # 4 full blocks
SALT = b"tenant-a"


def _record(worker_id, kind):
    return WorkerRecord(worker_id=worker_id, kind=kind, backend="emu", emulated=1, device_name="emu",
                        address="127.0.0.1:1", pid=1, model=MODEL, slots=1, kv_capacity_bytes=10**9,
                        kv_free_bytes=10**9, kv_bytes_per_token=1000)


@pytest.fixture
def cluster(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=30)
    for worker_id, kind in (("g0", "gpu"), ("f0", "fpga"), ("f1", "fpga")):
        registry.register(_record(worker_id, kind))
    # a card forces a token in 1 ms, a GPU prefills 1,000 tokens/s: holding 48 of 64 tokens, extend wins
    settings = SchedulerSettings(redis_prefix=redis_prefix, reuse_gpu_prefill_tokens_per_s=1000.0,
                                 reuse_card_forced_step_s=0.001)
    orchestrator = Orchestrator(settings, registry, ModelInfo(MODEL, None, (0,), 2048, vocab_size=1000))
    yield orchestrator, registry
    registry.close()


def _place(orchestrator, claim, salt=SALT, reuse=True):
    return orchestrator._place(claim, PROMPT, Sampling(max_new_tokens=8), set(), wait_s=0.0,
                               reuse_salt=salt if reuse else None)


def test_a_card_holding_the_prefix_is_chosen_then_its_eviction_sends_the_request_the_normal_way(cluster):
    orchestrator, registry = cluster
    chain = block_hashes(PROMPT, root_hash(MODEL, SALT))
    registry.publish_held("f1", chain[:3], [])
    gpu, card, decision = _place(orchestrator, "r1.0")
    assert (gpu, card.record.worker_id, decision.path, decision.held_tokens) == (None, "f1", PATH_EXTEND, 48)
    assert registry.claims() == {"r1.0:decode": "f1"}  # the card's decode slot, no GPU claim
    registry.release("r1.0", "decode")

    registry.publish_held("f1", [], chain[:3])  # the card evicted the chain since
    gpu, card, decision = _place(orchestrator, "r2.0")
    assert (gpu.record.worker_id, card.record.worker_id, decision.path) == ("g0", "f0", PATH_TRANSFER)


def test_another_tenant_or_reuse_off_never_sees_the_hold(cluster):
    orchestrator, registry = cluster
    registry.publish_held("f1", block_hashes(PROMPT, root_hash(MODEL, SALT))[:3], [])
    assert _place(orchestrator, "r1.0", salt=b"tenant-b")[2].path == PATH_TRANSFER
    registry.release("r1.0", "decode")
    registry.release("r1.0", "prefill")
    assert _place(orchestrator, "r2.0", reuse=False)[2].path == PATH_TRANSFER


def test_the_default_tenant_chain_and_a_busy_holder(cluster):
    orchestrator, registry = cluster
    registry.publish_held("f1", block_hashes(PROMPT, root_hash(MODEL, DEFAULT_SALT))[:3], [])
    assert registry.claim_first_free("other.0", "decode", ["f1"]) == "f1"  # the holder's one slot is taken
    gpu, card, decision = _place(orchestrator, "r1.0", salt=b"")
    assert (card.record.worker_id, decision.path) == ("f0", PATH_FRESH)
