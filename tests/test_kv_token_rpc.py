"""KV-transfer tokens over real gRPC: an FPGA worker with a secret takes KV only with a token the
scheduler issued for that transfer (PERMISSION_DENIED otherwise, with its free KV unchanged); the GPU
worker forwards the token; the scheduler issues one per attempt and, when a card refuses it, decodes
elsewhere. In-process servers, the tiny random Llama, the Redis at 127.0.0.1:6379 under a private prefix."""

from __future__ import annotations

import grpc
import pytest
import torch

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.scheduler.orchestrator import Final, GenerateInput, ModelInfo, Orchestrator
from glitches.scheduler.settings import SchedulerSettings
from glitches.kv_plane import kv_wire
from glitches.services.generation import models
from glitches.services.runtime.channels import insecure_channel
from glitches.services.auth.kv_token import KvTokenIssuer, KvTokenVerifier
from glitches.services.cluster.registry import Registry
from glitches.services.generation.sampling import Sampling
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.conftest import REDIS_URL
from tests.worker_helpers import beat_workers, serve

SECRET = b"kv-token-test-secret-0123456789abcdef"
FPGA_ID = "fpga-k"


@pytest.fixture(scope="module")
def workers(tiny_source):
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path)), tiny_source)
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2)
    gpu = GpuWorkerServicer(engine, "gpu-k", tiny_source.name)
    fpga = FpgaWorkerServicer(card, models.load_tokenizer(tiny_source), FPGA_ID, tiny_source.name, 1,
                              KvTokenVerifier(SECRET))
    gpu_server, fpga_server = serve(gpu), serve(fpga)
    gpu_address, fpga_address = f"127.0.0.1:{gpu_server.port}", f"127.0.0.1:{fpga_server.port}"
    yield dict(engine=engine, card=card, servicers=(gpu, fpga), addresses=(gpu_address, fpga_address),
               gpu=worker_pb2_grpc.WorkerStub(insecure_channel(gpu_address)),
               fpga=worker_pb2_grpc.WorkerStub(insecure_channel(fpga_address)), model=tiny_source.name,
               tokenizer=models.load_tokenizer(tiny_source))
    gpu_server.stop(0)
    fpga_server.stop(0)
    engine.close()  # the step loop's thread


def _kv_stream(rid: str, token: str, prompt: int = 4):
    k = torch.zeros(1, 2, prompt, 16)
    header = worker_pb2.KvHeader(request_id=rid, prompt_tokens=prompt, reserve_tokens=prompt + 4, num_layers=2,
                                 kv_token=token)
    return [worker_pb2.KvChunk(header=header),
            *(worker_pb2.KvChunk(layer=next(kv_wire.layer_chunks(layer, k, k))) for layer in range(2)),
            worker_pb2.KvChunk(end=worker_pb2.KvEnd(num_layers=2))]


ISSUER = KvTokenIssuer(SECRET)


@pytest.mark.parametrize("token, why", [
    (lambda: "", "carries no token"),
    (lambda: "v1.99999999999.deadbeef", "not issued for this request"),
    (lambda: ISSUER.issue("other-request", FPGA_ID), "not issued for this request"),
    (lambda: ISSUER.issue("t1", "fpga-other"), "not issued for this request"),
    (lambda: KvTokenIssuer(b"a different secret, long enough").issue("t1", FPGA_ID), "another secret"),
    (lambda: KvTokenIssuer(SECRET, ttl_s=-120).issue("t1", FPGA_ID), "expired"),
])
def test_transfer_without_a_valid_token_is_permission_denied_and_reserves_nothing(workers, token, why):
    free = workers["card"].kv_free_bytes()
    with pytest.raises(grpc.RpcError) as info:
        workers["fpga"].TransferKV(iter(_kv_stream("t1", token())))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and why in info.value.details()
    assert workers["card"].kv_free_bytes() == free and workers["card"].active_requests() == []


def test_a_token_is_good_for_one_transfer(workers):
    token = ISSUER.issue("t2", FPGA_ID)
    free = workers["card"].kv_free_bytes()
    assert workers["fpga"].TransferKV(iter(_kv_stream("t2", token))).kv_bytes > 0
    assert workers["card"].kv_free_bytes() < free
    assert workers["fpga"].Release(worker_pb2.ReleaseRequest(request_id="t2")).released
    with pytest.raises(grpc.RpcError) as info:  # the same header again: a replay
        workers["fpga"].TransferKV(iter(_kv_stream("t2", token)))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "already used" in info.value.details()
    assert workers["card"].kv_free_bytes() == free


def test_info_says_tokens_are_required(workers):
    assert workers["fpga"].Info(worker_pb2.InfoRequest()).kv_tokens_required
    assert not workers["gpu"].Info(worker_pb2.InfoRequest()).kv_tokens_required


def _prefill(workers, rid: str, token: str, n: int = 4):
    target = worker_pb2.DecodeTarget(address=workers["addresses"][1], worker_id=FPGA_ID, kv_token=token)
    return workers["gpu"].Prefill(worker_pb2.PrefillRequest(
        request_id=rid, prompt_token_ids=list(range(100, 120)), target=target,
        sampling=common_pb2.SamplingParams(max_new_tokens=n)))


def test_the_gpu_worker_forwards_the_token(workers):
    token = ISSUER.issue("p1", FPGA_ID)
    pre = _prefill(workers, "p1", token)
    steps = list(workers["fpga"].Decode(worker_pb2.DecodeRequest(
        request_id="p1", first_token_id=pre.first_token_id, position=20,
        sampling=common_pb2.SamplingParams(max_new_tokens=4))))
    assert len(steps) == 3
    free = workers["card"].kv_free_bytes()
    for bad in ("", token):  # none, then the used one again
        with pytest.raises(grpc.RpcError) as info:
            _prefill(workers, "p1", bad)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
    assert workers["card"].kv_free_bytes() == free and workers["card"].active_requests() == []


# --- the scheduler ---------------------------------------------------------------------------------
@pytest.fixture
def registered(workers, redis_prefix):
    """Both workers in the registry (heartbeats) under the test's own prefix."""
    registry = Registry(REDIS_URL, redis_prefix)
    beats = beat_workers(registry, workers["servicers"], workers["addresses"], ("gpu", "fpga"))
    yield registry
    for beat in beats:
        beat.stop()


def _generate(workers, registry, secret: bytes) -> Final:
    settings = SchedulerSettings(redis_prefix=registry.prefix, kv_token_secret=secret)
    orchestrator = Orchestrator(settings, registry, ModelInfo(workers["model"], workers["tokenizer"], (2,), 512))
    items = list(orchestrator.generate(GenerateInput("hello there", False, Sampling(max_new_tokens=4))))
    assert registry.occupancy() == {} and registry.claims() == {}
    assert workers["card"].active_requests() == [] and workers["engine"].active_requests() == 0
    return items[-1]


def test_the_scheduler_issues_tokens_the_card_accepts(workers, registered):
    final = _generate(workers, registered, SECRET)
    assert final.decode_device == "fpga" and final.decode_worker == FPGA_ID and len(final.token_ids) == 4
    assert final.migrations == 0


@pytest.mark.parametrize("secret", [b"", b"the wrong secret, of enough bytes"])
def test_a_card_that_refuses_the_token_is_skipped_for_gpu_assist(workers, registered, secret):
    final = _generate(workers, registered, secret)
    assert final.decode_device == "gpu" and len(final.token_ids) == 4 and final.migrations == 0
