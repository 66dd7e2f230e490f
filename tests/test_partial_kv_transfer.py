"""Partial KV transfers (issue #27, path "transfer-partial") between a real in-process GPU worker and a real
emulated card (reference numerics), by transport grpc, shm and nixl (UCX on the CPU): the card keeps a
finished turn's KV, the GPU prefills the next turn from its own prefix cache and sends only positions
[held, prompt); the conversation's greedy tokens equal the full-transfer path's exactly, the bytes moved
are exactly the new tokens' KV, a prefix the card no longer holds is FAILED_PRECONDITION (and the full KV
then goes), and a partial transfer's KV token authorises neither a full transfer nor another offset. NIXL's per-(PC, lane) runs of a partial
layer (nixl_writer.span_runs) carry exactly the new tokens' bytes and leave every held byte alone."""

from __future__ import annotations

import grpc
import pytest
import torch

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.kv_plane import kv_wire, nixl_loader
from glitches.kv_plane.kv_abi import HBM_CHANNELS
from glitches.kv_plane.kv_layout import K_KIND, KvPlan, KvRegion
from glitches.services.auth.kv_token import KvTokenIssuer, KvTokenVerifier
from glitches.services.generation import models
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from tests.worker_helpers import serve_worker

HBM = 64 * 1024**2
SALT = b"tenant-p"
SECRET = b"partial-kv-test-secret-0123456789abcdef"
CARD_ID = "fpga-p"
TURN1 = list(range(100, 140))  # 40 prompt tokens: the GPU caches 2 full blocks (32 tokens) of them
USER2 = list(range(300, 310))
USER3 = list(range(400, 437))
ISSUER = KvTokenIssuer(SECRET)


TRANSPORTS = ["grpc", "shm"] + (["nixl"] if nixl_loader.available() else [])


@pytest.fixture(scope="module", params=TRANSPORTS)
def pair(request, tiny_source):
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path), kv_transport=request.param), tiny_source)
    gpu_server, gpu = serve_worker(GpuWorkerServicer(engine, "gpu-p", tiny_source.name))
    card = EmulatedCard(tiny_source, HBM)
    card_server, card_stub = serve_worker(FpgaWorkerServicer(card, models.load_tokenizer(tiny_source), CARD_ID,
                                                             tiny_source.name, 2, KvTokenVerifier(SECRET)))
    yield dict(gpu=gpu, engine=engine, card=card, stub=card_stub, address=f"127.0.0.1:{card_server.port}",
               transport=request.param, model=tiny_source.name)
    gpu_server.stop(0)
    card_server.stop(0)
    engine.close()
    card.kv.close()


def _kv_bytes(pair, tokens: int) -> int:
    """tokens x layers x 2 (K and V) x kv_heads x head_dim x element bytes: grpc moves the GPU's elements (float32
    on a CPU GPU worker, float16 on CUDA), shm and nixl write the card region's (float32 reference, float16 W4A8)."""
    g = pair["card"].geometry()
    dtype = getattr(torch, pair["engine"].dtype) if pair["transport"] == "grpc" else g.dtype
    return tokens * g.num_layers * 2 * g.kv_heads * g.head_dim * torch.finfo(dtype).bits // 8


def _turn(pair, rid, prompt, n, held=0, token_held=None):
    """Prefill on the GPU (KV to the card: only [held, prompt) when held > 0), then Decode there keeping the KV."""
    token = ISSUER.issue(rid, CARD_ID, held if token_held is None else token_held)
    target = worker_pb2.DecodeTarget(address=pair["address"], worker_id=CARD_ID, kv_token=token,
                                     held_prefix_tokens=held)
    sampling = common_pb2.SamplingParams(max_new_tokens=n)
    pre = pair["gpu"].Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=sampling,
                                                        target=target, cache_salt=SALT))
    decode = worker_pb2.DecodeRequest(request_id=rid, first_token_id=pre.first_token_id, position=len(prompt),
                                      sampling=sampling, cache_salt=SALT, prompt_token_ids=prompt)
    return [pre.first_token_id] + [t.token_id for t in pair["stub"].Decode(decode)], pre


def _root(pair) -> bytes:
    """The card's chain root for SALT (its worker's model name, as it keeps KV)."""
    from glitches.kv_plane.prefix_index import root_hash

    return root_hash(pair["model"], SALT)


def _idle(card: EmulatedCard):
    assert card.active_requests() == [] and card.kv.ids() == []


@pytest.mark.parametrize("held_choice", ["all", "fewer-than-gpu-cached"])
def test_three_turns_with_partial_transfers_equal_full_transfers(pair, held_choice):
    card, p = pair["card"], pair["transport"]
    card.kv.drop_retained()
    reply1, _ = _turn(pair, f"{p}{held_choice}-a1", TURN1, 12)
    prompt2 = TURN1 + reply1 + USER2
    # the card holds the prompt and every generated token it stepped (not the last, only sampled)
    held2 = len(TURN1) + len(reply1) - 1 if held_choice == "all" else 16
    hits = card.kv.adopt_hits
    reply2, pre2 = _turn(pair, f"{p}{held_choice}-a2", prompt2, 8, held=held2)
    assert card.kv.adopt_hits == hits + 1
    assert pre2.cached_tokens >= 32  # the GPU computed from its cache (TURN1's 2 blocks, or more: earlier tests) ...
    if held_choice != "all":
        assert held2 < pre2.cached_tokens  # ... so it also sends KV it took from its own cache
    assert pre2.kv_bytes == _kv_bytes(pair, len(prompt2) - held2)  # ... and sent only what the card lacks
    assert pre2.kv_transport == p
    prompt3 = prompt2 + reply2 + USER3
    held3 = len(prompt2) + len(reply2) - 1
    reply3, pre3 = _turn(pair, f"{p}{held_choice}-a3", prompt3, 6, held=held3)
    assert pre3.kv_bytes == _kv_bytes(pair, len(prompt3) - held3)
    _idle(card)

    card.kv.drop_retained()  # the same conversation without reuse: every turn's whole KV transferred
    full2, full_pre2 = _turn(pair, f"{p}{held_choice}-b2", prompt2, 8)
    full3, _ = _turn(pair, f"{p}{held_choice}-b3", prompt3, 6)
    assert full_pre2.kv_bytes == _kv_bytes(pair, len(prompt2))
    assert (reply2, reply3) == (full2, full3)
    _idle(card)


def test_a_stale_held_prefix_is_refused_and_the_full_kv_then_goes(pair):
    card, p = pair["card"], pair["transport"]
    card.kv.drop_retained()
    reply1, _ = _turn(pair, f"{p}-s1", TURN1, 6)
    prompt2 = TURN1 + reply1 + USER2
    held = len(TURN1) + len(reply1) - 1
    card.kv.drop_retained()  # evicted between publishing and the transfer
    with pytest.raises(grpc.RpcError) as refused:
        _turn(pair, f"{p}-s2", prompt2, 4, held=held)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "prefix no longer held" in refused.value.details()
    _idle(card)  # nothing reserved
    tokens, pre = _turn(pair, f"{p}-s2-full", prompt2, 4)  # the scheduler's fallback: a fresh attempt, full KV
    assert len(tokens) == 4 and pre.kv_bytes == _kv_bytes(pair, len(prompt2))
    _idle(card)


def test_a_partial_token_authorises_neither_a_full_transfer_nor_another_offset(pair):
    card, p = pair["card"], pair["transport"]
    card.kv.drop_retained()
    reply1, _ = _turn(pair, f"{p}-t1", TURN1, 6)
    prompt2 = TURN1 + reply1 + USER2
    held = len(TURN1) + len(reply1) - 1
    free = card.kv_free_bytes()
    for sent_held in (0, held - 1):  # a full transfer, and a partial one at another offset
        with pytest.raises(grpc.RpcError) as refused:
            _turn(pair, f"{p}-t2-{sent_held}", prompt2, 4, held=sent_held, token_held=held)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert card.kv_free_bytes() == free
    with pytest.raises(grpc.RpcError) as refused:  # nor a full transfer's token a partial one
        _turn(pair, f"{p}-t2-full-token", prompt2, 4, held=held, token_held=0)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    tokens, pre = _turn(pair, f"{p}-t2", prompt2, 4, held=held)  # the token issued for it: accepted
    assert pre.kv_bytes == _kv_bytes(pair, len(prompt2) - held)
    _idle(card)


def test_chunks_inside_the_held_prefix_are_refused(pair):
    """A TransferKV whose chunk starts inside the held prefix is INVALID_ARGUMENT before any byte is written, and
    the card keeps the prefix it had adopted (a later partial transfer still uses it)."""
    card, p = pair["card"], pair["transport"]
    if p != "grpc":
        pytest.skip("a raw TransferKV stream: once is enough")
    card.kv.drop_retained()
    reply1, _ = _turn(pair, "raw-1", TURN1, 6)
    prompt2 = TURN1 + reply1 + USER2
    held = len(TURN1) + len(reply1) - 1
    g = card.geometry()
    kv = torch.ones(1, g.kv_heads, len(prompt2) - held + 1, g.head_dim)
    header = worker_pb2.KvHeader(request_id="raw-2", prompt_tokens=len(prompt2), reserve_tokens=len(prompt2) + 4,
                                 num_layers=g.num_layers, kv_token=ISSUER.issue("raw-2", CARD_ID, held),
                                 held_tokens=held, prompt_token_ids=prompt2, cache_salt=SALT)
    chunks = [worker_pb2.KvChunk(header=header),
              worker_pb2.KvChunk(layer=next(kv_wire.layer_chunks(0, kv, kv, first_token=held - 1))),
              worker_pb2.KvChunk(end=worker_pb2.KvEnd(num_layers=g.num_layers))]
    with pytest.raises(grpc.RpcError) as refused:
        pair["stub"].TransferKV(iter(chunks))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "holds tokens [0," in refused.value.details()
    _idle(card)
    # the failed stream gave the adopted prefix back to the cache: a correct partial transfer still finds it
    entry, kept = card.kv.retained.best(prompt2, _root(pair))
    assert entry is not None and len(entry.tokens) == kept == held
    reply2, pre2 = _turn(pair, "raw-3", prompt2, 4, held=held)
    assert pre2.kv_bytes == _kv_bytes(pair, len(prompt2) - held)
    card.kv.drop_retained()
    assert _turn(pair, "raw-3-full", prompt2, 4)[0] == reply2
    _idle(card)


def test_full_transfer_tokens_keep_the_format_they_had_before_partial_transfers():
    """held = 0 macs exactly (version, request, worker, expiry), so tokens issued before partial transfers
    existed stay valid; held > 0 tokens check only at their own offset."""
    import hashlib
    import hmac

    expiry = 4_102_444_800  # 2100-01-01, unix s
    message = b"".join(f"{len(p)}:".encode() + p.encode() for p in ("v1", "r.0", CARD_ID, str(expiry)))
    old_style = f"v1.{expiry}.{hmac.new(SECRET, message, hashlib.sha256).hexdigest()}"
    verifier = KvTokenVerifier(SECRET)
    verifier.check(old_style, "r.0", CARD_ID)  # accepted as a full transfer
    partial = KvTokenIssuer(SECRET).issue("r.1", CARD_ID, 48)
    for held in (0, 47, 49):
        with pytest.raises(Exception, match="not issued"):
            KvTokenVerifier(SECRET).check(partial, "r.1", CARD_ID, held)
    verifier.check(partial, "r.1", CARD_ID, 48)


@pytest.fixture(scope="module")
def w4a8_pair(tiny_source):
    from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard

    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path), kv_transport="shm"), tiny_source)
    gpu_server, gpu = serve_worker(GpuWorkerServicer(engine, "gpu-w", tiny_source.name))
    card = W4A8EmulatedCard.from_source(tiny_source, HBM, numerics="w4a8")
    card_server, card_stub = serve_worker(FpgaWorkerServicer(card, models.load_tokenizer(tiny_source), CARD_ID,
                                                             tiny_source.name, 2, KvTokenVerifier(SECRET)))
    yield dict(gpu=gpu, engine=engine, card=card, stub=card_stub, address=f"127.0.0.1:{card_server.port}",
               transport="shm")
    gpu_server.stop(0)
    card_server.stop(0)
    engine.close()
    card.kv.close()


def test_a_w4a8_card_takes_a_partial_transfer_into_its_float16_region(w4a8_pair):
    """The ABI's float16 region: the bytes moved are the new tokens' float16 KV and the turn equals the full path."""
    card = w4a8_pair["card"]
    reply1, _ = _turn(w4a8_pair, "w1", TURN1, 10)
    prompt2 = TURN1 + reply1 + USER2
    held = len(TURN1) + len(reply1) - 1
    reply2, pre2 = _turn(w4a8_pair, "w2", prompt2, 6, held=held)
    assert pre2.kv_bytes == _kv_bytes(w4a8_pair, len(prompt2) - held)
    card.kv.drop_retained()
    full2, _ = _turn(w4a8_pair, "w2-full", prompt2, 6)
    assert reply2 == full2
    _idle(card)


@pytest.mark.parametrize("held, ids, code", [
    (70, 70, grpc.StatusCode.INVALID_ARGUMENT),  # held = prompt: the last token's KV always goes
    (30, 69, grpc.StatusCode.INVALID_ARGUMENT),  # the prompt's ids do not match prompt_tokens
    (30, 70, grpc.StatusCode.FAILED_PRECONDITION),  # nothing kept: "prefix no longer held"
])
def test_bad_partial_headers_are_refused_before_anything_is_reserved(pair, held, ids, code):
    card = pair["card"]
    if pair["transport"] != "grpc":
        pytest.skip("raw headers: once is enough")
    card.kv.drop_retained()
    free = card.kv_free_bytes()
    g = card.geometry()
    header = worker_pb2.KvHeader(request_id=f"bad-{held}-{ids}", prompt_tokens=70, reserve_tokens=80,
                                 num_layers=g.num_layers, kv_token=ISSUER.issue(f"bad-{held}-{ids}", CARD_ID, held),
                                 held_tokens=held, prompt_token_ids=list(range(500, 500 + ids)), cache_salt=SALT)
    with pytest.raises(grpc.RpcError) as refused:
        pair["stub"].TransferKV(iter([worker_pb2.KvChunk(header=header)]))
    assert refused.value.code() == code, refused.value.details()
    assert card.kv_free_bytes() == free
    _idle(card)


@pytest.mark.parametrize("layer, start, stop", [(1, 37, 70), (0, 16, 17), (2, 5, 16 * 40 + 3), (1, 1, 600)])
def test_nixl_span_runs_move_exactly_the_new_tokens(layer, start, stop):
    """Copying span_runs' byte runs from a staging layer (PCs rotated as NixlLayerWriter's) into a region that
    holds tokens [0, start) gives the region those tokens untouched plus the new ones, and moves only the new
    tokens' bytes; spans shorter and longer than 32 blocks, starting inside a block and on its edge."""
    from glitches.kv_plane.nixl_writer import span_runs

    plan, one_layer = KvPlan(3, 2, 8, 700, 4), KvPlan(1, 2, 8, 700, 4)
    generator = torch.Generator().manual_seed(layer * 1000 + start)
    held_k, held_v, new_k, new_v = (torch.randn(1, 2, n, 8, generator=generator)
                                    for n in (start, start, stop - start, stop - start))
    region, staging = KvRegion(plan, torch.float32), KvRegion(one_layer, torch.float32)
    region.data.fill_(7.0)  # bytes past the tokens: they must stay as they were too
    region.write(layer, 0, held_k, held_v)
    before = region.channel_bytes().clone()
    staging.write(0, start, new_k, new_v)
    runs = span_runs(plan, start, stop)
    assert sum(size for _, _, size in runs) == 2 * plan.kv_heads * (stop - start) * plan.head_dim * 4
    source, target = staging.channel_bytes(), region.channel_bytes()
    first, _ = plan.layer_slots(layer)
    shift = plan.lane(layer, 0, K_KIND) % HBM_CHANNELS
    written = torch.zeros_like(target, dtype=torch.bool)
    for q, offset, size in runs:
        pc, at = (q + shift) % HBM_CHANNELS, first * plan.block_bytes + offset
        assert not written[pc, at:at + size].any()  # no byte twice
        target[pc, at:at + size] = source[q, offset:offset + size]
        written[pc, at:at + size] = True
    k, v = region.read(layer, stop)
    assert torch.equal(k, torch.cat([held_k, new_k], 2)[0]) and torch.equal(v, torch.cat([held_v, new_v], 2)[0])
    assert torch.equal(target[~written], before[~written])  # every other byte (held tokens, other layers) kept
