"""KV-transfer tokens on a real `glitches up` cluster: every FPGA worker requires them, the secret
travels in the daemons' environment (not their command lines), a transfer that did not come
through the scheduler is PERMISSION_DENIED with the card's free KV unchanged, and requests still
decode on FPGAs."""

from __future__ import annotations

import grpc
import psutil
import pytest
import torch

from glitches.kv_plane import kv_wire
from glitches.services.runtime.channels import insecure_channel
from glitches.services.auth.kv_token import SECRET_ENV, KvTokenIssuer
from glitches.services.auth.request_auth import RequestAuthIssuer
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc
from tests.e2e.conftest import KV_TOKEN_ENV

pytestmark = pytest.mark.e2e


def _fpgas(cluster):
    return [w for w in cluster["client"].status().workers if w.kind == "fpga"]


def test_every_fpga_worker_requires_tokens(cluster):
    assert _fpgas(cluster) and all(w.kv_tokens_required for w in _fpgas(cluster))


def test_the_secret_is_in_the_environment_not_the_command_line(cluster):
    secret = KV_TOKEN_ENV[SECRET_ENV]
    for worker in cluster["client"].status().workers:
        process = psutil.Process(worker.pid)
        assert secret not in " ".join(process.cmdline())
        assert process.environ().get(SECRET_ENV) == secret


def _stream(request_id: str, token: str, layers: int, heads: int, head_dim: int):
    kv = torch.zeros(1, heads, 4, head_dim, dtype=torch.float16)
    return [worker_pb2.KvChunk(header=worker_pb2.KvHeader(request_id=request_id, prompt_tokens=4, reserve_tokens=8,
                                                          num_layers=layers, kv_token=token)),
            *(worker_pb2.KvChunk(layer=next(kv_wire.layer_chunks(i, kv, kv))) for i in range(layers)),
            worker_pb2.KvChunk(end=worker_pb2.KvEnd(num_layers=layers))]


def test_a_transfer_not_issued_by_the_scheduler_is_refused(cluster, reference):
    config = reference["model"].config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    shape = (config.num_hidden_layers, config.num_key_value_heads, head_dim)
    worker = _fpgas(cluster)[0]
    stub = worker_pb2_grpc.WorkerStub(insecure_channel(worker.address))
    free = stub.Info(worker_pb2.InfoRequest()).kv_free_bytes
    forged = KvTokenIssuer(b"not the cluster's secret, but long").issue("forged", worker.worker_id)
    for token in ("", "v1.1.00", forged):
        with pytest.raises(grpc.RpcError) as info:
            stub.TransferKV(iter(_stream("forged", token, *shape)), timeout=30)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, info.value.details()
        assert stub.Info(worker_pb2.InfoRequest()).kv_free_bytes == free
    good = KvTokenIssuer(KV_TOKEN_ENV[SECRET_ENV].encode()).issue("with-token", worker.worker_id)
    assert stub.TransferKV(iter(_stream("with-token", good, *shape)), timeout=30).kv_bytes > 0  # the layout was right
    release = RequestAuthIssuer(KV_TOKEN_ENV[SECRET_ENV].encode()).issue("release", "with-token", worker.worker_id)
    assert stub.Release(worker_pb2.ReleaseRequest(request_id="with-token", auth_token=release)).released
    assert stub.Info(worker_pb2.InfoRequest()).kv_free_bytes == free


def test_requests_decode_on_fpgas_with_tokens_on(cluster):
    result = cluster["client"].generate("Name a color.", max_tokens=4)
    assert result.decode_device == "fpga"
