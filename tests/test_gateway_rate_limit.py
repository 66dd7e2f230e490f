"""The gateway's per-client and per-`user` request rates: HTTP 429 in OpenAI's error shape with
Retry-After, per API key or per client address, recovering with time. The gateway runs in-process
(starlette's TestClient, and OpenAI's own client over it) in front of a real gRPC server that answers
the Scheduler service with one fixed reply (tests.gateway_helpers.OkScheduler)."""

from __future__ import annotations

import openai
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from glitches.gateway.app import Gateway, create_app
from glitches.gateway.rate_limit import ClientRateLimitMiddleware
from glitches.services.runtime.grpc_server import start_server
from glitches.services.auth.rate_limit import PRUNE_AT, KeyRateLimiter
from glitches.services.stubs.glitches.v1 import scheduler_pb2_grpc
from tests.gateway_helpers import OkScheduler

BODY = {"model": "m", "prompt": "hi", "max_tokens": 2}


@pytest.fixture(scope="module")
def scheduler_address():
    name = "glitches.v1.Scheduler"
    server = start_server("127.0.0.1", 0, [(scheduler_pb2_grpc.add_SchedulerServicer_to_server, OkScheduler())],
                          (name,))
    yield f"127.0.0.1:{server.port}"
    server.stop(0)


@pytest.fixture
def clock():
    return [0.0]  # seconds


def _http(scheduler_address, clock, client=("10.0.0.1", 5000), **limits) -> TestClient:
    gateway = Gateway(scheduler_address, None, "m", clock=lambda: clock[0], **limits)
    return TestClient(create_app(gateway), client=client)


def _refused(reply, retry_after_s: str, who: str):
    assert reply.status_code == 429, reply.text
    assert reply.headers["retry-after"] == retry_after_s and int(reply.headers["retry-after-ms"]) > 0
    error = reply.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert who in error["message"] and "requests per minute" in error["message"]


def test_per_client_address_without_keys(scheduler_address, clock):
    with _http(scheduler_address, clock, requests_per_minute_per_client=2) as http, \
            _http(scheduler_address, clock, client=("10.0.0.2", 5000), requests_per_minute_per_client=2) as other:
        assert http.post("/v1/completions", json=BODY).status_code == 200
        assert http.get("/v1/models").status_code == 200  # every /v1/ request counts
        _refused(http.post("/v1/completions", json=BODY), "30", "client address 10.0.0.1")
        assert http.get("/healthz").status_code == 200  # probes are not limited
        assert other.post("/v1/completions", json=BODY).status_code == 200  # its own bucket (own app, own limiter)
        clock[0] = 30.0  # half a minute refills one request
        assert http.post("/v1/completions", json=BODY).status_code == 200
        _refused(http.post("/v1/completions", json=BODY), "30", "10.0.0.1")


def test_addresses_share_one_app_but_not_one_bucket(clock):
    """The middleware alone on a one-route starlette app, reached from two client addresses."""
    limiter = KeyRateLimiter(1, clock=lambda: clock[0])
    app = Starlette(routes=[Route("/v1/x", lambda request: PlainTextResponse("ok"))],
                    middleware=[Middleware(ClientRateLimitMiddleware, limiter=limiter, keyed=False)])
    first, second = TestClient(app, client=("10.0.0.1", 1)), TestClient(app, client=("10.0.0.2", 1))
    assert first.get("/v1/x").text == "ok" and second.get("/v1/x").text == "ok"
    _refused(first.get("/v1/x"), "60", "10.0.0.1")
    _refused(second.get("/v1/x"), "60", "10.0.0.2")
    assert limiter.tracked() == 2


def test_per_api_key_with_keys(scheduler_address, clock):
    limits = dict(api_keys=("k1", "k2"), requests_per_minute_per_client=1)
    with _http(scheduler_address, clock, **limits) as http:
        k1, k2 = ({"authorization": f"Bearer {k}"} for k in ("k1", "k2"))
        assert http.post("/v1/completions", json=BODY, headers=k1).status_code == 200
        _refused(http.post("/v1/completions", json=BODY, headers=k1), "60", "this API key")
        assert http.post("/v1/completions", json=BODY, headers=k2).status_code == 200  # same address, other key
        for _ in range(3):  # a wrong key is refused before it is counted
            assert http.post("/v1/completions", json=BODY, headers={"authorization": "Bearer no"}).status_code == 401


def test_per_user_field_within_a_client(scheduler_address, clock):
    with _http(scheduler_address, clock, requests_per_minute_per_user=1) as http:
        assert http.post("/v1/completions", json={**BODY, "user": "alice"}).status_code == 200
        _refused(http.post("/v1/completions", json={**BODY, "user": "alice"}), "60", "user 'alice'")
        assert http.post("/v1/completions", json={**BODY, "user": "bob"}).status_code == 200
        for _ in range(3):  # no `user`: only the per-client limit (none here) applies
            assert http.post("/v1/completions", json=BODY).status_code == 200
        assert http.post("/v1/completions", json={**BODY, "user": 5}).status_code == 400  # OpenAI's is a string


def test_the_user_field_cannot_lift_the_client_limit(scheduler_address, clock):
    limits = dict(requests_per_minute_per_client=2, requests_per_minute_per_user=10)
    with _http(scheduler_address, clock, **limits) as http:
        for user in ("a", "b"):
            assert http.post("/v1/completions", json={**BODY, "user": user}).status_code == 200
        _refused(http.post("/v1/completions", json={**BODY, "user": "c"}), "30", "client address")


def test_openai_client_gets_a_rate_limit_error_with_retry_after(scheduler_address, clock):
    with _http(scheduler_address, clock, requests_per_minute_per_client=1) as http:
        oai = openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)
        assert oai.completions.create(model="m", prompt="hi", max_tokens=2).choices[0].text == "ok"
        with pytest.raises(openai.RateLimitError) as info:
            oai.completions.create(model="m", prompt="hi", max_tokens=2)
        assert info.value.status_code == 429 and info.value.response.headers["retry-after"] == "60"
        assert info.value.code == "rate_limit_exceeded"


def test_full_buckets_are_dropped_so_memory_stays_bounded(clock):
    limiter = KeyRateLimiter(60, clock=lambda: clock[0])
    for i in range(PRUNE_AT - 1):
        assert limiter.take(f"k{i}") == 0.0
    clock[0] = 2.0  # each of those buckets has refilled (1 request per second)
    assert limiter.take("last") == 0.0
    assert limiter.tracked() == 1  # only the bucket not yet full again
