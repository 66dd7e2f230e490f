"""KV-reuse routing through a live cluster (`glitches up`: 1 GPU worker, 1 emulated card, SmolLM2-135M, real
processes): a 3-turn greedy conversation whose turns 2-3 the card serves from the KV it kept (the extend
path: no GPU prefill, no transfer) gives the tokens of the same turns served without reuse and of
transformers' generate; a stale hint (the registry says the card holds a prefix it never saw) costs a
refusal and a normal placement, never a wrong token or a migration.

The routing's costs are set (scheduler environment) so that extending always beats a GPU prefill; the
choice itself is tested with known answers in tests/test_placement_reuse.py."""

from __future__ import annotations

import time

import pytest

from glitches import Client
from glitches.kv_plane.prefix_index import DEFAULT_SALT, block_hashes, root_hash
from glitches.services.cluster.registry import Registry
from glitches.services.generation import models
from tests.conftest import REDIS_URL
from tests.e2e.conftest import CLUSTER_ENV, metric, start_up, stop_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # its own cluster: about 90 s on 2 cores

USER = ["What is a KV cache? Answer in one short sentence please.",
        " And why does a decode step read all of it for every new token?",
        " Could an FPGA with HBM hold it instead? Say yes or no first."]
REPLY_TOKENS = 12
PREFIX = "reuse-routing-e2e"
EXTEND_ALWAYS = {"GLITCHES_REUSE_GPU_PREFILL_TOKENS_PER_S": "10", "GLITCHES_REUSE_CARD_FORCED_STEP_S": "0.0001"}


@pytest.fixture(scope="module")
def live():
    proc, address = start_up(["--port", "0", "--redis-url", REDIS_URL, "--redis-prefix", PREFIX,
                              "--fpga-workers", "1", "--gpu-slots", "2"], env={**CLUSTER_ENV, **EXTEND_ALWAYS})
    client = Client(address, timeout_s=600)
    pids = [w.pid for w in client.status().workers]
    registry = Registry(REDIS_URL, PREFIX)
    yield dict(client=client, registry=registry, scheduler_http=proc.http_addresses["scheduler"])
    registry.close()
    client.close()
    stop_up(proc, pids)


def _wait_held(registry: Registry, prompt: list[int], blocks: int, timeout_s: float = 10.0) -> None:
    """Until the card has published at least `blocks` leading blocks of `prompt`'s chain (off its request path)."""
    chain = block_hashes(prompt, root_hash(models.DEFAULT_MODEL, DEFAULT_SALT))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if registry.held_overlap(["fpga-0"], chain).get("fpga-0", 0) >= blocks:
            return
        time.sleep(0.1)
    raise AssertionError(f"fpga-0 never published {blocks} blocks of the conversation")


def test_turns_two_and_three_extend_on_the_card_and_equal_no_reuse(live, reference):
    client, registry, tokenizer = live["client"], live["registry"], reference["tokenizer"]
    first = tokenizer.apply_chat_template([{"role": "user", "content": USER[0]}], add_generation_prompt=True,
                                          tokenize=False)
    prompt = tokenizer(first, add_special_tokens=False)["input_ids"]
    for turn, text in enumerate(USER, 1):
        if turn > 1:  # the history as token ids: the card holds exactly those (a re-rendered one may differ)
            prompt = prompt + tokenizer(text, add_special_tokens=False)["input_ids"]
        if turn > 1:
            _wait_held(registry, prompt, len(prompt) // 16 - 1)
        reused = client.generate(prompt, max_tokens=REPLY_TOKENS, ignore_eos=True)
        plain = client.generate(prompt, max_tokens=REPLY_TOKENS, ignore_eos=True, prompt_logprobs=True)  # no reuse
        expected_path = "transfer" if turn == 1 else "extend"
        assert (reused.timings.serve_path, reused.decode_device, plain.timings.serve_path) == \
            (expected_path, "fpga", "transfer"), turn
        assert list(reused.token_ids) == list(plain.token_ids)
        greedy = reference["generate"](prompt, REPLY_TOKENS)  # stops at EOS; the service ignores it here
        assert list(reused.token_ids[:len(greedy)]) == greedy
        if turn > 1:  # no GPU, no transfer; the card held the previous prompt and its reply but the last token
            assert (reused.prefill_worker, reused.timings.kv_bytes, reused.migrations) == ("", 0, 0)
            assert reused.timings.reused_tokens >= (len(prompt) // 16 - 1) * 16
            assert reused.cached_tokens == reused.timings.reused_tokens
        prompt = prompt + list(reused.token_ids)


def test_a_stale_hint_is_refused_and_placed_normally(live, reference):
    client, registry, tokenizer = live["client"], live["registry"], reference["tokenizer"]
    prompt = tokenizer("A prompt the card has never seen, long enough for a few blocks of sixteen tokens: "
                       "one two three four five six seven eight nine ten eleven twelve.",
                       add_special_tokens=False)["input_ids"]
    registry.publish_held("fpga-0", block_hashes(prompt, root_hash(models.DEFAULT_MODEL, DEFAULT_SALT)), [])
    stale = metric(live["scheduler_http"], "glitches_reuse_stale_holds_total")
    done = client.generate(prompt, max_tokens=REPLY_TOKENS, ignore_eos=True)
    assert metric(live["scheduler_http"], "glitches_reuse_stale_holds_total") == stale + 1  # the card refused
    assert (done.timings.serve_path, done.migrations, done.decode_device) == ("transfer", 0, "fpga")
    greedy = reference["generate"](prompt, REPLY_TOKENS)
    assert list(done.token_ids[:len(greedy)]) == greedy
