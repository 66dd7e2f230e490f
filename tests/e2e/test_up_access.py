"""`glitches up` with API keys and a gateway rate limit: the scheduler requires its keys (and `up`
itself gets ready with one), the gateway requires its own keys and holds each to its rate with HTTP
429 and Retry-After, in front of a real cluster with its own Redis."""

from __future__ import annotations

import openai
import pytest

import glitches
from glitches import Client
from tests.e2e.conftest import start_up, stop_up

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    (folder / "scheduler-keys").write_text("sched-key-1\n")
    (folder / "gateway-keys").write_text("# users\nuser-key-1\nuser-key-2\n")
    proc, address = start_up(["--port", "0", "--fpga-workers", "1", "--gateway-port", "0",
                              "--api-keys-file", str(folder / "scheduler-keys"),
                              "--gateway-api-keys-file", str(folder / "gateway-keys"),
                              "--gateway-requests-per-minute-per-client", "2"],
                             env={"GLITCHES_API_KEY": ""})
    with Client(address, api_key="sched-key-1") as client:
        pids = [w.pid for w in client.status().workers]
    yield dict(address=address, gateway=proc.gateway_url + "/v1")
    stop_up(proc, pids)


def test_the_scheduler_requires_its_key(keyed):
    with Client(keyed["address"], api_key="") as client, pytest.raises(glitches.UnauthenticatedError):
        client.status()
    with Client(keyed["address"], api_key="sched-key-1") as client:
        assert client.generate("Name a color.", max_tokens=3).decode_device == "fpga"


def test_the_gateway_requires_its_keys_and_limits_each(keyed):
    def oai(key):
        return openai.OpenAI(base_url=keyed["gateway"], api_key=key, max_retries=0, timeout=300)

    with pytest.raises(openai.AuthenticationError):
        oai("sched-key-1").models.list()  # the scheduler's key is not a gateway key
    first = oai("user-key-1")
    for _ in range(2):
        assert first.completions.create(model="smollm2-135m-instruct", prompt="Hi", max_tokens=2).choices
    with pytest.raises(openai.RateLimitError) as info:
        first.completions.create(model="smollm2-135m-instruct", prompt="Hi", max_tokens=2)
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert oai("user-key-2").completions.create(model="smollm2-135m-instruct", prompt="Hi", max_tokens=2).choices
