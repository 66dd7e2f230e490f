"""A worker killed mid-request loses nothing: the request moves and its greedy tokens do not change."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest

from glitches import Client, Completion, GlitchesError, TextChunk
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.cluster.registry import Registry
from tests.conftest import REDIS_URL
from tests.e2e.conftest import assert_idle

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def faulty():
    """A cluster of its own (2 GPU + 2 FPGA workers) whose workers the tests kill."""
    prefix = f"glitches-fault-{uuid.uuid4().hex[:8]}"
    spec = ClusterSpec(gpu_workers=2, fpga_workers=2, port=0, redis_url=REDIS_URL, redis_prefix=prefix,
                       threads_per_worker=1)
    with LocalCluster(spec) as cluster, Client(cluster.address, timeout_s=300) as client:
        yield dict(client=client, registry=Registry(REDIS_URL, prefix), cluster=cluster)


def _pid_of_busy(client: Client, kind: str, timeout_s: float = 30.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = [w for w in client.status().workers if w.kind == kind and w.active_requests and w.healthy]
        if busy:
            return busy[0].pid
        time.sleep(0.02)
    raise AssertionError(f"no busy {kind} worker")


def _collect(stream) -> Completion:
    for item in stream:
        if isinstance(item, Completion):
            return item
    raise AssertionError("no final message")


def _finish_after_killing_its_card(faulty, stream) -> Completion:
    """Read 5 tokens of `stream`, SIGKILL the card decoding it, and return its final message (migrated once)."""
    seen = 0
    for item in stream:
        if isinstance(item, TextChunk):
            seen += len(item.token_ids)
            if seen >= 5:
                break
    os.kill(_pid_of_busy(faulty["client"], "fpga"), signal.SIGKILL)
    final = _collect(stream)
    assert final.migrations == 1
    return final


def test_fpga_killed_mid_decode_continues_with_identical_tokens(faulty, reference):
    prompt = "Write a long list of fruits, one per line:"
    final = _finish_after_killing_its_card(faulty, faulty["client"].stream(prompt, max_tokens=40))
    assert list(final.token_ids) == reference["generate"](list(final.prompt_token_ids), 40)
    assert_idle(faulty["registry"], timeout_s=5)


def test_gpu_killed_during_prefill_is_retried_on_the_other_gpu(faulty, reference):
    long_prompt = "Tell me about GPUs and FPGAs. " * 150  # a prefill of seconds on this machine
    stream = faulty["client"].stream(long_prompt, max_tokens=6)
    result = {}
    consumer = threading.Thread(target=lambda: result.setdefault("final", _collect(stream)))
    consumer.start()
    os.kill(_pid_of_busy(faulty["client"], "gpu"), signal.SIGKILL)
    consumer.join(timeout=300)
    final = result["final"]
    assert final.migrations == 1
    assert list(final.token_ids) == reference["generate"](list(final.prompt_token_ids), 6)
    assert_idle(faulty["registry"], timeout_s=5)


def _constrained_answer_across_a_card_kill(faulty, prompt: str, args: dict) -> Completion:
    """The request's answer when its card is SIGKILLed after 5 tokens: migrated once, and token-identical to
    an undisturbed run of the same request (greedy)."""
    undisturbed = faulty["client"].generate(prompt, **args)
    final = _finish_after_killing_its_card(faulty, faulty["client"].stream(prompt, **args))
    assert final.token_ids == undisturbed.token_ids
    return final


def test_json_schema_request_migrates_with_its_grammar(faulty):
    """The decode worker dies mid-answer: the next worker rebuilds the grammar from the schema and the
    tokens so far, and the answer is token-identical to an undisturbed run (greedy) and valid."""
    import json

    import jsonschema

    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                               "hobbies": {"type": "array", "items": {"type": "string",
                                                                                      "maxLength": 20},
                                                           "maxItems": 4}},
              "required": ["name", "hobbies"], "additionalProperties": False}
    args = dict(max_tokens=120, chat=True, response_format=schema)
    prompt = "Invent a person and their hobbies."
    final = _constrained_answer_across_a_card_kill(faulty, prompt, args)
    jsonschema.validate(json.loads(final.text), schema)
    assert_idle(faulty["registry"], timeout_s=5)


def test_a_required_tool_call_migrates_with_its_grammar(faulty):
    """Tool calling (issue #26) across a migration: the gateway turns tool_choice "required" into a JSON schema
    (glitches.gateway.tools), sent as the request's response_format; the card decoding the call dies mid-call,
    the next device rebuilds the grammar, and the call is token-identical to an undisturbed run and valid."""
    import json

    import jsonschema

    from glitches.gateway.tools import plan_tools

    cluster = faulty["cluster"]
    for name, proc in list(cluster.processes.items()):  # the tests above killed both cards: start them again
        if name.startswith("fpga-") and proc.poll() is not None:
            cluster.restart(name)
    deadline = time.monotonic() + 120
    while sum(w.healthy for w in faulty["client"].status().workers if w.kind == "fpga") < 2:
        assert time.monotonic() < deadline, "the restarted cards did not register"
        time.sleep(0.2)
    city = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}}, "required": ["city"],
            "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": n, "description": d, "parameters": city}}
             for n, d in (("get_weather", "The weather in a city"), ("get_time", "The time in a city"))]
    plan = plan_tools(tools, "required", None)
    args = dict(max_tokens=120, chat=True, response_format=plan.schema())
    prompt = "What is the weather in Paris, Tokyo and Lima?"
    final = _constrained_answer_across_a_card_kill(faulty, prompt, args)
    content, calls = plan.parse(final.text)
    assert content is None and calls
    for call in calls:
        assert call["function"]["name"] in ("get_weather", "get_time")
        jsonschema.validate(json.loads(call["function"]["arguments"]), city)
    assert_idle(faulty["registry"], timeout_s=5)


def test_with_every_gpu_dead_requests_fail_unavailable(faulty):
    for worker in faulty["client"].status().workers:
        if worker.kind == "gpu" and worker.healthy:
            os.kill(worker.pid, signal.SIGKILL)
    killed = time.monotonic()
    with pytest.raises(GlitchesError) as info:
        faulty["client"].generate("Hello", max_tokens=4)
    assert info.value.code == "UNAVAILABLE"
    assert_idle(faulty["registry"], timeout_s=5)
    deadline = killed + 3.5  # heartbeats expire within 3 s of a SIGKILL
    while time.monotonic() < deadline and any(w.healthy for w in faulty["client"].status().workers
                                              if w.kind == "gpu"):
        time.sleep(0.1)
    assert not any(w.healthy for w in faulty["client"].status().workers if w.kind == "gpu")
