"""glitches/services/runtime/worker_runtime.py with a toy device (tests/runtime_toy_worker.py): it registers, beats,
re-publishes on poke, answers health, Info and the HTTP side port, checks request auth and mTLS
roles, and on drain deregisters before finishing what is in flight; as a process, SIGTERM does that."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from glitches.certs import make_certs
from glitches.services.runtime.channels import insecure_channel, open_channel
from glitches.services.cluster.registry import Registry
from glitches.services.auth.request_auth import OpenAccess, RequestAuthIssuer, RequestAuthVerifier
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from glitches.services.auth.tls import TlsConfig
from glitches.services.runtime.worker_runtime import start_worker
from tests.conftest import REDIS_URL
from tests.runtime_toy_worker import TOY_BLOCKS, ToyDevice, ToySettings
from tests.dies_with_pytest import dies_with_pytest


def _record(registry: Registry, worker_id: str):
    return {w.record.worker_id: w for w in registry.workers()}.get(worker_id)


def _wait(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def toy(redis_prefix):
    """A started toy worker beating every 2 s (so a change seen sooner came from a poke)."""
    running = start_worker(ToyDevice(ToySettings(redis_prefix=redis_prefix, heartbeat_interval_s=2.0,
                                                 heartbeat_ttl_s=5.0)))
    registry = Registry(REDIS_URL, redis_prefix)
    yield running, registry
    running.drain(0)
    running.close()
    registry.close()


def test_it_registers_with_the_record_built_from_info(toy):
    running, registry = toy
    state = _record(registry, running.worker_id)
    assert state is not None and state.healthy
    record = state.record
    assert running.worker_id.startswith("toy-") and record.kind == "toy" and record.backend == "toy"
    assert record.address == running.address and record.http_address == running.http.address
    assert (record.slots, record.kv_free_blocks, record.kv_block_bytes, record.kv_granularity_tokens) == \
        (2, TOY_BLOCKS, 1024, 16)
    assert record.kv_transports == "grpc" and record.emulated == 1
    assert isinstance(running.device.auth, OpenAccess)  # no secret: request auth is off (with a warning)
    assert running.ready_line().startswith(f"toy-worker {running.worker_id} ready {running.address} toy=yes http=")


def test_it_beats_and_a_poke_republishes_at_once(toy):
    running, registry = toy
    running.device.servicer.take_blocks(5)  # calls poke: published well within the 2 s interval
    assert _wait(lambda: _record(registry, running.worker_id).record.kv_free_blocks == TOY_BLOCKS - 5, 1.5)
    time.sleep(5.5)  # past the heartbeat TTL: only the beats keep it alive
    assert registry.is_registered(running.worker_id)


def test_it_answers_health_info_and_the_http_side_port(toy):
    running, _ = toy
    channel = insecure_channel(running.address)
    try:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "glitches.v1.Worker"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        info = worker_pb2_grpc.WorkerStub(channel).Info(worker_pb2.InfoRequest(), timeout=5)
        assert info.worker_id == running.worker_id and info.device_name == "a counting toy"
    finally:
        channel.close()
    base = f"http://{running.http.address}"
    assert _get(base + "/healthz") == (200, "ok\n")
    assert _get(base + "/readyz") == (200, "ready\n")
    status, text = _get(base + "/metrics")
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    assert status == 200 and values[("glitches_slots", ())] == 2.0
    assert any(name == "glitches_grpc_requests_total" and ("code", "OK") in labels and "Info" in dict(labels)["method"]
               for name, labels in values)  # counted by the runtime's metrics interceptor
    assert values[("glitches_kv_held_bytes", ())] == 0.0


def test_drain_deregisters_first_and_lets_in_flight_work_finish(toy):
    running, registry = toy
    channel = insecure_channel(running.address)
    stub = worker_pb2_grpc.WorkerStub(channel)
    tokens: list[int] = []
    stream = stub.Decode(worker_pb2.DecodeRequest(request_id="r", sampling=common_pb2.SamplingParams(
        max_new_tokens=8)), timeout=30)  # 8 steps x 0.2 s
    reader = threading.Thread(target=lambda: tokens.extend(t.token_id for t in stream))
    reader.start()
    time.sleep(0.3)
    drainer = threading.Thread(target=running.drain, args=(10.0,))
    drainer.start()
    assert _wait(lambda: _record(registry, running.worker_id) is None, 1.0)  # no new work is routed here
    reader.join(10)
    drainer.join(10)
    assert tokens == list(range(8))  # the stream in flight finished within the grace
    with pytest.raises(grpc.RpcError) as error:  # and the port no longer serves
        stub.Info(worker_pb2.InfoRequest(), timeout=2)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_request_auth_and_mtls_roles(redis_prefix, tmp_path):
    make_certs(tmp_path, ("toy-worker", "scheduler", "client"))

    def tls(role: str) -> TlsConfig:
        return TlsConfig(ca=str(tmp_path / "ca.pem"), cert=str(tmp_path / f"{role}.pem"),
                         key=str(tmp_path / f"{role}-key.pem"))

    own = tls("toy-worker")
    secret = b"s" * 32
    running = start_worker(ToyDevice(ToySettings(redis_prefix=redis_prefix, kv_token_secret=secret, tls_ca=own.ca,
                                                 tls_cert=own.cert, tls_key=own.key)))
    token = RequestAuthIssuer(secret).issue("release", "r", running.worker_id)

    def release(role: str, auth_token: str) -> grpc.StatusCode:
        channel = open_channel(running.address, tls(role))
        try:
            worker_pb2_grpc.WorkerStub(channel).Release(worker_pb2.ReleaseRequest(request_id="r",
                                                                                  auth_token=auth_token), timeout=5)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()
        finally:
            channel.close()

    try:
        assert isinstance(running.device.auth, RequestAuthVerifier)
        assert release("scheduler", token) == grpc.StatusCode.OK
        assert release("scheduler", "") == grpc.StatusCode.PERMISSION_DENIED  # no request token
        assert release("client", token) == grpc.StatusCode.PERMISSION_DENIED  # not the scheduler's certificate
    finally:
        running.drain(0)
        running.close()


def test_sigterm_drains_deregisters_and_exits_0(redis_prefix):
    process = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "tests.runtime_toy_worker", redis_prefix],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    registry = Registry(REDIS_URL, redis_prefix)
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if " ready " in line:
                break
        ready = lines[-1].split()
        assert ready[0] == "toy-worker" and ready[2] == "ready", "".join(lines)
        worker_id = ready[1]
        assert registry.is_registered(worker_id)
        process.terminate()  # SIGTERM
        rest, _ = process.communicate(timeout=30)
        assert process.returncode == 0, rest
        assert "exited cleanly" in rest
        assert not registry.is_registered(worker_id) and _record(registry, worker_id) is None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        registry.close()
