"""glitches/services/auth/request_auth.py: per-request authorisation of worker RPCs without TLS, over real gRPC with
in-process workers (tiny random Llama): a caller without the secret gets PERMISSION_DENIED for Prefill,
Decode, Release and RenewKvHolds; a token for one request, worker or purpose is no good for another;
the decode lock and the FPGA worker's slot limit hold whoever calls."""

from __future__ import annotations


import grpc
import pytest

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.decode_contract.wrappers import KvHeld, SlotLimit
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.services.generation import models
from glitches.services.runtime.channels import insecure_channel
from glitches.services.runtime.errors import PermissionDenied, ResourceExhausted
from glitches.services.runtime.grpc_server import start_server
from glitches.services.cluster.kv_holds import KvHolds
from glitches.services.auth.request_auth import RequestAuthIssuer, RequestAuthVerifier
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc

SECRET = b"request-auth-test-secret-0123456789"
ISSUER = RequestAuthIssuer(SECRET)


def test_tokens_are_bound_to_purpose_request_worker_and_expiry():
    verifier = RequestAuthVerifier(SECRET)
    verifier.worker_id = "w1"
    verifier.check(ISSUER.issue("decode", "r1", "w1"), "decode", "r1")
    for token, purpose, request_id, why in [
        ("", "decode", "r1", "carries no auth_token"),
        ("r1.x.y", "decode", "r1", "malformed"),
        (ISSUER.issue("decode", "r2", "w1"), "decode", "r1", "not issued"),  # another request's token
        (ISSUER.issue("decode", "r1", "w2"), "decode", "r1", "not issued"),  # another worker's
        (ISSUER.issue("decode", "r1", "w1"), "release", "r1", "not issued"),  # another purpose
        (RequestAuthIssuer(b"another secret, long enough!").issue("decode", "r1", "w1"), "decode", "r1", "not issued"),
        (RequestAuthIssuer(SECRET, ttl_s=-120).issue("decode", "r1", "w1"), "decode", "r1", "expired"),
    ]:
        with pytest.raises(PermissionDenied, match=why):
            verifier.check(token, purpose, request_id)


@pytest.fixture(scope="module")
def workers(tiny_source):
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path)), tiny_source)
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2)
    holds = KvHolds(60.0, card.release)
    gpu = GpuWorkerServicer(engine, "gpu-a", tiny_source.name, auth=RequestAuthVerifier(SECRET))
    fpga = FpgaWorkerServicer(KvHeld(SlotLimit(card, 1), holds), models.load_tokenizer(tiny_source), "fpga-a",
                              tiny_source.name, 1, holds=holds, auth=RequestAuthVerifier(SECRET))
    servers = [start_server("127.0.0.1", 0, [(worker_pb2_grpc.add_WorkerServicer_to_server, s)],
                            ("glitches.v1.Worker",)) for s in (gpu, fpga)]
    stubs = [worker_pb2_grpc.WorkerStub(insecure_channel(f"127.0.0.1:{s.port}")) for s in servers]
    yield dict(gpu=stubs[0], fpga=stubs[1], card=card, fpga_address=f"127.0.0.1:{servers[1].port}")
    for server in servers:
        server.stop(0)


def _prefill(workers, rid: str, token: str, target: bool = False, n: int = 6):
    dest = worker_pb2.DecodeTarget(address=workers["fpga_address"], worker_id="fpga-a") if target else None
    return workers["gpu"].Prefill(worker_pb2.PrefillRequest(
        request_id=rid, prompt_token_ids=list(range(100, 110)), target=dest, auth_token=token,
        sampling=common_pb2.SamplingParams(max_new_tokens=n)), timeout=60)


def _decode(stub, rid: str, first: int, token: str, n: int = 6):
    return stub.Decode(worker_pb2.DecodeRequest(request_id=rid, first_token_id=first, position=10, auth_token=token,
                                                sampling=common_pb2.SamplingParams(max_new_tokens=n)), timeout=60)


def test_calls_without_the_schedulers_authorisation_are_refused(workers):
    calls = {
        "Prefill": lambda: _prefill(workers, "x1", ""),
        "Decode gpu": lambda: list(_decode(workers["gpu"], "x1", 1, "")),
        "Decode fpga": lambda: list(_decode(workers["fpga"], "x1", 1, ISSUER.issue("decode", "x2", "fpga-a"))),
        "Release": lambda: workers["fpga"].Release(worker_pb2.ReleaseRequest(
            request_id="x1", auth_token=ISSUER.issue("release", "x1", "gpu-a")), timeout=10),
        "Renew": lambda: workers["gpu"].RenewKvHolds(worker_pb2.RenewKvHoldsRequest(
            renewals=[worker_pb2.KvHoldRenewal(request_id="x1")]), timeout=10),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, (name, info.value.details())
    assert workers["gpu"].Info(worker_pb2.InfoRequest()).active_requests == 0
    assert workers["gpu"].Info(worker_pb2.InfoRequest()).request_auth_required


def test_authorised_gpu_assist_and_another_requests_decode_is_refused(workers):
    pre = _prefill(workers, "a1", ISSUER.issue("prefill", "a1", "gpu-a"))
    info = workers["gpu"].Info(worker_pb2.InfoRequest())
    assert info.active_requests == 1 and info.expiring_requests == 1 and info.kv_held_bytes > 0
    with pytest.raises(grpc.RpcError) as refused:  # a token for a1 names a1 only
        list(_decode(workers["gpu"], "a1", pre.first_token_id, ISSUER.issue("decode", "a2", "gpu-a")))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    steps = list(_decode(workers["gpu"], "a1", pre.first_token_id, ISSUER.issue("decode", "a1", "gpu-a")))
    assert len(steps) == 5
    info = workers["gpu"].Info(worker_pb2.InfoRequest())
    assert info.active_requests == 0 and info.expiring_requests == 0 and info.kv_held_bytes == 0


def test_two_concurrent_decodes_of_one_request_the_second_is_refused(workers):
    pre = _prefill(workers, "d1", ISSUER.issue("prefill", "d1", "gpu-a"), target=True, n=200)
    token = ISSUER.issue("decode", "d1", "fpga-a")
    first = _decode(workers["fpga"], "d1", pre.first_token_id, token, n=200)
    assert next(first).index == 1  # the first stream is decoding
    with pytest.raises(grpc.RpcError) as second:
        list(_decode(workers["fpga"], "d1", pre.first_token_id, token, n=200))
    assert second.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "already decoding" in second.value.details()
    first.cancel()
    release = ISSUER.issue("release", "d1", "fpga-a")
    workers["fpga"].Release(worker_pb2.ReleaseRequest(request_id="d1", auth_token=release), timeout=10)


def test_an_fpga_worker_takes_no_more_reservations_than_slots(tiny_source):
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2)
    held = KvHeld(SlotLimit(card, 1), KvHolds(60.0, card.release))
    held.reserve("s0", 16)
    for i in range(1, 20):
        with pytest.raises(ResourceExhausted, match="slot"):
            held.reserve(f"s{i}", 16)
    assert card.active_requests() == ["s0"]
    assert held.release("s0") and held.holds.summary().requests == 0
    held.reserve("s1", 16)
    held.release("s1")
