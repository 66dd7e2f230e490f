"""The xrt card keeps KV between requests (issue #27 items 2 and 3), on the REAL XRT library under its no-op
shim (steps computed by the C-simulated kernel on the BOs' bytes), behind a real in-process gRPC server: a
finished request's region is kept; DecodeFromHeld and a partial transfer at the held offset give exactly the
tokens and logprobs of the same request served fresh on the same card (in place and copied); a wrong-token
prefix is never adopted; eviction under pressure spares a decoding request; free + cached = capacity at idle;
a cancelled or failed request keeps nothing; the kept chains are reported for the held publisher.

Skips with the reason where XRT is missing; GLITCHES_REQUIRE_XRT=1 (make test-xrt, .ci/run) turns the skip
into a failure.
"""

from __future__ import annotations

import os
import time

import grpc
import pytest
import torch

from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.fpga_worker.xclbin_meta import write_xclbin
from glitches.fpga_worker.xrt_backend import XrtCard, weight_image_for
from glitches.kv_plane import kv_wire
from glitches.kv_plane.kv_layout import KvRegion, region_view
from glitches.kv_plane.prefix_index import block_hashes, root_hash
from glitches.services.generation import models
from glitches.services.runtime.errors import FailedPrecondition, ResourceExhausted
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from tests.fpga_helpers import prefill_cache
from tests.worker_helpers import serve_worker
from tests.xrt_noop_env import noop_environment, require_xrt

UNIT_TOKENS = 512  # a region holds whole 512-token units (32 PCs x 16-token blocks)
SALT = b"tenant-x"


@pytest.fixture(scope="module")
def card(tiny_source, tmp_path_factory):
    """An xrt card (no-op shim) whose KV space is exactly 3 units, served by the FPGA worker's servicer."""
    require_xrt()
    saved = dict(os.environ)
    os.environ.update(noop_environment(tmp_path_factory.mktemp("xilinx_xrt")))  # XRT reads it once a process
    image = weight_image_for(tiny_source)
    d = image.dims
    unit = 2 * d.num_layers * d.kv_heads * 16 * d.head_dim * 2  # one 512-token unit's bytes per PC
    xclbin = str(write_xclbin(tmp_path_factory.mktemp("xclbin") / "decode.xclbin"))
    backend = XrtCard(image, "0", xclbin, 32 * (image.kv_base + 3 * unit), tag="xrt-retention-test")
    assert backend.kv.capacity_bytes == 3 * 32 * unit
    servicer = FpgaWorkerServicer(backend, models.load_tokenizer(tiny_source), "xrt-r", tiny_source.name, 2)
    server, stub = serve_worker(servicer)
    model = models.load_causal_lm(tiny_source, "cpu", "float32")
    yield dict(backend=backend, stub=stub, servicer=servicer, unit_bytes=32 * unit, model=model,
               root=root_hash(tiny_source.name, SALT))
    server.stop(0)
    staging = backend.staging.path
    backend.close()
    assert not staging.exists()
    os.environ.clear()
    os.environ.update(saved)


def _sampling(n: int) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(max_new_tokens=n, ignore_eos=True, logprobs=True, top_logprobs=3)


def _from_held(stub, rid, prompt, n, min_held=0, salt=SALT):
    return stub.DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=_sampling(n), min_held_tokens=min_held, cache_salt=salt))


def _outcome(tokens) -> list[tuple]:
    """Each token with its logprob and top alternatives: equal lists mean bit-identical logits' results."""
    return [(t.token_id, t.logprobs.chosen.logprob, tuple((e.token_id, e.logprob) for e in t.logprobs.top))
            for t in tokens]


def _assert_idle(card):
    backend = card["backend"]
    assert backend.active_requests() == [] and backend.kv.ids() == []
    assert card["servicer"].holds.summary().requests == 0
    kv = backend.kv
    assert kv.free_now_bytes() + backend.kv_cached_bytes() == kv.capacity_bytes == backend.kv_free_bytes()
    assert card["servicer"].info().kv_cached_bytes == backend.kv_cached_bytes()


@pytest.mark.parametrize("copied", [False, True], ids=["in-place", "copied"])
def test_decode_from_held_equals_the_same_request_served_fresh(card, copied):
    """Turn 1 is kept (prompt + stepped tokens, a 48-token region); turn 2 adopts it (in place when it fits those
    48 tokens, else copied HBM to HBM into a larger region) and steps only its new tokens: tokens and logprobs
    equal turn 2 stepped whole on the same card."""
    backend, stub, unit = card["backend"], card["stub"], card["unit_bytes"]
    backend.kv.drop_retained()
    backend.held_changes()  # start from an empty change log
    turn1 = list(range(1000, 1040))
    reply1 = [t.token_id for t in _from_held(stub, f"t1-{copied}", turn1, 8)]
    kept = turn1 + reply1[:-1]  # the last generated token is sampled, never stepped
    assert backend.kv_cached_bytes() == unit and len(backend.kv.retained.keys()) == 1
    region = backend.kv.retained.keys()[0]
    added, removed = backend.held_changes()
    assert set(added) == set(block_hashes(kept, card["root"])) and removed == []
    _assert_idle(card)

    turn2, n = (turn1 + reply1 + [7, 8, 9], 20) if copied else (turn1 + reply1[:4] + [7, 8], 2)
    held = min(len(kept), len(turn2) - 1) if copied else len(turn1) + 4
    hits, evictions = backend.kv.adopt_hits, backend.kv.evictions
    reused = list(_from_held(stub, f"t2-{copied}", turn2, n, min_held=held))
    assert reused[0].reused_prompt_tokens == held
    assert backend.kv.adopt_hits == hits + 1 and backend.kv.evictions == evictions  # a copy frees, never evicts
    assert (backend.kv.retained.keys() != [region]) == copied  # in place: the same region is kept again
    _assert_idle(card)
    backend.kv.drop_retained()
    fresh = list(_from_held(stub, f"t2-fresh-{copied}", turn2, n))
    assert fresh[0].reused_prompt_tokens == 0
    assert _outcome(reused) == _outcome(fresh) and len(reused) == n
    backend.kv.drop_retained()
    _assert_idle(card)


def _kv_chunks(kv, start: int, stop: int):
    for layer, (key, value) in enumerate(kv):
        span = (key[:, :, start:stop].contiguous(), value[:, :, start:stop].contiguous())
        for chunk in kv_wire.layer_chunks(layer, *span):
            chunk.seq_start += start
            yield worker_pb2.KvChunk(layer=chunk)


def _transfer_and_decode(card, rid, prompt, kv, held, n):
    """TransferKV of tokens [held, prompt) (a partial transfer when held > 0), then Decode keeping the KV."""
    header = worker_pb2.KvHeader(request_id=rid, prompt_tokens=len(prompt), reserve_tokens=len(prompt) + n,
                                 num_layers=len(kv), held_tokens=held, prompt_token_ids=prompt, cache_salt=SALT)
    card["stub"].TransferKV(iter([worker_pb2.KvChunk(header=header), *_kv_chunks(kv, held, len(prompt)),
                                  worker_pb2.KvChunk(end=worker_pb2.KvEnd(num_layers=len(kv)))]))
    decode = worker_pb2.DecodeRequest(request_id=rid, first_token_id=5, position=len(prompt), sampling=_sampling(n),
                                      cache_salt=SALT, prompt_token_ids=prompt)
    return list(card["stub"].Decode(decode))


def test_a_partial_transfer_at_the_held_offset_equals_the_full_transfer(card):
    """The card keeps turn 1's prompt KV; turn 2's sender sends only tokens [held, prompt) (TransferKV, and the
    shm path's staging writes + notices) into the adopted region: the same tokens and logprobs as the whole
    prompt's KV sent to the same card. The KV is one prefill of turn 2's prompt (the GPU's prefix cache gives the
    same bytes), so both paths put the same bytes on the card."""
    backend = card["backend"]
    backend.kv.drop_retained()
    turn1 = list(range(2000, 2040))
    turn2 = turn1 + list(range(3000, 3013))
    with torch.inference_mode():
        kv = prefill_cache(card["model"], torch.tensor([turn2]))  # per layer K, V [1, kv_heads, 53, head_dim]
    _transfer_and_decode(card, "p1", turn1, kv, 0, 4)  # kept: turn1 + the first token the card stepped
    held = len(turn1)
    partial = _transfer_and_decode(card, "p2", turn2, kv, held, 6)
    assert backend.kv.adopt_hits >= 1
    _assert_idle(card)

    backend.kv.drop_retained()  # the shm path, as its receiver drives the card: staging writes, then notices
    _transfer_and_decode(card, "p3", turn1, kv, 0, 4)
    assert backend.adopt("p4", turn2[:held + 1], card["root"], len(turn2) + 6, held) == held
    where, memory = backend.placement("p4"), backend.kv_memory()
    staging = KvRegion(where.plan, torch.float16,
                       region_view(memory.memory, memory.channel_bytes, where.kv_offset, where.plan, torch.float16))
    for layer, (key, value) in enumerate(kv):
        staging.write(layer, held, key[:, :, held:], value[:, :, held:])
        backend.mark_written("p4", layer, held, len(turn2) - held)
    backend.seal("p4", len(turn2))
    logits_shm = [backend.step("p4", token.token_id, len(turn2) + i) for i, token in
                  enumerate([worker_pb2.DecodeToken(token_id=5)] + partial[:-1])]
    backend.release("p4")

    backend.kv.drop_retained()
    full = _transfer_and_decode(card, "p5", turn2, kv, 0, 6)
    assert _outcome(partial) == _outcome(full)
    assert [int(torch.argmax(logits)) for logits in logits_shm] == [t.token_id for t in full]
    backend.kv.drop_retained()
    _assert_idle(card)


def test_a_wrong_token_prefix_is_never_adopted(card):
    """Ids are compared before adoption: another tenant's salt, a prompt that differs inside a block and a forged
    index entry (what a hash collision or a stale hint would give) reuse only the verified common prefix."""
    backend, stub = card["backend"], card["stub"]
    backend.kv.drop_retained()
    prompt = list(range(4000, 4040))
    list(_from_held(stub, "w1", prompt, 4))
    with pytest.raises(grpc.RpcError) as other_tenant:
        list(_from_held(stub, "w2", prompt + [1], 2, min_held=16, salt=b"tenant-y"))
    assert other_tenant.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    differs = prompt[:20] + [9] + prompt[21:]
    tokens = list(_from_held(stub, "w3", differs, 3))
    assert tokens[0].reused_prompt_tokens == 20  # up to the first differing id, not the whole first 2 blocks
    backend.kv.drop_retained()
    assert _outcome(tokens) == _outcome(list(_from_held(stub, "w3-fresh", differs, 3)))

    backend.kv.drop_retained()
    list(_from_held(stub, "w4", prompt, 4))
    key = backend.kv.retained.keys()[0]
    forged = list(range(5000, 5040))  # the kept entry is found under forged's block hashes, its ids differ
    index = backend.kv.retained._by_hash
    try:
        for h in block_hashes(forged, card["root"]):
            index.setdefault(h, set()).add(key)
        with pytest.raises(FailedPrecondition, match="prefix no longer held"):
            backend.adopt("w5", forged, card["root"], 64, 1)
    finally:
        for h in block_hashes(forged, card["root"]):
            index.pop(h, None)
    assert backend.active_requests() == [] and backend.kv.ids() == []
    backend.kv.drop_retained()
    _assert_idle(card)


def test_eviction_under_pressure_spares_a_decoding_request(card):
    backend, stub, unit = card["backend"], card["stub"], card["unit_bytes"]
    backend.kv.drop_retained()
    prompt_a, prompt_b = list(range(200, 240)), list(range(600, 630))
    reference = _outcome(_from_held(stub, "b-alone", prompt_b, 16))
    backend.kv.drop_retained()
    list(_from_held(stub, "a", prompt_a, 8))  # finished normally: kept, one unit
    assert backend.kv_cached_bytes() == unit
    evictions = backend.kv.evictions
    stream = _from_held(stub, "b", prompt_b, 16)
    tokens = [next(stream) for _ in range(3)]  # b is mid-decode, holding one unit
    backend.reserve("x", UNIT_TOKENS)  # the last free unit
    backend.reserve("c", UNIT_TOKENS)  # fits only by evicting a's kept region
    assert backend.kv.evictions == evictions + 1 and backend.kv_cached_bytes() == 0
    with pytest.raises(ResourceExhausted):  # b decoding, x and c held: nothing left to evict
        backend.reserve("d", 1)
    tokens += list(stream)
    assert _outcome(tokens) == reference  # b finished unchanged
    assert backend.release("c") and backend.release("x")
    _assert_idle(card)
    assert backend.kv_cached_bytes() == unit  # b is kept now
    with pytest.raises(grpc.RpcError) as gone:  # a's prefix is gone
        list(_from_held(stub, "a2", prompt_a + [5, 6], 2, min_held=len(prompt_a)))
    assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    backend.kv.drop_retained()
    assert backend.kv.free_now_bytes() == backend.kv.capacity_bytes
    _assert_idle(card)


def test_a_cancelled_or_failed_request_keeps_nothing(card):
    backend, stub = card["backend"], card["stub"]
    backend.kv.drop_retained()
    backend.held_changes()
    stream = _from_held(stub, "cancelled", list(range(40, 80)), 200)
    next(stream)
    stream.cancel()
    deadline = time.monotonic() + 10
    while backend.active_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    _assert_idle(card)
    # a decode that runs past its region fails (RESOURCE_EXHAUSTED at the step beyond 512 tokens)
    header = worker_pb2.KvHeader(request_id="failed", prompt_tokens=500, reserve_tokens=501, num_layers=2)
    kv = [(torch.zeros(1, 2, 500, 16), torch.zeros(1, 2, 500, 16))] * 2
    stub.TransferKV(iter([worker_pb2.KvChunk(header=header), *_kv_chunks(kv, 0, 500),
                          worker_pb2.KvChunk(end=worker_pb2.KvEnd(num_layers=2))]))
    decode = worker_pb2.DecodeRequest(request_id="failed", first_token_id=5, position=500, sampling=_sampling(50),
                                      prompt_token_ids=list(range(500)))
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Decode(decode))
    assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_idle(card)
    assert backend.kv_cached_bytes() == 0 and backend.kv.retained.keys() == []
    assert backend.held_changes() == ([], [])


def test_evict_cache_drops_the_kept_regions_and_spares_a_decoding_request(card):
    """Worker/EvictCache (KeptKvCalls.evict_cache, the operator's forced eviction) on the xrt card."""
    backend, stub, unit = card["backend"], card["stub"], card["unit_bytes"]
    backend.kv.drop_retained()
    prompt_b = list(range(700, 730))
    reference = _outcome(_from_held(stub, "e-alone", prompt_b, 12))
    backend.kv.drop_retained()
    list(_from_held(stub, "e-kept", list(range(800, 840)), 4))
    backend.held_changes()
    stream = _from_held(stub, "e-decoding", prompt_b, 12)
    tokens = [next(stream) for _ in range(2)]
    evicted = stub.EvictCache(worker_pb2.EvictCacheRequest())
    assert (evicted.evicted_regions, evicted.evicted_bytes) == (1, unit) and backend.kv_cached_bytes() == 0
    assert backend.held_changes()[1]  # the dropped chains are withdrawn
    tokens += list(stream)
    assert _outcome(tokens) == reference
    backend.kv.drop_retained()
    _assert_idle(card)
