"""Tenant salts end to end (`glitches up` with an API keys file, SmolLM2-135M, real processes; 1 GPU worker
and 1 emulated card, and GPU-only): the prefix-cache salt is the scheduler's, from the key it authenticated,
so tenant B sending tenant A's prompt word for word reuses nothing of A's KV (no GPU cache hit, no card
extending A's KV, a TTFT as long as A's uncached one), while keys the operator put in one tenant
(`<key> <tenant>` in the keys file) share a cache, also through the OpenAI gateway, which forwards each
client's key when it shares the scheduler's keys file.

Exact counts (cached_tokens, reused_tokens, the serve path) are the assertions; TTFTs only with a wide
margin, since two loaded cores make timings noisy."""

from __future__ import annotations

import openai
import pytest

from glitches import Client
from tests.conftest import REDIS_URL
from tests.e2e.conftest import CLUSTER_ENV, metric, start_up, stop_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # two clusters of their own: about 3 minutes on 2 cores

KEYS = """# <key> [<tenant>]
key-operator
key-a
key-b
key-c shared-team
key-d shared-team
"""
HIT_PATHS = ("extend", "transfer-partial")
REPLY_TOKENS = 4


def _prompt(topic: str) -> str:
    """A prompt of several hundred tokens, different per topic (a cache of one says nothing of another)."""
    line = (f"Notes on {topic}: a decode step reads the whole KV cache of the request once per new token, so "
            "the cache's size and where it lives decide the latency of every token after the first. ")
    return "".join(f"{i}. {line}" for i in range(12)) + f"Summarise the notes on {topic} in one sentence."


@pytest.fixture(scope="module", params=["fpga", "gpu"])
def live(request, tmp_path_factory):
    keys = tmp_path_factory.mktemp("tenant-keys") / "keys"
    keys.write_text(KEYS)
    prefix = f"tenant-salt-e2e-{request.param}"
    proc, address = start_up(["--port", "0", "--redis-url", REDIS_URL, "--redis-prefix", prefix,
                              "--fpga-workers", "1" if request.param == "fpga" else "0", "--gpu-slots", "2",
                              "--gateway-port", "0", "--api-keys-file", str(keys),
                              "--gateway-api-keys-file", str(keys)], env={**CLUSTER_ENV, "GLITCHES_API_KEY": ""})
    clients = {key: Client(address, api_key=key, timeout_s=600) for key in ("key-a", "key-b", "key-c", "key-d")}
    pids = [w.pid for w in clients["key-a"].status().workers]
    clients["key-a"].generate(_prompt("warming up"), max_tokens=REPLY_TOKENS)  # first-request costs off A's TTFT
    yield dict(device=request.param, clients=clients, gateway=proc.gateway_url + "/v1",
               card_http=proc.http_addresses.get("fpga-0"))
    for client in clients.values():
        client.close()
    stop_up(proc, pids)


def _hit(completion) -> bool:
    return completion.cached_tokens > 0 or completion.timings.reused_tokens > 0 \
        or completion.timings.serve_path in HIT_PATHS


def test_another_tenant_does_not_reuse_the_same_prompt(live, capsys):
    a, b = live["clients"]["key-a"], live["clients"]["key-b"]
    prompt = _prompt(f"tenants on {live['device']}")
    a_first = a.generate(prompt, max_tokens=REPLY_TOKENS)
    a_again = a.generate(prompt, max_tokens=REPLY_TOKENS)
    b_same = b.generate(prompt, max_tokens=REPLY_TOKENS)
    assert len(a_first.prompt_token_ids) >= 300 and a_first.prompt_token_ids == b_same.prompt_token_ids
    assert a_first.decode_device == a_again.decode_device == b_same.decode_device == live["device"]
    assert not _hit(a_first)
    assert _hit(a_again), (a_again.cached_tokens, a_again.timings.serve_path, a_again.timings.reused_tokens)
    assert (b_same.cached_tokens, b_same.timings.reused_tokens) == (0, 0)
    assert b_same.timings.serve_path not in HIT_PATHS
    assert list(b_same.token_ids) == list(a_first.token_ids) == list(a_again.token_ids)  # greedy: same reply
    ttft = [c.timings.ttft_s for c in (a_first, a_again, b_same)]
    with capsys.disabled():
        print(f"\n[{live['device']}] prompt {len(prompt)} chars / {len(a_first.prompt_token_ids)} tokens; TTFT s: "
              f"A uncached {ttft[0]:.3f}, A hit {ttft[1]:.3f} ({a_again.timings.serve_path}, cached "
              f"{a_again.cached_tokens}, reused {a_again.timings.reused_tokens}), B same prompt {ttft[2]:.3f} "
              f"({b_same.timings.serve_path})")
    assert ttft[1] < ttft[0]  # the hit helped A
    assert ttft[2] >= 0.5 * ttft[0]  # and B got none of it (wide margin: noisy cores)


def test_keys_of_one_tenant_share_the_cache_through_the_gateway(live):
    def oai(key):
        return openai.OpenAI(base_url=live["gateway"], api_key=key, max_retries=0, timeout=600)

    def card_reused() -> float:  # tokens the card reused from KV it kept (its /metrics), 0 without a card
        return metric(live["card_http"], "glitches_card_held_reused_tokens") if live["card_http"] else 0.0

    def send(key: str):
        before = card_reused()
        reply = oai(key).completions.create(model="smollm2-135m-instruct", prompt=prompt, max_tokens=REPLY_TOKENS)
        return reply.usage.prompt_tokens_details.cached_tokens, card_reused() - before

    prompt = _prompt(f"a shared tenant on {live['device']}")
    assert send("key-c") == (0, 0)  # nobody sent it before
    assert send("key-b") == (0, 0)  # another tenant: key-c's cache is not key-b's
    cached, reused = send("key-d")  # key-c's tenant: key-c's cache is key-d's
    assert cached > 0 or reused > 0, (cached, reused)
    d = live["clients"]["key-d"].generate(prompt, max_tokens=REPLY_TOKENS)  # the SDK sees the same tenant
    assert _hit(d), (d.cached_tokens, d.timings.serve_path, d.timings.reused_tokens)
