"""API keys: the scheduler's gRPC interceptor (UNAUTHENTICATED), the gateway's middleware (401),
the SDK sending its key, where keys come from, the tenants the keys file names (the prefix-cache salt
they share) and the gateway forwarding its clients' keys."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from starlette.testclient import TestClient

import glitches
from glitches import AsyncClient, Client
from glitches.cli_up import _up_access
from glitches.gateway.app import Gateway, create_app
from glitches.scheduler.settings import SchedulerSettings
from glitches.services.auth.api_keys import (ApiKeyInterceptor, load_api_keys, read_api_keys, shared_tenants,
                                             tenant_salt)
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


def test_keys_file_names_tenants(tmp_path):
    path = tmp_path / "keys"
    path.write_text("# key tenant\nalpha team-a\nbeta team-a\ngamma\n\tdelta   team-b  \nalpha\n")
    assert read_api_keys(str(path), "epsilon") == {"epsilon": "", "alpha": "team-a", "beta": "team-a", "gamma": "",
                                                   "delta": "team-b"}
    assert load_api_keys(str(path)) == ("alpha", "beta", "gamma", "delta")  # the gateway's view: keys only
    assert shared_tenants(read_api_keys(str(path))) == (("alpha", "team-a"), ("beta", "team-a"), ("delta", "team-b"))
    for text, message in (("alpha team-a extra\n", "line 1: 3 fields"),
                          ("alpha\nbeta te/am\n", "line 2: tenant name 'te/am'"),
                          ("alpha a\nalpha b\n", "line 2: a key listed before with tenant 'a' is given tenant 'b'")):
        path.write_text(text)
        with pytest.raises(InvalidArgument, match=message):
            read_api_keys(str(path))


def test_tenant_salt_is_per_key_unless_the_operator_shares_a_tenant():
    keys = ("alpha", "beta", "gamma", "team-a")
    tenants = {"alpha": "team-a", "beta": "team-a"}
    alpha, beta, gamma = (tenant_salt(k, keys, tenants) for k in ("alpha", "beta", "gamma"))
    assert alpha == beta and len(alpha) == 32  # one tenant: one salt
    assert gamma not in (alpha, b"") and gamma == tenant_salt("gamma", keys)  # a key alone: its own
    assert tenant_salt("alpha", keys) != alpha  # without the tenant column each key is its own tenant
    assert tenant_salt("team-a", keys, tenants) != alpha  # a key spelled like a tenant name is not that tenant
    assert tenant_salt("eve", keys, tenants) == b"" == tenant_salt("alpha", (), tenants)


def test_scheduler_settings_refuse_a_tenant_for_an_unknown_key():
    assert SchedulerSettings(api_keys=("a",), api_key_tenants=(("a", "t"),)).api_key_tenants == (("a", "t"),)
    with pytest.raises(InvalidArgument, match="api_keys lacks"):
        SchedulerSettings(api_keys=("a",), api_key_tenants=(("b", "t"),))


def test_gateway_forwards_the_clients_key_only_when_told():
    body = {"model": "tiny", "prompt": "Hi"}
    for forward, sent in ((False, None), (True, "secret")):
        gateway = Gateway("127.0.0.1:1", None, "tiny", api_keys=("secret",), scheduler_api_key="gw",
                          forward_api_key=forward)
        with TestClient(create_app(gateway)) as http:
            gateway.client = FakeClient([completion()])
            reply = http.post("/v1/completions", json=body, headers={"authorization": "Bearer secret"})
            assert reply.status_code == 200
            assert gateway.client.calls[0][1].get("api_key") == sent  # None: the gateway's own key, "gw"
    with pytest.raises(ValueError, match="needs the gateway to require keys"):
        Gateway("127.0.0.1:1", None, "tiny", forward_api_key=True)


def test_async_client_sends_a_per_call_key(address):
    async def run():
        async with AsyncClient(address, api_key="nope") as client:
            return await client.generate("x", api_key="k1")

    assert asyncio.run(run()).text == "ok"


def test_up_forwards_client_keys_when_gateway_and_scheduler_share_a_keys_file(tmp_path):
    shared, other = tmp_path / "keys", tmp_path / "gateway-keys"
    shared.write_text("alpha team\nbeta team\n")
    other.write_text("gamma\n")
    assert "--forward-api-key" in _up_access(str(shared), str(shared), 0, 0)["gateway_args"]
    assert "--forward-api-key" not in _up_access(str(shared), str(other), 0, 0)["gateway_args"]
