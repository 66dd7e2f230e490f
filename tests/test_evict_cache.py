"""Forced eviction (Worker/EvictCache, `glitches evict-cache`) on real in-process gRPC servers (tiny random
Llama, emu reference card): it drops every evictable cached block of a GPU worker's prefix cache and of a
card's retained KV, never a block a running request uses or an incoming transfer is pinned to; a request
mid-decode finishes unchanged; free + evictable = capacity afterwards; the evictions are counted and
reported for the held publisher; the call is gated like the scheduler's (request auth, peer roles)."""

from __future__ import annotations

import json

import grpc
import pytest
import torch
from click.testing import CliRunner

from glitches.certs import make_certs
from glitches.cli import main
from glitches.decode_contract.wrappers import Notifying
from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.kv_pool import KvPool
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.kv_plane.prefix_index import block_hashes, root_hash
from glitches.services.auth.kv_token import SECRET_ENV, load_secret, new_secret
from glitches.services.auth.peer_roles import WORKER_CALLERS, PeerRoleInterceptor
from glitches.services.auth.request_auth import RequestAuthIssuer, RequestAuthVerifier
from glitches.services.auth.tls import TlsConfig
from glitches.services.generation import models
from glitches.services.runtime.grpc_server import start_server
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.worker_helpers import serve_worker

ROOT = root_hash("m", b"")


def _evict(stub, token: str = "") -> worker_pb2.EvictCacheResponse:
    return stub.EvictCache(worker_pb2.EvictCacheRequest(auth_token=token))


def test_pool_eviction_spares_referenced_blocks_and_restores_capacity():
    pool = KvPool(8, 1, 1, 4, torch.float32, "cpu", prefix_cache=True)
    names = block_hashes(list(range(64)), ROOT)  # 4 full blocks
    first, hits = pool.take_prefixed(names, 4)
    assert hits == 0
    pool.give(first, names)  # finished: 4 evictable blocks
    pool.held_changes()
    running, hits = pool.take_prefixed(names[:2], 3)  # a running request reuses 2 of them and holds 1 fresh
    assert hits == 2
    assert pool.evict_cache() == (2, 2)  # blocks 3 and 4 of the chain go; the 2 in use stay named
    assert all(pool.prefix.is_named(block) for block in running[:2])
    assert (pool.cached_blocks, pool.evictable_blocks, pool.evictions) == (2, 0, 2)
    assert pool.free_blocks == pool.total_blocks - 3
    cached, evicted = pool.held_changes()
    assert (cached, set(evicted)) == ([], {names[2], names[3]})  # what the held publisher withdraws
    pool.give(running, names[:2])  # released: its 2 hits are evictable again
    assert pool.evictable_blocks == 2 and pool.free_blocks == pool.total_blocks


def test_pool_eviction_at_idle_empties_the_cache():
    pool = KvPool(8, 1, 1, 4, torch.float32, "cpu", prefix_cache=True)
    names = block_hashes(list(range(80)), ROOT)
    blocks, _ = pool.take_prefixed(names, 5)
    pool.give(blocks, names)
    assert pool.evict_cache() == (5, 0)
    assert (pool.free_blocks, pool.cached_blocks, pool.evictable_blocks) == (8, 0, 0)
    assert pool.take_prefixed(names, 5)[1] == 0  # nothing cached any more
    assert KvPool(2, 1, 1, 4, torch.float32, "cpu").evict_cache() == (0, 0)  # no prefix cache: nothing to drop


@pytest.fixture(scope="module")
def gpu(tiny_source):
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path), slots=4, max_batch_tokens=64,
                                         kv_cache_gib=0.01, prefix_cache=True), tiny_source)
    server, stub = serve_worker(GpuWorkerServicer(engine, "gpu-e", tiny_source.name))
    yield engine, stub
    server.stop(0)
    engine.close()


def _assist(stub, rid: str, prompt: list[int], n: int):
    """(first token, cached tokens, the Decode stream) of a GPU-assist request."""
    params = common_pb2.SamplingParams(max_new_tokens=n, ignore_eos=True)
    pre = stub.Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=params))
    stream = stub.Decode(worker_pb2.DecodeRequest(request_id=rid, first_token_id=pre.first_token_id,
                                                  position=len(prompt), sampling=params))
    return pre.first_token_id, pre.cached_tokens, stream


def test_gpu_eviction_mid_decode_keeps_the_running_request(gpu):
    engine, stub = gpu
    pool = engine.pool
    _evict(stub)
    prompt = [(5 * i) % 700 + 30 for i in range(70)]  # 4 full blocks
    first, _, stream = _assist(stub, "cold", prompt, 12)
    cold = [first] + [t.token_id for t in stream]
    other = [(3 * i) % 500 + 40 for i in range(40)]  # 2 more cached blocks no one uses
    list(_assist(stub, "other", other, 2)[2])
    evictions = pool.evictions
    first, cached, stream = _assist(stub, "warm", prompt, 12)
    assert cached == 64  # the 4 full blocks of the cold run
    tokens = [first] + [next(stream).token_id for _ in range(3)]
    done = _evict(stub)  # "warm" holds the 4 hits and its own blocks: only other's cached blocks can go
    assert done.in_use_cached_bytes == 4 * pool.block_bytes
    assert done.evicted_blocks >= 2 and done.evicted_bytes == done.evicted_blocks * pool.block_bytes
    assert done.evicted_regions == 0 and pool.evictions == evictions + done.evicted_blocks
    tokens += [t.token_id for t in stream]
    assert tokens == cold  # finished unchanged
    assert engine.active_requests() == 0 and pool.free_blocks == pool.total_blocks  # free + evictable
    after = _evict(stub)
    assert after.in_use_cached_bytes == 0 and pool.cached_blocks == 0
    assert pool.free_blocks == pool.total_blocks
    first, cached, stream = _assist(stub, "again", prompt, 12)
    assert cached == 0 and [first] + [t.token_id for t in stream] == cold  # recomputed: same tokens


@pytest.fixture(scope="module")
def card(tiny_source):
    backend = EmulatedCard(tiny_source, 64 * 1024**2)
    servicer = FpgaWorkerServicer(backend, models.load_tokenizer(tiny_source), "fpga-e", tiny_source.name, 4)
    server, stub = serve_worker(servicer)
    yield dict(backend=backend, stub=stub, root=root_hash(tiny_source.name, b""), servicer=servicer)
    server.stop(0)
    backend.kv.close()


def _from_held(stub, rid: str, prompt: list[int], n: int):
    return stub.DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=common_pb2.SamplingParams(max_new_tokens=n,
                                                                                    ignore_eos=True)))


def test_card_eviction_spares_decoding_receiving_and_adopted_regions(card):
    backend, stub, kv = card["backend"], card["stub"], card["backend"].kv
    _evict(stub)
    kept, decoding, adopted = list(range(100, 150)), list(range(300, 340)), list(range(500, 540))
    reference = [t.token_id for t in _from_held(stub, "ref", decoding, 12)]
    _evict(stub)
    list(_from_held(stub, "kept", kept, 4))  # finished: one region kept
    list(_from_held(stub, "to-adopt", adopted, 4))  # kept, then adopted by a partial transfer below
    backend.held_changes()
    stream = _from_held(stub, "running", decoding, 12)
    tokens = [next(stream).token_id for _ in range(3)]  # mid-decode
    backend.reserve("incoming", 64)  # a transfer's reservation (KV still streaming in)
    held = backend.adopt("partial", adopted + [7, 8, 9], card["root"], 64, 1)  # pinned by a partial transfer
    assert held == len(adopted)  # its prompt is held (the tokens after it differ)
    evictions, nbytes, chain = kv.evictions, kv.evictable_bytes(), kv.retained.held_hashes()
    done = _evict(stub)
    assert (done.evicted_regions, done.evicted_bytes) == (1, nbytes)  # only "kept"
    assert done.evicted_blocks == (len(kept) + 3) // 16 and kv.evictions == evictions + 1
    assert kv.evictable_bytes() == 0 and {"incoming", "partial", "running"} <= set(kv.ids())
    added, removed = backend.held_changes()  # withdrawn (with the adopted region's chain, taken by "partial")
    assert len(chain) == done.evicted_blocks and added == [] and chain <= set(removed)
    tokens += [t.token_id for t in stream]
    assert tokens == reference  # finished unchanged
    assert backend.release("incoming") and backend.release("partial")
    assert kv.free_now_bytes() + kv.evictable_bytes() == kv.capacity_bytes == backend.kv_free_bytes()
    _evict(stub)  # "running" was kept when it finished: now gone too
    assert kv.free_now_bytes() == kv.capacity_bytes and kv.retained.keys() == []
    with pytest.raises(grpc.RpcError) as info:  # nothing held any more
        list(stub.DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(
            request_id="gone", prompt_token_ids=decoding + reference, min_held_tokens=16,
            sampling=common_pb2.SamplingParams(max_new_tokens=2))))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_eviction_is_gated_like_the_schedulers_calls(tiny_source, monkeypatch):
    assert WORKER_CALLERS["EvictCache"] == frozenset({"scheduler"})  # under mTLS: the scheduler's certificate
    secret_text = new_secret()
    secret = load_secret("", secret_text)
    backend = EmulatedCard(tiny_source, 64 * 1024**2)
    servicer = FpgaWorkerServicer(backend, models.load_tokenizer(tiny_source), "", tiny_source.name, 2,
                                  auth=RequestAuthVerifier(secret))
    servicer.worker_id = "fpga-auth"
    server, stub = serve_worker(servicer)
    try:
        for token in ("", RequestAuthIssuer(secret).issue("evict", "", "fpga-other"),
                      RequestAuthIssuer(secret).issue("release", "", "fpga-auth"),
                      RequestAuthIssuer(load_secret("", new_secret())).issue("evict", "", "fpga-auth")):
            with pytest.raises(grpc.RpcError) as info:
                _evict(stub, token)
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert _evict(stub, RequestAuthIssuer(secret).issue("evict", "", "fpga-auth")).evicted_regions == 0
        address = f"127.0.0.1:{server.port}"
        refused = CliRunner().invoke(main, ["evict-cache", "--worker", address], env={SECRET_ENV: ""})
        assert refused.exit_code == 1 and "PERMISSION_DENIED" in refused.output
        list(stub.DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(  # one region kept
            request_id="k", prompt_token_ids=list(range(60, 100)),
            auth_token=RequestAuthIssuer(secret).issue("decode", "k", "fpga-auth"),
            sampling=common_pb2.SamplingParams(max_new_tokens=3))))
        done = CliRunner().invoke(main, ["evict-cache", "--worker", address, "--json"],
                                  env={SECRET_ENV: secret_text})
        assert done.exit_code == 0, done.output
        reply = json.loads(done.output)
        assert (reply["worker"], reply["evicted_regions"], reply["evicted_blocks"]) == ("fpga-auth", 1, 2)
        assert backend.kv.free_now_bytes() == backend.kv.capacity_bytes
    finally:
        server.stop(0)
        backend.kv.close()


def test_under_mtls_only_the_scheduler_certificate_may_evict(card, tmp_path):
    """`glitches evict-cache` with --tls-* flags against a worker serving with peer roles (as worker_runtime does)."""
    make_certs(tmp_path, ("fpga-worker", "scheduler", "client"))
    servicer = card["servicer"]  # served a second time, under mTLS with peer roles
    tls = TlsConfig(ca=str(tmp_path / "ca.pem"), cert=str(tmp_path / "fpga-worker.pem"),
                    key=str(tmp_path / "fpga-worker-key.pem"))
    server = start_server("127.0.0.1", 0, [(worker_pb2_grpc.add_WorkerServicer_to_server, servicer)],
                          ("glitches.v1.Worker",), tls=tls, auth=PeerRoleInterceptor())
    try:
        def evict_as(role: str):
            return CliRunner().invoke(main, ["evict-cache", "--worker", f"127.0.0.1:{server.port}", "--json",
                                             "--tls-ca", str(tmp_path / "ca.pem"),
                                             "--tls-cert", str(tmp_path / f"{role}.pem"),
                                             "--tls-key", str(tmp_path / f"{role}-key.pem")], env={SECRET_ENV: ""})

        refused = evict_as("client")
        assert refused.exit_code == 1 and "PERMISSION_DENIED" in refused.output and "scheduler" in refused.output
        done = evict_as("scheduler")
        assert done.exit_code == 0, done.output
        assert json.loads(done.output)["worker"] == "fpga-e"
    finally:
        server.stop(0)


def test_eviction_pokes_the_heartbeat(gpu, card):
    """The registry record (kv_cached_bytes, `glitches status`) follows an eviction at once, not a beat later."""
    engine, stub = gpu
    pokes = []
    engine.requests.on_change = lambda: pokes.append("gpu")
    try:
        _evict(stub)
    finally:
        engine.requests.on_change = lambda: None
    Notifying(card["backend"], lambda: pokes.append("card")).evict_cache()
    assert pokes == ["gpu", "card"]
    assert Notifying(object(), lambda: pokes.append("none")).evict_cache() == (0, 0, 0)  # a card that keeps no KV
    assert pokes == ["gpu", "card"]
