"""A GPU worker with the decode role (issue #12 item 4) on real in-process gRPC servers with a tiny random Llama:
another GPU worker's prefill streams the KV to it by shm, nixl or grpc (the FPGA worker's own RPCs,
glitches/decode_contract/kv_intake_rpcs.py), it decodes in its step loop, and the tokens equal transformers' greedy
generate; bad transfers are refused with nothing held afterwards; roles are enforced."""

from __future__ import annotations

import grpc
import pytest
import torch

from glitches.decode_contract.wrappers import KvHeld
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.kv_intake import GpuKvIntake
from glitches.kv_plane.transport import TransportChooser
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.services.cluster.kv_holds import KvHolds
from glitches.services.auth.kv_token import KvTokenIssuer, KvTokenVerifier
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from glitches.services.cluster.worker_caps import DECODE_CLASS_GPU, ROLE_DECODE
from tests.worker_helpers import greedy_tokens, serve_worker

SECRET = b"d" * 32


@pytest.fixture(scope="module")
def pair(tiny_source):
    """Prefill GPUs (one per forced transport) and one decode-role GPU, all in this process."""
    prefill_engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path)), tiny_source)
    decode_settings = GpuWorkerSettings(model=str(tiny_source.path), roles="decode", slots=2, kv_cache_gib=0.01)
    decode_engine = GpuEngine(decode_settings, tiny_source)
    intake = GpuKvIntake(decode_engine, 64 * 2**20, "gpu-decode-test")
    holds = KvHolds(30.0, intake.release).start()
    decoder = GpuWorkerServicer(decode_engine, "gpu-decode", tiny_source.name, holds=holds,
                                roles=decode_settings.role_set(), intake=KvHeld(intake, holds),
                                kv_tokens=KvTokenVerifier(SECRET))
    decode_server, decode_stub = serve_worker(decoder, max_workers=32 + 64)
    senders = {}
    for transport in ("shm", "nixl", "grpc"):
        servicer = GpuWorkerServicer(prefill_engine, f"gpu-prefill-{transport}", tiny_source.name)
        servicer.transports = TransportChooser(transport)
        senders[transport] = serve_worker(servicer)
    yield dict(decoder=decoder, stub=decode_stub, address=f"127.0.0.1:{decode_server.port}", intake=intake,
               engine=decode_engine, prefill_engine=prefill_engine, **{t: stub for t, (_, stub) in senders.items()})
    for server, _ in senders.values():
        server.stop(0)
    decode_server.stop(0)
    holds.stop()
    intake.close()
    prefill_engine.close()
    decode_engine.close()


def _token(rid: str) -> str:
    return KvTokenIssuer(SECRET, 60.0).issue(rid, "gpu-decode")


def _generate(pair, rid, prompt, n, transport):
    target = worker_pb2.DecodeTarget(address=pair["address"], worker_id="gpu-decode", kv_token=_token(rid))
    pre = pair[transport].Prefill(worker_pb2.PrefillRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=common_pb2.SamplingParams(max_new_tokens=n),
        target=target))
    steps = pair["stub"].Decode(worker_pb2.DecodeRequest(
        request_id=rid, first_token_id=pre.first_token_id, position=len(prompt),
        sampling=common_pb2.SamplingParams(max_new_tokens=n)))
    return pre, [pre.first_token_id] + [s.token_id for s in steps]


def _nothing_held(pair):
    engine = pair["engine"]
    assert engine.requests.active() == 0 and engine.pool.free_blocks == engine.pool.total_blocks
    assert pair["intake"].staging.ids() == [] and pair["decoder"].holds.summary().requests == 0
    assert pair["decoder"].nixl is None or pair["decoder"].nixl.registrations() == 0


def test_info_says_decode_role_and_what_it_accepts(pair):
    info = pair["stub"].Info(worker_pb2.InfoRequest())
    assert list(info.roles) == [ROLE_DECODE] and info.decode_class == DECODE_CLASS_GPU and info.kind_name == "gpu"
    assert list(info.kv_transports) == ["shm", "nixl", "grpc"] and info.shm_segment.startswith("/dev/shm/")
    assert info.kv_tokens_required  # it was given the cluster's secret


@pytest.mark.parametrize("transport, length", [("shm", 5), ("shm", 300), ("nixl", 40), ("grpc", 300)])
def test_gpu_to_gpu_decode_equals_transformers(pair, transport, length):
    prompt = [(11 * i + 5) % 49000 + 10 for i in range(length)]
    pre, tokens = _generate(pair, f"g2g-{transport}-{length}", prompt, 8, transport)
    assert pre.kv_transport == transport
    assert pre.kv_bytes == 2 * 2 * 2 * 16 * 4 * length  # K+V, 2 layers, 2 kv heads, head_dim 16, float32
    assert tokens == greedy_tokens(pair["prefill_engine"], prompt, 8)
    _nothing_held(pair)


@pytest.mark.parametrize("transport", ["shm", "nixl", "grpc"])
def test_concurrent_received_requests_decode_batched(pair, transport):
    """Two requests sent by one GPU to the same decode GPU at once (their transfers overlap; with nixl, two regions
    of one receiving agent), decoded together in its step loop, each still exact."""
    import threading

    prompts = {f"g2g-both-{transport}-{i}": [(13 * j + i) % 49000 + 10 for j in range(200 + 30 * i)]
               for i in range(2)}
    results = {}

    def run(rid, prompt):
        results[rid] = _generate(pair, rid, prompt, 10, transport)

    threads = [threading.Thread(target=run, args=item) for item in prompts.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for rid, prompt in prompts.items():
        assert results[rid][1] == greedy_tokens(pair["prefill_engine"], prompt, 10)
    _nothing_held(pair)


def test_a_wrong_kv_token_is_refused_and_nothing_is_held(pair):
    target = worker_pb2.DecodeTarget(address=pair["address"], worker_id="gpu-decode", kv_token=_token("other-id"))
    with pytest.raises(grpc.RpcError) as info:
        pair["grpc"].Prefill(worker_pb2.PrefillRequest(
            request_id="g2g-bad-token", prompt_token_ids=list(range(10, 30)),
            sampling=common_pb2.SamplingParams(max_new_tokens=4), target=target))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    _nothing_held(pair)


def test_more_than_slots_is_resource_exhausted(pair):
    """slots=2: two requests holding received KV, a third transfer is refused before anything is reserved."""
    intake = pair["decoder"].intake
    intake.reserve("hold-a", 32)
    intake.reserve("hold-b", 32)
    try:
        with pytest.raises(Exception) as info:
            intake.reserve("hold-c", 32)
        assert "slot" in str(info.value)
    finally:
        intake.release("hold-a")
        intake.release("hold-b")
    _nothing_held(pair)


def test_roles_are_enforced(pair):
    with pytest.raises(grpc.RpcError) as info:  # no prefill role
        pair["stub"].Prefill(worker_pb2.PrefillRequest(
            request_id="no-prefill", prompt_token_ids=[10, 11], sampling=common_pb2.SamplingParams(max_new_tokens=2)))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "prefill role" in info.value.details()
    with pytest.raises(grpc.RpcError) as info:  # a prefill-only GPU takes no KV
        next(iter(pair["grpc"].TransferKVPlaced(iter([worker_pb2.KvPlacedControl(
            header=worker_pb2.KvHeader(request_id="x", prompt_tokens=1, reserve_tokens=2, num_layers=2))]))))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "decode role" in info.value.details()


def test_settings_check_roles():
    from glitches.services.runtime.errors import InvalidArgument

    for bad in ("", "decode,npu", "assist"):
        with pytest.raises(InvalidArgument):
            GpuWorkerSettings(roles=bad)
    assert GpuWorkerSettings(roles="prefill,decode,assist").role_set() == {"prefill", "decode", "assist"}


def test_staging_is_released_after_seal(pair):
    """Once a transfer is complete the request's KV lives in its blocks; staging holds only transfers in flight."""
    rid = "g2g-staging"
    prompt = list(range(10, 60))
    target = worker_pb2.DecodeTarget(address=pair["address"], worker_id="gpu-decode", kv_token=_token(rid))
    pair["shm"].Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, target=target,
                                                  sampling=common_pb2.SamplingParams(max_new_tokens=4)))
    assert pair["intake"].staging.ids() == [] and pair["engine"].requests.get(rid).kv.length == len(prompt)
    assert torch.isfinite(pair["engine"].requests.get(rid).kv.read(0, len(prompt))[0]).all()
    pair["stub"].Release(worker_pb2.ReleaseRequest(request_id=rid))
    _nothing_held(pair)


def test_full_staging_refuses_the_transfer_and_rolls_back_its_admission(pair):
    """Staging holds only transfers in flight; when it has no room the header is RESOURCE_EXHAUSTED and the
    request's KV blocks and slot are given back at once."""
    from glitches.services.runtime.errors import ResourceExhausted

    small = GpuKvIntake(pair["engine"], 256 * 1024, "gpu-decode-small")  # 8 KiB per pseudo-channel
    try:
        taken = []
        with pytest.raises(ResourceExhausted) as refused:
            for i in range(2):  # the decode GPU has 2 slots: the second is refused by staging, not by slots
                small.reserve(f"staged-{i}", 400)
                taken.append(f"staged-{i}")
        assert len(taken) == 1 and "staging segment" in str(refused.value), refused.value
        assert pair["engine"].requests.active() == len(taken)  # the refused one holds nothing
        for rid in taken:
            assert small.release(rid)
    finally:
        small.close()
    _nothing_held(pair)
