"""A 6-turn greedy chat through the OpenAI gateway on a live cluster (`glitches up --gateway-port 0`: 1 GPU worker,
1 emulated card, SmolLM2-135M, real processes), once per KV-reuse path: transfer-partial (the GPU prefills
from its prefix cache, only the KV the card lacks moves), extend (the card forces the new tokens itself)
and transfer (reuse routing on, the partial path off: the GPU's prefix cache alone). Forced evictions
(`glitches evict-cache`, a process) empty the holding card before turn 3 and the card and the GPU before
turn 5; before turn 5 the card's evicted blocks are then published again, a stale hint the card must refuse.

Each turn's reply equals, token for token, the same prompt served with reuse off (the SDK with prompt
logprobs on the same cluster: no cache read on the GPU, no reuse routing, the whole KV sent), and the path
the scheduler took (its glitches_reuse_paths_total) is the configured one on turns without eviction and the
plain transfer after one (on turn 5: the refused attempt on the configured path, then the transfer). Tokens
are compared by the exact bytes of each (the chat response's logprobs). The gateway re-renders the chat
template every turn, so hits are decided on the re-rendered ids (the held reply's ids may differ from the
generated ones); the hit counts are printed.

Routing costs are set per cluster (scheduler environment) so that each path always wins when a card holds a
prefix; the choice itself is tested with known answers in tests/test_placement_reuse.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid

import openai
import pytest
import redis

from glitches import Client
from glitches.gateway.logprob_shapes import TokenStrings
from glitches.kv_plane.prefix_index import DEFAULT_SALT, block_hashes, root_hash
from glitches.services.cluster.registry import Registry
from glitches.services.generation import models
from tests.conftest import REDIS_URL
from tests.e2e.conftest import CLUSTER_ENV, start_up, stop_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # one cluster per path: about 2 minutes each on 2 cores

MODEL = models.DEFAULT_MODEL
USER = ["What is a KV cache? Answer in one short sentence.",
        "Why does each decode step read all of it?",
        "Could a card with HBM hold it instead?",
        "What limits how long a conversation it can keep?",
        "And what happens when it runs out of room?",
        "Summarise this whole conversation in a few words."]
REPLY_TOKENS = 10
EVICT_BEFORE = {3: ("fpga",), 5: ("fpga", "gpu")}  # turn -> the kinds of worker emptied just before it
STALE_TURN = 5  # its card's evicted blocks are published again (a hint from before the eviction)
PATHS = {  # path -> scheduler environment that makes it win whenever a card holds a prefix
    "transfer-partial": {"GLITCHES_REUSE_CARD_FORCED_STEP_S": "10"},
    "extend": {"GLITCHES_REUSE_GPU_PREFILL_TOKENS_PER_S": "10", "GLITCHES_REUSE_CARD_FORCED_STEP_S": "0.0001"},
    "transfer": {"GLITCHES_KV_REUSE_PARTIAL": "false", "GLITCHES_REUSE_CARD_FORCED_STEP_S": "10"},
}


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer(models.resolve_model(MODEL))


@pytest.fixture(scope="module", params=list(PATHS))
def live(request):
    path = request.param
    prefix = f"reuse-gateway-{path}-{uuid.uuid4().hex[:6]}"
    proc, address = start_up(["--port", "0", "--redis-url", REDIS_URL, "--redis-prefix", prefix, "--fpga-workers",
                              "1", "--gpu-slots", "2", "--gateway-port", "0"], env={**CLUSTER_ENV, **PATHS[path]})
    client = Client(address, timeout_s=600)
    workers = {w.kind: w for w in client.status().workers}
    registry = Registry(REDIS_URL, prefix)
    oai = openai.OpenAI(base_url=proc.gateway_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    yield dict(path=path, client=client, registry=registry, oai=oai, workers=workers,
               scheduler_http=proc.http_addresses["scheduler"])
    registry.close()
    client.close()
    stop_up(proc, [w.pid for w in workers.values()])
    leftover = list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{prefix}:*"))
    assert leftover == [], f"registry keys left behind: {leftover}"


def _reuse_paths(http_address: str) -> dict[str, float]:
    """The scheduler's glitches_reuse_paths_total, by path."""
    text = urllib.request.urlopen(f"http://{http_address}/metrics", timeout=5).read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("glitches_reuse_paths_total{"):
            label = line.split('path="', 1)[1].split('"', 1)[0]
            counts[label] = float(line.split()[-1])
    return counts


def _stale_holds(http_address: str) -> float:
    text = urllib.request.urlopen(f"http://{http_address}/metrics", timeout=5).read().decode()
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("glitches_reuse_stale_holds_total ")), 0.0)


def _evict(worker) -> dict:
    """`glitches evict-cache --worker ADDR --json` as an operator runs it (the cluster's secret signs the call)."""
    done = subprocess.run([sys.executable, "-m", "glitches", "evict-cache", "--worker", worker.address, "--json"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **CLUSTER_ENV})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _wait_overlap(registry: Registry, worker_id: str, chain: list[bytes], done, timeout_s: float = 10.0) -> None:
    """Until done(blocks of `chain` the worker has published) (its held publisher runs every 0.5 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        blocks = registry.held_overlap([worker_id], chain)[worker_id]
        if done(blocks):
            return
        time.sleep(0.1)
    raise AssertionError(f"{worker_id} never published the expected blocks (it shows {blocks} of {len(chain)})")


def test_six_turns_through_the_gateway_equal_no_reuse(live, tokenizer):
    path, oai, client, registry, workers = live["path"], live["oai"], live["client"], live["registry"], live["workers"]
    holder = workers["gpu"] if path == "transfer" else workers["fpga"]  # the worker whose cache this path reads
    root = root_hash(MODEL, DEFAULT_SALT)
    strings = TokenStrings(tokenizer)  # a token id's exact bytes, as the gateway's logprobs give them
    messages, previous, seen = [], [], []
    for turn, user in enumerate(USER, 1):
        messages.append({"role": "user", "content": user})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = list(tokenizer(text)["input_ids"])  # as the scheduler encodes the gateway's rendered prompt
        chain = block_hashes(ids, root)
        evicted = {}
        for kind in EVICT_BEFORE.get(turn, ()):
            evicted[kind] = _evict(workers[kind])
            assert evicted[kind]["evicted_blocks"] > 0, (turn, kind, evicted[kind])  # it held this conversation
            _wait_overlap(registry, workers[kind].worker_id, chain, lambda blocks: blocks == 0)  # routing sees it
        if turn > 1 and not evicted:  # routing sees the holder's blocks of the conversation so far
            _wait_overlap(registry, holder.worker_id, chain, lambda blocks: blocks >= len(previous) // 16)
        stale_hint = turn == STALE_TURN and path != "transfer"  # (transfer never routes by a card's blocks)
        if stale_hint:  # routing believes the card still holds what it evicted: the card must refuse it
            registry.publish_held(workers["fpga"].worker_id, chain[:len(previous) // 16], [])
        paths, stale = _reuse_paths(live["scheduler_http"]), _stale_holds(live["scheduler_http"])
        reply = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=REPLY_TOKENS, temperature=0,
                                            logprobs=True, extra_body={"ignore_eos": True})
        took = {k: v - paths.get(k, 0) for k, v in _reuse_paths(live["scheduler_http"]).items() if v > paths.get(k, 0)}
        plain = client.generate(text, max_tokens=REPLY_TOKENS, ignore_eos=True, prompt_logprobs=True)  # reuse off
        answer = reply.choices[0].message.content
        cached = reply.usage.prompt_tokens_details.cached_tokens
        assert reply.usage.prompt_tokens == len(ids) == plain.prompt_tokens, turn
        assert (answer, reply.usage.completion_tokens) == (plain.text, len(plain.token_ids)), turn
        assert [bytes(t.bytes) for t in reply.choices[0].logprobs.content] == \
            [strings.bytes_of(token) for token in plain.token_ids], turn  # token by token
        assert plain.cached_tokens == 0 and plain.timings.serve_path == "transfer", turn
        # a stale hint costs one refused attempt and a plain placement (no migration); else the evictions
        # were published before the turn and routing never tried the card
        assert _stale_holds(live["scheduler_http"]) == stale + stale_hint, turn
        card_evicted = "fpga" in evicted
        expected = "transfer" if turn == 1 or (card_evicted and path != "transfer") else path
        assert took == ({path: 1, "transfer": 1} if stale_hint else {expected: 1}), (turn, took)
        if stale_hint and path == "transfer-partial":  # the refused attempt's GPU prefill may have cached the prompt
            assert cached % 16 == 0 and cached <= len(ids) // 16 * 16, (turn, cached)
        elif turn == 1 or "gpu" in evicted:
            assert cached == 0, (turn, cached)  # a cold GPU cache
        elif expected == "extend":  # the card reused the previous prompt and all but the reply's last token
            assert cached >= len(previous), (turn, cached, len(previous))
        elif path != "extend":  # the GPU's cache holds the previous turn's prompt (its full blocks)
            assert cached >= len(previous) // 16 * 16 > 0, (turn, cached, len(previous))
        else:  # extend's fallback: the GPU prefilled only turn 1 and the reuse-off references
            assert cached > 0 and cached % 16 == 0, (turn, cached)
        seen.append((turn, len(ids), expected, cached, {k: v["evicted_blocks"] for k, v in evicted.items()}))
        messages.append({"role": "assistant", "content": answer})
        previous = ids
    print(f"\n{path}: (turn, prompt tokens, path, cached tokens, blocks evicted before it) {seen}")
