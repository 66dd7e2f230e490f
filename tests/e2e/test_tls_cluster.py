"""A `glitches up` cluster with TLS on every gRPC link and mTLS between daemons (certificates from
`glitches certs`): greedy tokens stay exact, plaintext and certificate-less peers are refused at the
scheduler and at every worker, and the gateway reaches the scheduler over mTLS."""

from __future__ import annotations

import re
import subprocess
import sys

import grpc
import httpx
import pytest

from glitches import Client
from glitches.certs import make_certs
from glitches.errors import UnavailableError
from glitches.services.runtime.channels import insecure_channel, open_channel
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc
from glitches.services.auth.tls import TlsConfig
from tests.e2e.conftest import start_up, stop_up

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    make_certs(folder)
    proc, address = start_up(["--port", "0", "--fpga-workers", "1", "--tls-dir", str(folder), "--gateway-port", "0"])
    client_tls = TlsConfig(ca=str(folder / "ca.pem"), cert=str(folder / "client.pem"),
                           key=str(folder / "client-key.pem"))
    client = Client(address, timeout_s=300, tls=client_tls)
    pids = [w.pid for w in client.status().workers]
    yield dict(address=address, client=client, tls=client_tls, folder=folder, gateway=proc.gateway_url)
    client.close()
    stop_up(proc, pids)


def test_greedy_tokens_through_mtls_links_equal_transformers(tls_cluster, reference):
    result = tls_cluster["client"].generate("The capital of France is", max_tokens=12)
    assert list(result.token_ids) == reference["generate"](list(result.prompt_token_ids), 12)
    assert result.decode_device == "fpga"  # the KV crossed the GPU -> FPGA link, which is mTLS too


def test_plaintext_and_certificate_less_callers_are_refused(tls_cluster):
    with Client(tls_cluster["address"], timeout_s=10, tls=TlsConfig()) as plaintext:
        with pytest.raises(UnavailableError):
            plaintext.status()
    ca_only = TlsConfig(ca=tls_cluster["tls"].ca)
    for worker in tls_cluster["client"].status().workers:
        for channel in (insecure_channel(worker.address), open_channel(worker.address, ca_only)):
            with pytest.raises(grpc.RpcError) as refused:
                worker_pb2_grpc.WorkerStub(channel).Info(worker_pb2.InfoRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            channel.close()
        info = worker_pb2_grpc.WorkerStub(open_channel(worker.address, tls_cluster["tls"])).Info(
            worker_pb2.InfoRequest(), timeout=10)
        assert info.worker_id == worker.worker_id


def test_gateway_reaches_the_scheduler_over_mtls(tls_cluster):
    reply = httpx.post(tls_cluster["gateway"] + "/v1/completions",
                       json={"model": "smollm2-135m-instruct", "prompt": "Two plus two is", "max_tokens": 4},
                       timeout=120)
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] >= 1


def test_up_with_tls_makes_a_fresh_ca_and_answers():
    run = subprocess.run([sys.executable, "-m", "glitches", "up", "--port", "0", "--fpga-workers", "1", "--tls",
                          "--prompt", "What is 2 + 2?", "--max-tokens", "4"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^ready 127\.0\.0\.1:\d+ tls$", run.stdout, re.MULTILINE)
    assert "decoded on fpga worker fpga-0" in run.stderr
    log = (re.search(r"logs in (\S+)", run.stderr).group(1))
    assert "(mTLS)" in open(f"{log}/fpga-0.log").read()


def test_a_client_certificate_cannot_drive_a_worker(tls_cluster):
    """Only the scheduler's certificate may call Decode/Release; only a GPU worker's may send KV."""
    for worker in tls_cluster["client"].status().workers:
        stub = worker_pb2_grpc.WorkerStub(open_channel(worker.address, tls_cluster["tls"]))  # the `client` role
        for call in (lambda: stub.Release(worker_pb2.ReleaseRequest(request_id="someone-else"), timeout=10),
                     lambda: list(stub.Decode(worker_pb2.DecodeRequest(request_id="someone-else"), timeout=10))):
            with pytest.raises(grpc.RpcError) as refused:
                call()
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "only by scheduler" in refused.value.details()
