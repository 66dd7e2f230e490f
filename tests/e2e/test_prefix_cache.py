"""The GPU worker's prefix cache through a live cluster (`glitches up`, SmolLM2-135M, real processes): a
4-turn chat conversation, each turn re-rendered from the messages as the gateway does, gives the same
greedy tokens with reuse as with cache reads skipped (prompt logprobs) and as transformers' generate, on
GPU assist and FPGA-bound, also after a long request forced the conversation's blocks out; the reused
tokens reach the usage and /metrics; at idle every cached block counts as free."""

from __future__ import annotations

import json
import urllib.request

import pytest

from glitches import Client
from glitches.services.generation import models
from tests.conftest import REDIS_URL
from tests.e2e.conftest import CLUSTER_ENV, LONG, metric, start_up, stop_up

pytestmark = pytest.mark.e2e

USER = ["What is a KV cache? Answer in one short sentence please.",
        "And why does a decode step read all of it for every new token?",
        "Could an FPGA with HBM hold it instead of the GPU? Say yes or no first.",
        "Thanks. Summarise our chat in five words."]
REPLY_TOKENS = 24
KV_CACHE_GIB = "0.0729"  # 106 blocks of 16 tokens (SmolLM2 float32: 720 KiB each); LONG (1,641 tokens) takes 103


@pytest.fixture(scope="module", params=["fpga", "gpu"])
def live(request):
    """A cluster whose requests decode on one emulated card ("fpga") or on the GPU ("gpu": no card)."""
    fpga_workers = "1" if request.param == "fpga" else "0"
    proc, address = start_up(["--port", "0", "--redis-url", REDIS_URL, "--redis-prefix", f"prefix-e2e-{request.param}",
                              "--fpga-workers", fpga_workers, "--gpu-slots", "2", "--gateway-port", "0"],
                             env={**CLUSTER_ENV, "GLITCHES_KV_CACHE_GIB": KV_CACHE_GIB})
    client = Client(address, timeout_s=600)
    pids = [w.pid for w in client.status().workers]
    yield dict(device=request.param, client=client, http=proc.http_addresses["gpu-0"], gateway=proc.gateway_url)
    client.close()
    stop_up(proc, pids)


def _prompt(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_multi_turn_with_reuse_equals_without_and_generate(live, reference):
    client, tokenizer = live["client"], reference["tokenizer"]
    messages, previous = [], []
    evictions = metric(live["http"], "glitches_gpu_prefix_evictions")
    for turn, text in enumerate(USER):
        messages.append({"role": "user", "content": text})
        prompt = _prompt(tokenizer, messages)
        reused = client.generate(prompt, max_tokens=REPLY_TOKENS)
        recomputed = client.generate(prompt, max_tokens=REPLY_TOKENS, prompt_logprobs=True)  # reads no cache
        assert reused.decode_device == live["device"]
        assert list(reused.token_ids) == list(recomputed.token_ids) == reference["generate"](prompt, REPLY_TOKENS)
        assert recomputed.cached_tokens == 0
        assert prompt[:len(previous)] == previous  # the re-rendered history starts with the last prompt
        if turn == 0:
            assert reused.cached_tokens == 0
        elif turn == 2:  # LONG evicted the chain's tail since turn 1 (a shorter prefix may remain)
            assert reused.cached_tokens < len(previous) // 16 * 16
        else:
            assert len(previous) // 16 * 16 <= reused.cached_tokens < len(prompt), (turn, reused.cached_tokens)
        assert reused.cached_tokens % 16 == 0
        if turn == 1:  # a long unrelated request needs more blocks than are free: the LRU cache goes
            client.generate(LONG, max_tokens=4)
            assert metric(live["http"], "glitches_gpu_prefix_evictions") > evictions
        messages.append({"role": "assistant", "content": reused.text})
        previous = prompt
    assert metric(live["http"], "glitches_gpu_prefix_hit_rate") > 0
    assert metric(live["http"], "glitches_gpu_prefix_cached_blocks") > 0
    worker = next(w for w in client.status().workers if w.kind == "gpu")
    assert worker.kv_free_bytes == worker.kv_capacity_bytes  # free + evictable = total at idle


def test_openai_usage_reports_cached_tokens(live):
    """Two turns through the OpenAI gateway: the second's usage.prompt_tokens_details.cached_tokens covers the
    first's prompt (the chat template's system prompt and the first user message), in full blocks."""
    messages = [{"role": "user", "content": "Name one colour of the rainbow, in one word."}]
    usages = []
    for turn in range(2):
        body = json.dumps({"model": models.DEFAULT_MODEL, "messages": messages, "max_tokens": 8,
                           "temperature": 0}).encode()
        request = urllib.request.Request(f"{live['gateway']}/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"})
        reply = json.loads(urllib.request.urlopen(request, timeout=300).read())
        usages.append(reply["usage"])
        messages += [reply["choices"][0]["message"], {"role": "user", "content": "And another one?"}]
    first, second = usages
    assert first["prompt_tokens_details"]["cached_tokens"] % 16 == 0
    assert second["prompt_tokens_details"]["cached_tokens"] >= first["prompt_tokens"] // 16 * 16 > 0
    assert second["prompt_tokens_details"]["cached_tokens"] < second["prompt_tokens"]
