"""A card's retained KV under pressure (emu reference card, real in-process gRPC server, real Redis):
eviction never touches a decoding request, free + evictable == capacity at idle, nothing leaks, a
cancelled decode keeps nothing, a too-small held region is copied, and the held chains reach Redis."""

from __future__ import annotations

import time

import grpc
import pytest

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.services.cluster.held_publisher import HeldPublisher
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.kv_plane.prefix_index import block_hashes, root_hash
from glitches.services.cluster.registry import Registry, WorkerRecord
from glitches.services.generation import models
from glitches.services.runtime.errors import ResourceExhausted
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from tests.conftest import REDIS_URL
from tests.worker_helpers import serve_worker

UNIT_TOKENS = 512  # a region holds whole 512-token units (32 PCs x 16-token blocks)


@pytest.fixture(scope="module")
def card(tiny_source):
    """A card whose KV space is exactly 3 units; its shared-memory segment is gone after it closes."""
    probe = EmulatedCard(tiny_source, 64 * 1024**2)
    unit = probe.kv.plan(UNIT_TOKENS).region_bytes_per_channel
    hbm = 32 * (probe.kv.kv_base + 3 * unit)
    probe.kv.close()
    backend = EmulatedCard(tiny_source, hbm)
    assert backend.kv.capacity_bytes == 3 * 32 * unit
    servicer = FpgaWorkerServicer(backend, models.load_tokenizer(tiny_source), "fpga-r", tiny_source.name, 2)
    server, stub = serve_worker(servicer)
    yield dict(backend=backend, stub=stub, servicer=servicer, unit_bytes=32 * unit,
               root=root_hash(tiny_source.name, b""))
    server.stop(0)
    backend.kv.close()
    assert not backend.kv.segment.path.exists()


def _from_held(stub, rid, prompt, n, min_held=0):
    return stub.DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=common_pb2.SamplingParams(max_new_tokens=n),
        min_held_tokens=min_held))


def _assert_idle(card):
    backend, kv = card["backend"], card["backend"].kv
    assert backend.active_requests() == [] and kv.ids() == []
    assert card["servicer"].holds.summary().requests == 0
    assert kv.free_now_bytes() + kv.evictable_bytes() == kv.capacity_bytes == backend.kv_free_bytes()


def test_eviction_under_pressure_spares_a_decoding_request(card):
    backend, stub, unit = card["backend"], card["stub"], card["unit_bytes"]
    backend.kv.drop_retained()
    prompt_a, prompt_b = list(range(200, 240)), list(range(600, 630))
    reference = [t.token_id for t in _from_held(stub, "b-alone", prompt_b, 16)]
    backend.kv.drop_retained()
    list(_from_held(stub, "a", prompt_a, 8))  # finished normally: kept, one unit
    assert backend.kv.evictable_bytes() == unit
    evictions = backend.kv.evictions
    stream = _from_held(stub, "b", prompt_b, 16)
    tokens = [next(stream).token_id for _ in range(3)]  # b is mid-decode, holding one unit
    backend.reserve("x", UNIT_TOKENS)  # the last free unit
    backend.reserve("c", UNIT_TOKENS)  # fits only by evicting a's kept region
    assert backend.kv.evictions == evictions + 1 and backend.kv.evictable_bytes() == 0
    with pytest.raises(ResourceExhausted):  # b decoding, x and c held: nothing left to evict
        backend.reserve("d", 1)
    tokens += [t.token_id for t in stream]
    assert tokens == reference  # b finished unchanged
    assert backend.release("c") and backend.release("x")
    _assert_idle(card)
    assert backend.kv.evictable_bytes() == unit  # b is kept now
    with pytest.raises(grpc.RpcError) as info:  # a's prefix is gone
        list(_from_held(stub, "a2", prompt_a + [5, 6], 2, min_held=len(prompt_a)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    backend.kv.drop_retained()
    assert backend.kv.free_now_bytes() == backend.kv.capacity_bytes


def test_a_cancelled_decode_keeps_nothing(card):
    backend, stub = card["backend"], card["stub"]
    backend.kv.drop_retained()
    stream = _from_held(stub, "cancelled", list(range(40, 80)), 200)
    next(stream)
    stream.cancel()
    deadline = time.monotonic() + 10
    while backend.active_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    _assert_idle(card)
    assert backend.kv.evictable_bytes() == 0 and backend.kv.retained.keys() == []


def test_a_held_region_too_small_for_the_next_turn_is_copied(card):
    backend, stub = card["backend"], card["stub"]
    backend.kv.drop_retained()
    turn1 = list(range(900, 920))
    reply = [t.token_id for t in _from_held(stub, "s1", turn1, 2)]  # region of 22 tokens kept
    turn2 = turn1 + reply + [11, 12, 13]
    held = len(turn1) + len(reply) - 1
    tokens = list(_from_held(stub, "s2", turn2, UNIT_TOKENS))  # needs more than 22: a new region, KV copied
    assert tokens[0].reused_prompt_tokens == held
    backend.kv.drop_retained()
    expected = list(_from_held(stub, "s2-pure", turn2, UNIT_TOKENS))
    assert [t.token_id for t in tokens] == [t.token_id for t in expected]
    backend.kv.drop_retained()
    _assert_idle(card)


def test_held_chains_are_published_and_withdrawn(card, redis_prefix):
    backend, stub = card["backend"], card["stub"]
    backend.kv.drop_retained()
    backend.held_changes()  # start from an empty change log
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=5)
    registry.register(WorkerRecord(worker_id="fpga-r", kind="fpga", backend="emu", emulated=1, device_name="emu",
                                   address="127.0.0.1:1", pid=1, model="m", slots=2, kv_capacity_bytes=1,
                                   kv_free_bytes=1, kv_bytes_per_token=1))
    publisher = HeldPublisher(registry, lambda: "fpga-r", backend.held_changes, interval_s=0.05).start()
    prompt = list(range(1000, 1040))
    reply = [t.token_id for t in _from_held(stub, "p", prompt, 6)]
    chain = block_hashes(prompt + reply + [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], card["root"])
    kept_blocks = (len(prompt) + len(reply) - 1) // 16  # 45 tokens kept: 2 full blocks
    deadline = time.monotonic() + 5
    while registry.held_overlap(["fpga-r"], chain)["fpga-r"] != kept_blocks and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.held_overlap(["fpga-r"], chain) == {"fpga-r": kept_blocks}
    backend.kv.drop_retained()
    publisher.stop()  # withdraws what it published (the worker leaves the registry)
    assert registry.held_overlap(["fpga-r"], chain) == {"fpga-r": 0}
    registry.deregister("fpga-r")
    registry.close()


def test_a_worker_daemon_publishes_what_it_keeps_and_drops_it_on_deregister(tiny_source, redis_prefix):
    from glitches.fpga_worker.daemon import FpgaDevice
    from glitches.fpga_worker.settings import FpgaWorkerSettings
    from glitches.services.runtime.channels import insecure_channel
    from glitches.services.runtime.worker_runtime import start_worker
    from glitches.services.stubs.glitches.v1 import worker_pb2_grpc

    running = start_worker(FpgaDevice(FpgaWorkerSettings(model=str(tiny_source.path), redis_prefix=redis_prefix,
                                                         worker_id="fpga-d", hbm_bytes=64 * 1024**2)))
    registry = Registry(REDIS_URL, redis_prefix)
    try:
        stub = worker_pb2_grpc.WorkerStub(insecure_channel(running.address))
        prompt = list(range(1200, 1240))
        reply = [t.token_id for t in _from_held(stub, "d1", prompt, 4)]
        chain = block_hashes(prompt + reply + list(range(20)), root_hash(running.servicer.model_name, b""))
        deadline = time.monotonic() + 5
        while registry.held_overlap(["fpga-d"], chain)["fpga-d"] != 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert registry.held_overlap(["fpga-d"], chain) == {"fpga-d": 2}  # 43 tokens kept: 2 full blocks
        cached = stub.Info(worker_pb2.InfoRequest()).kv_cached_bytes
        assert cached == running.device.backend.kv.evictable_bytes() > 0  # d1's kept region, also counted free
        running.heartbeat.beat_now()
        record = next(w.record for w in registry.workers() if w.record.worker_id == "fpga-d")
        assert record.kv_cached_bytes == cached
        follow_up = prompt + reply + [7, 8]
        first = list(_from_held(stub, "d2", follow_up, 1, min_held=len(prompt) + len(reply) - 1))[0]
        assert first.reused_prompt_tokens == len(prompt) + len(reply) - 1
        scraped = _metrics(running.http.address)
        assert scraped["glitches_card_held_lookups"] == 2 and scraped["glitches_card_held_hits"] == 1
        assert scraped["glitches_card_held_hit_rate"] == 0.5
        assert scraped["glitches_card_held_reused_tokens"] == len(prompt) + len(reply) - 1
        assert scraped["glitches_card_kv_cached_regions"] == 1  # d2's region (d1's, adopted in place), kept again
        assert scraped["glitches_card_kv_evictions"] == 0
    finally:
        running.drain(0)
        running.close()
        running.device.backend.kv.close()  # its HBM segment (serve() leaves it to the process's exit)
    assert not registry.redis.exists(f"{redis_prefix}:held:fpga-d")
    registry.close()


def _metrics(http_address: str) -> dict[str, float]:
    """The worker's /metrics, unlabelled samples by name."""
    import urllib.request

    body = urllib.request.urlopen(f"http://{http_address}/metrics", timeout=5).read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in body.splitlines()
            if line and not line.startswith("#") and "{" not in line.split()[0]}


def test_free_bytes_offer_only_a_region_one_request_can_get(card):
    """Regions are contiguous: with a running request between two free units the card offers one unit (what a
    reservation can get), not two; a unit kept as cache counts as free (evicted on reserve)."""
    backend, unit = card["backend"], card["unit_bytes"]
    kv = backend.kv
    kv.drop_retained()
    for rid in ("left", "middle", "right"):
        kv.reserve(rid, UNIT_TOKENS)
    assert backend.kv_free_bytes() == 0
    kv.release("left")
    kv.release("right")
    assert kv.free_now_bytes() == 2 * unit and backend.kv_free_bytes() == unit
    with pytest.raises(ResourceExhausted):
        kv.reserve("two-units", 2 * UNIT_TOKENS)
    kv.release("middle")
    _assert_idle(card)
