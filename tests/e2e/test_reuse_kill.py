"""A worker killed while it holds a conversation's KV (issue #27, Correctness and faults), with real processes:
`glitches up` with 1 GPU worker and 2 emulated cards (SmolLM2-135M), a short heartbeat TTL, and the reuse costs
set so that a card holding the conversation always extends it (as in test_reuse_routing.py).

- The card holding a greedy conversation is SIGKILLed: the next turn, sent at once (the registry still thinks
  it alive), goes elsewhere and gives the tokens of the same turn without reuse and of transformers' generate;
  once its heartbeat expires Redis holds neither its liveness nor its held blocks, and no later request is
  routed to it.
- The only GPU worker is SIGKILLed while a card holds the conversation: the next turns are extended on the
  card with no GPU at all, before and after the GPU's heartbeat expires, with transformers' tokens; a prompt
  nobody holds fails UNAVAILABLE, fast.
- Some heartbeat TTLs later nothing of the killed card is left in Redis (record, id, liveness, held blocks).
- On a cluster of its own with 2 GPU workers (and 1 card), the GPU whose prefix cache holds the conversation
  is SIGKILLed: the next turn is prefilled on the other GPU with the tokens of the turn without reuse.
(A drained or SIGTERMed worker's held blocks go with its registration at once: tests/test_held_withdrawal.py.)"""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis

from glitches import Client
from glitches.errors import GlitchesError
from glitches.kv_plane.prefix_index import DEFAULT_SALT, block_hashes, root_hash
from glitches.services.cluster.registry import DEAD_RECORD_TTL_FACTOR, Registry
from glitches.services.generation import models
from tests.conftest import REDIS_URL
from tests.e2e.conftest import CLUSTER_ENV, start_up, stop_up

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # its own cluster and two kills: about 2 min on 2 cores

PREFIX = "reuse-kill-e2e"
REPLY_TOKENS = 12
HEARTBEAT_TTL_S = 2.5  # workers beat every 1 s; a dead one's keys expire this long after its last beat
EXTEND_ALWAYS = {"GLITCHES_REUSE_GPU_PREFILL_TOKENS_PER_S": "10", "GLITCHES_REUSE_CARD_FORCED_STEP_S": "0.0001"}
ENV = {**CLUSTER_ENV, **EXTEND_ALWAYS, "GLITCHES_HEARTBEAT_TTL_S": str(HEARTBEAT_TTL_S),
       "GLITCHES_QUEUE_WAIT_S": "5"}
USER = ["What is a KV cache? Answer in one short sentence please.",
        " And why does a decode step read all of it for every new token?",
        " Could an FPGA with HBM hold it instead? Say yes or no first.",
        " Then what happens when the card is switched off?"]


@pytest.fixture(scope="module")
def live():
    r = redis.Redis.from_url(REDIS_URL)
    r.delete(*r.keys(f"{PREFIX}:*") or [f"{PREFIX}:none"])  # an earlier run's dead records
    proc, address = start_up(["--port", "0", "--redis-url", REDIS_URL, "--redis-prefix", PREFIX,
                              "--fpga-workers", "2", "--gpu-slots", "2"], env=ENV)
    client = Client(address, timeout_s=600)
    pids = {w.worker_id: w.pid for w in client.status().workers}
    registry = Registry(REDIS_URL, PREFIX)
    yield dict(client=client, registry=registry, pids=pids, redis=r)
    registry.close()
    client.close()
    stop_up(proc, list(pids.values()))
    r.delete(*r.keys(f"{PREFIX}:*") or [f"{PREFIX}:none"])  # the killed workers' records stay (status lists them)
    r.close()


@pytest.fixture
def two_gpus():
    """2 GPU workers and 1 card, costs set so that a GPU's cached prefix decides where the prompt is prefilled
    and a card never extends; first in this module, so it runs (and stops) before `live` starts."""
    prefix = PREFIX + "-gpus"
    r = redis.Redis.from_url(REDIS_URL)
    proc, address = start_up(["--port", "0", "--redis-url", REDIS_URL, "--redis-prefix", prefix, "--gpu-workers", "2",
                              "--fpga-workers", "1", "--gpu-slots", "2"],
                             env={**ENV, "GLITCHES_REUSE_GPU_PREFILL_TOKENS_PER_S": "10",
                                  "GLITCHES_REUSE_CARD_FORCED_STEP_S": "10"})
    client = Client(address, timeout_s=600)
    pids = {w.worker_id: w.pid for w in client.status().workers}
    registry = Registry(REDIS_URL, prefix)
    yield dict(client=client, registry=registry, pids=pids, redis=r, prefix=prefix)
    registry.close()
    client.close()
    stop_up(proc, list(pids.values()))
    r.delete(*r.keys(f"{prefix}:*") or [f"{prefix}:none"])
    r.close()


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _first_turn(tokenizer, text: str) -> list[int]:
    return _ids(tokenizer, tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                         add_generation_prompt=True, tokenize=False))


def _wait_held(registry: Registry, worker_id: str, prompt: list[int], timeout_s: float = 10.0) -> None:
    """Until worker_id has published the leading full blocks of `prompt`'s chain but the last (off its request path)."""
    blocks = len(prompt) // 16 - 1
    chain = block_hashes(prompt, root_hash(models.DEFAULT_MODEL, DEFAULT_SALT))
    deadline = time.monotonic() + timeout_s
    while registry.held_overlap([worker_id], chain).get(worker_id, 0) < blocks:
        assert time.monotonic() < deadline, f"{worker_id} never published {blocks} blocks of the conversation"
        time.sleep(0.1)


def _kill(live, worker_id: str) -> float:
    os.kill(live["pids"][worker_id], signal.SIGKILL)
    return time.monotonic()


def _wait_expired(r: redis.Redis, worker_id: str, killed_at: float, prefix: str = PREFIX) -> float:
    """Seconds from the kill until neither P:alive:{id} nor P:held:{id} is left (the heartbeat TTL, nobody
    renewing it; the last beat was up to one interval before the kill)."""
    while r.exists(f"{prefix}:alive:{worker_id}", f"{prefix}:held:{worker_id}"):
        assert time.monotonic() - killed_at < HEARTBEAT_TTL_S + 5, f"{worker_id}'s keys outlived its heartbeat TTL"
        time.sleep(0.05)
    return time.monotonic() - killed_at


def _turn(client: Client, prompt: list[int], **kwargs):
    return client.generate(prompt, max_tokens=REPLY_TOKENS, ignore_eos=True, **kwargs)


def test_a_killed_gpu_s_cached_conversation_is_prefilled_on_the_other_gpu_unchanged(two_gpus, reference):
    client, registry, r, tokenizer = two_gpus["client"], two_gpus["registry"], two_gpus["redis"], reference["tokenizer"]
    prompt = _first_turn(tokenizer, USER[0])
    first = _turn(client, prompt)
    holder = first.prefill_worker
    prompt = prompt + list(first.token_ids) + _ids(tokenizer, USER[1])
    _wait_held(registry, holder, prompt[:len(first.prompt_token_ids)])  # the GPU caches the prompt it prefilled
    second = _turn(client, prompt)
    assert second.prefill_worker == holder and second.cached_tokens > 0  # prefilled from its prefix cache
    prompt = prompt + list(second.token_ids) + _ids(tokenizer, USER[2])
    _wait_held(registry, holder, prompt[:len(second.prompt_token_ids)])

    killed_at = _kill(two_gpus, holder)
    third = _turn(client, prompt)  # at once: the registry still has it alive and holding
    plain = _turn(client, prompt, prompt_logprobs=True)
    assert holder not in (third.prefill_worker, third.decode_worker, plain.prefill_worker)
    assert third.migrations <= 1 and list(third.token_ids) == list(plain.token_ids)
    greedy = reference["generate"](prompt, REPLY_TOKENS)
    assert list(third.token_ids[:len(greedy)]) == greedy
    expiry_s = _wait_expired(r, holder, killed_at, two_gpus["prefix"])
    later = _turn(client, prompt + list(third.token_ids))
    assert holder not in (later.prefill_worker, later.decode_worker) and later.migrations == 0
    print(f"GPU {holder} killed: the next turn moved {third.migrations} time(s), on {third.prefill_worker}; "
          f"its keys were gone {expiry_s:.1f} s after the kill")


def test_a_killed_card_s_conversation_continues_elsewhere_unchanged_and_its_keys_expire(live, reference):
    client, registry, r, tokenizer = live["client"], live["registry"], live["redis"], reference["tokenizer"]
    prompt = _first_turn(tokenizer, USER[0])
    first = _turn(client, prompt)
    holder = first.decode_worker
    assert first.decode_device == "fpga", first.decode_worker
    prompt = prompt + list(first.token_ids) + _ids(tokenizer, USER[1])
    _wait_held(registry, holder, prompt)
    second = _turn(client, prompt)
    assert (second.timings.serve_path, second.decode_worker) == ("extend", holder)  # served from its held KV
    prompt = prompt + list(second.token_ids) + _ids(tokenizer, USER[2])
    _wait_held(registry, holder, prompt)
    assert r.scard(f"{PREFIX}:held:{holder}") > 0

    killed_at = _kill(live, holder)
    live["dead_card"] = (holder, killed_at)
    third = _turn(client, prompt)  # at once: the holder still looks alive and holding, until its TTL runs out
    plain = _turn(client, prompt, prompt_logprobs=True)  # no cache reads: the turn as without reuse
    assert holder not in (third.decode_worker, third.prefill_worker, plain.decode_worker, plain.prefill_worker)
    assert third.migrations <= 1 and plain.migrations <= 1  # routed to the dead holder at most once, then moved
    assert list(third.token_ids) == list(plain.token_ids)
    greedy = reference["generate"](prompt, REPLY_TOKENS)  # stops at EOS; the service ignores it here
    assert list(third.token_ids[:len(greedy)]) == greedy

    expiry_s = _wait_expired(r, holder, killed_at)
    print(f"card {holder} killed: the next turn moved {third.migrations} time(s), to {third.decode_worker} "
          f"({third.timings.serve_path}); its keys were gone {expiry_s:.1f} s after the kill")
    assert not r.exists(f"{PREFIX}:held:{holder}", f"{PREFIX}:alive:{holder}")
    assert not registry.is_registered(holder)
    listed = {w.worker_id: w.healthy for w in client.status().workers}
    assert listed.get(holder) in (None, False)  # listed dead, or not at all
    prompt = prompt + list(third.token_ids) + _ids(tokenizer, USER[3])
    for reuse in ({}, dict(prompt_logprobs=True)):  # after expiry routing never picks it, nothing has to move
        later = _turn(client, prompt, **reuse)
        assert holder not in (later.decode_worker, later.prefill_worker) and later.migrations == 0


def test_with_its_gpu_killed_a_card_still_extends_the_conversation_it_holds(live, reference):
    client, registry, r, tokenizer = live["client"], live["registry"], live["redis"], reference["tokenizer"]
    cards = [w.worker_id for w in client.status().workers if w.kind == "fpga" and w.healthy]
    gpu = next(w.worker_id for w in client.status().workers if w.kind == "gpu")
    assert cards, "no live card left"
    prompt = _first_turn(tokenizer, "Name three colours of the rainbow, briefly.")
    first = _turn(client, prompt)
    holder = first.decode_worker
    assert holder in cards
    prompt = prompt + list(first.token_ids) + _ids(tokenizer, " And three more, please?")
    _wait_held(registry, holder, prompt)

    killed_at = _kill(live, gpu)
    second = _turn(client, prompt)  # the GPU still looks alive: not needed on the extend path anyway
    assert (second.timings.serve_path, second.decode_worker, second.prefill_worker) == ("extend", holder, "")
    assert list(second.token_ids[:len(g := reference["generate"](prompt, REPLY_TOKENS))]) == g
    _wait_expired(r, gpu, killed_at)  # its prefix cache's hints are gone with it
    assert not registry.is_registered(gpu)

    prompt = prompt + list(second.token_ids) + _ids(tokenizer, " Which one is the warmest?")
    _wait_held(registry, holder, prompt)
    third = _turn(client, prompt)  # no GPU registered at all now: the card alone serves the turn
    assert (third.timings.serve_path, third.decode_worker, third.prefill_worker, third.timings.kv_bytes) == \
        ("extend", holder, "", 0)
    assert list(third.token_ids[:len(g := reference["generate"](prompt, REPLY_TOKENS))]) == g

    started = time.monotonic()
    with pytest.raises(GlitchesError) as error:  # a prompt nobody holds needs a prefill: no GPU, a clean refusal
        # (no chat template: its system prompt's blocks are held, and a card would extend them)
        _turn(client, _ids(tokenizer, "A prompt that no card has ever seen, long enough for two blocks of "
                                      "sixteen tokens each: one two three four five six seven eight."))
    assert error.value.code == "UNAVAILABLE" and time.monotonic() - started < 10, error.value


def test_nothing_of_a_killed_worker_stays_in_redis(live):
    """Its record outlives the heartbeat DEAD_RECORD_TTL_FACTOR TTLs (status lists it dead), then it goes, and
    its id leaves P:workers the next time the scheduler lists the workers."""
    card, killed_at = live["dead_card"]
    deadline = killed_at + HEARTBEAT_TTL_S * (DEAD_RECORD_TTL_FACTOR + 1) + 5
    while card in {w.worker_id for w in live["client"].status().workers}:
        assert time.monotonic() < deadline, f"{card} is still listed"
        time.sleep(0.5)
    r = live["redis"]
    assert [k for k in r.scan_iter(f"{PREFIX}:*") if card.encode() in k] == []
    assert not r.sismember(f"{PREFIX}:workers", card) and not r.hexists(f"{PREFIX}:active", card)
