"""API keys: the scheduler's gRPC interceptor (UNAUTHENTICATED), the gateway's middleware (401),
the SDK sending its key, and where keys come from."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.testclient import TestClient

import glitches
from glitches import Client
from glitches.gateway.app import Gateway, create_app
from glitches.services.auth.api_keys import ApiKeyInterceptor, load_api_keys
from glitches.services.runtime.channels import insecure_channel
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.runtime.grpc_server import start_server
from glitches.services.stubs.glitches.v1 import scheduler_pb2_grpc
from tests.gateway_helpers import FakeClient, OkScheduler, completion


@pytest.fixture
def address():
    name = "glitches.v1.Scheduler"
    server = start_server("127.0.0.1", 0, [(scheduler_pb2_grpc.add_SchedulerServicer_to_server, OkScheduler())],
                          (name,), auth=ApiKeyInterceptor(("k1", "k2"), (name,)))
    yield f"127.0.0.1:{server.port}"
    server.stop(0)


def test_scheduler_requires_a_key(address, monkeypatch):
    monkeypatch.delenv("GLITCHES_API_KEY", raising=False)
    with Client(address) as client, pytest.raises(glitches.UnauthenticatedError, match="missing API key"):
        client.status()
    with Client(address, api_key="nope") as client, pytest.raises(glitches.UnauthenticatedError, match="invalid"):
        client.generate("x")
    with Client(address, api_key="k2") as client:
        assert client.status().model == "m" and client.generate("x").text == "ok"
    monkeypatch.setenv("GLITCHES_API_KEY", "k1")
    with Client(address) as client:
        assert client.status().model == "m"
    health = health_pb2_grpc.HealthStub(insecure_channel(address))  # probes need no key
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING


def test_malformed_request_without_key_is_still_unauthenticated(address):
    with pytest.raises(grpc.RpcError) as info:
        list(insecure_channel(address).unary_stream("/glitches.v1.Scheduler/Generate")(b"\xff\xff", timeout=5))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_gateway_requires_a_key():
    gateway = Gateway("127.0.0.1:1", None, "tiny", api_keys=("secret",))
    with TestClient(create_app(gateway)) as http:
        gateway.client = FakeClient([completion()])
        body = {"model": "tiny", "prompt": "Hi"}
        missing = http.post("/v1/completions", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
        assert http.post("/v1/completions", json=body, headers={"authorization": "Bearer x"}).status_code == 401
        assert http.get("/v1/models", headers={"authorization": "Basic secret"}).status_code == 401
        assert http.post("/v1/completions", json=body,
                         headers={"authorization": "Bearer secret"}).status_code == 200
        assert http.get("/healthz").status_code == 200


def test_keys_from_file_and_list(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# operators\nalpha\n\n  beta  \n")
    assert load_api_keys(str(path), "gamma, alpha") == ("gamma", "alpha", "beta")
    assert load_api_keys() == ()
    with pytest.raises(InvalidArgument, match="one key per line"):
        load_api_keys(str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("# none\n")
    with pytest.raises(InvalidArgument, match="holds no key"):
        load_api_keys(str(tmp_path / "empty"))
