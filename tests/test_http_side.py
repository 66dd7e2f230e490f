"""The HTTP side port and the gRPC metrics interceptor, in-process (no model, no cluster)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter

from glitches.services.runtime import metrics
from glitches.services.runtime.channels import insecure_channel
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.runtime.grpc_server import start_server
from glitches.services.runtime.http_side import HttpSide, Readiness
from glitches.services.runtime.settings import DaemonSettings
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc
from tests.worker_helpers import get, samples


def test_healthz_readyz_metrics_and_404():
    registry = CollectorRegistry()
    Counter("demo_things", "things", registry=registry).inc(3)
    readiness = Readiness("loading the model")
    side = HttpSide("127.0.0.1", 0, registry, readiness)
    base = f"http://127.0.0.1:{side.port}"
    try:
        assert get(base + "/healthz") == (200, "ok\n")
        assert get(base + "/readyz") == (503, "not ready: loading the model\n")
        reason = ["worker w is not registered in Redis"]
        readiness.serving(lambda: reason[0])
        assert get(base + "/readyz") == (503, "not ready: worker w is not registered in Redis\n")
        reason[0] = ""
        assert get(base + "/readyz") == (200, "ready\n")
        readiness.serving(lambda: 1 / 0)
        assert get(base + "/readyz")[0] == 503
        status, text = get(base + "/metrics")
        assert status == 200 and samples(text)[("demo_things_total", ())] == 3.0
        assert get(base + "/nope")[0] == 404
    finally:
        side.stop()


def test_busy_port_is_a_clear_error():
    side = HttpSide("127.0.0.1", 0, CollectorRegistry(), Readiness())
    try:
        with pytest.raises(OSError, match="--http-port"):
            HttpSide("127.0.0.1", side.port, CollectorRegistry(), Readiness())
    finally:
        side.stop()


def test_http_port_is_validated():
    with pytest.raises(InvalidArgument, match="--http-port"):
        DaemonSettings(http_port=70000)


class _Failing(worker_pb2_grpc.WorkerServicer):
    def Info(self, request, context):
        raise InvalidArgument("bad info request")

    def Decode(self, request, context):
        yield worker_pb2.DecodeToken(token_id=7)


def test_grpc_calls_are_counted_by_status_code():
    requests = metrics.GRPC_REQUESTS.of("fpga-worker")

    def count(method, code):
        return requests.labels(method, code)._value.get()

    before_bad = count("/glitches.v1.Worker/Info", "INVALID_ARGUMENT")
    before_ok = count("/glitches.v1.Worker/Decode", "OK")
    before_health = count("/grpc.health.v1.Health/Check", "OK")
    server = start_server("127.0.0.1", 0, [(worker_pb2_grpc.add_WorkerServicer_to_server, _Failing())],
                          ("glitches.v1.Worker",), metrics_role="fpga-worker")
    try:
        channel = insecure_channel(f"127.0.0.1:{server.port}")
        stub = worker_pb2_grpc.WorkerStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Info(worker_pb2.InfoRequest())
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [s.token_id for s in stub.Decode(worker_pb2.DecodeRequest(request_id="r"))] == [7]
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
    finally:
        server.stop(0)
    assert count("/glitches.v1.Worker/Info", "INVALID_ARGUMENT") == before_bad + 1
    assert count("/glitches.v1.Worker/Decode", "OK") == before_ok + 1
    assert count("/grpc.health.v1.Health/Check", "OK") == before_health + 1
    assert metrics.IN_FLIGHT.of("fpga-worker").labels("/glitches.v1.Worker/Decode")._value.get() == 0
