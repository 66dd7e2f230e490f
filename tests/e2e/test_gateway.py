"""The OpenAI-compatible gateway (`glitches gateway`, a process) in front of the session's cluster,
driven by the official `openai` client: completions and chat, streaming and not, usage, stop, seed,
error statuses, and a client that hangs up mid-stream. (`glitches up --gateway-port` is checked
offline in tests/test_gateway_up.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from glitches.cluster import free_port
from glitches.services.generation import models
from tests.e2e.conftest import assert_idle
from tests.dies_with_pytest import dies_with_pytest

pytestmark = pytest.mark.e2e
MODEL = models.DEFAULT_MODEL


@pytest.fixture(scope="module")
def gw(cluster):
    port = free_port()
    proc = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "glitches", "gateway", "--scheduler", cluster["address"],
                             "--port", str(port)], env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the gateway did not start: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    base = f"http://127.0.0.1:{port}/v1"
    oai = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
    yield dict(oai=oai, sdk=cluster["client"], base=base, registry=cluster["registry"])
    proc.terminate()
    assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn shuts down, then re-raises SIGTERM


def test_models(gw):
    assert [m.id for m in gw["oai"].models.list()] == [MODEL]


def test_completion_matches_the_sdk_streaming_and_not(gw):
    reference = gw["sdk"].generate("The capital of France is", max_tokens=8)
    reply = gw["oai"].completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                         temperature=0)
    assert reply.choices[0].text == reference.text
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (reference.prompt_tokens,
                                                                          reference.completion_tokens)
    chunks = list(gw["oai"].completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                               temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == reference.text
    assert chunks[-1].usage.total_tokens == reference.prompt_tokens + reference.completion_tokens
    assert_idle(gw["registry"])


def test_n_above_the_schedulers_admission_is_answered(gw):
    """40 choices: more than the scheduler admits at once (24 running + 8 queued); they run 16 at a time."""
    reply = gw["oai"].chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                              max_tokens=2, n=40, temperature=0.8, seed=1)
    assert sorted(c.index for c in reply.choices) == list(range(40))
    assert all(c.finish_reason in ("stop", "length") for c in reply.choices) and reply.usage.completion_tokens <= 80
    assert_idle(gw["registry"])


def test_chat_renders_the_whole_conversation(gw):
    tokenizer = models.load_tokenizer(models.resolve_model(MODEL))
    messages = [{"role": "system", "content": "You answer in one word."},
                {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another one?"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    reference = gw["sdk"].generate(rendered, max_tokens=10)
    assert list(reference.prompt_token_ids) == list(ids)  # the scheduler tokenizes the template's text as such
    reply = gw["oai"].chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=10,
                                              temperature=0)
    assert reply.choices[0].message.content == reference.text
    assert reply.usage.prompt_tokens == len(ids)
    chunks = list(gw["oai"].chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0,
                                                    stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reference.text
    assert chunks[-1].usage.completion_tokens == reference.completion_tokens


def test_stop_and_seed(gw):
    full = gw["oai"].completions.create(model=MODEL, prompt="One, two, three, four,", max_tokens=12,
                                        temperature=0).choices[0].text
    cut = full.strip()[:3]
    stopped = gw["oai"].completions.create(model=MODEL, prompt="One, two, three, four,", max_tokens=12,
                                           temperature=0, stop=[cut, "zzz"])
    assert stopped.choices[0].finish_reason == "stop" and cut not in stopped.choices[0].text
    sampled = [gw["oai"].completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8, temperature=1.0,
                                            top_p=0.9, seed=7).choices[0].text for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_errors(gw):
    oai = gw["oai"]
    with pytest.raises(openai.BadRequestError, match="greater than or equal to 1"):
        oai.completions.create(model=MODEL, prompt="Hi", n=0)
    with pytest.raises(openai.NotFoundError, match="unknown model"):  # OpenAI's model_not_found
        oai.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="limit"):
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=10**6)
    with pytest.raises(openai.BadRequestError, match="context"):
        oai.completions.create(model=MODEL, prompt="word " * 9000, max_tokens=2, stream=True)
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4o")
    raw = httpx.post(gw["base"] + "/chat/completions", content=b"{not json", timeout=30)
    assert raw.status_code == 400 and raw.json()["error"]["type"] == "invalid_request_error"
    assert_idle(gw["registry"])


def test_client_going_away_mid_stream_frees_the_slots(gw):
    body = {"model": MODEL, "prompt": "Tell me a long story.", "max_tokens": 200, "stream": True}
    with httpx.stream("POST", gw["base"] + "/completions", json=body, timeout=300) as reply:
        for line in reply.iter_lines():
            if line.startswith("data: {"):
                break  # one chunk, then hang up
    assert_idle(gw["registry"], timeout_s=30)


# --- structured output, OpenAI's error contract, non-streaming cancel (issue 13 / 14) --------------------------

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "city": {"type": "string", "maxLength": 30}},
          "required": ["name", "age", "city"], "additionalProperties": False}


def test_json_mode_answers_parse_and_json_schema_answers_validate(gw):
    """Greedy and sampled, streamed and not, chat and completions (the 20 + 20 prompt run is
    benchmarks/json_mode.py, figures in docs/benchmarks.md)."""
    import json

    import jsonschema

    oai = gw["oai"]
    reply = oai.chat.completions.create(
        model=MODEL, max_tokens=160, temperature=0, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give an apple as a JSON object with exactly the keys \"name\" "
                                              "and \"color\", nothing else."}])
    assert isinstance(json.loads(reply.choices[0].message.content), dict), reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    reply = oai.completions.create(
        model=MODEL, prompt="A person, as JSON:", max_tokens=120, temperature=0.8, seed=2,
        extra_body={"response_format": {"type": "json_schema",
                                        "json_schema": {"name": "person", "schema": PERSON, "strict": True}}})
    jsonschema.validate(json.loads(reply.choices[0].text), PERSON)
    chunks = list(oai.chat.completions.create(
        model=MODEL, max_tokens=120, temperature=0, stream=True,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
        messages=[{"role": "user", "content": "Invent a person."}]))
    jsonschema.validate(json.loads("".join(c.choices[0].delta.content or "" for c in chunks if c.choices)), PERSON)
    assert_idle(gw["registry"])


def test_openai_error_contract(gw):
    oai = gw["oai"]
    chat = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.NotFoundError) as caught:
        oai.chat.completions.create(model="gpt-4o", messages=chat, max_tokens=2)
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
    with pytest.raises(openai.NotFoundError) as caught:
        oai.completions.create(model="gpt-4o", prompt="Hi", max_tokens=2, stream=True)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 9000}],
                                    max_tokens=2)
    assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "messages")
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=MODEL, prompt="word " * 9000, max_tokens=2)
    assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "prompt")
    with pytest.raises(openai.BadRequestError) as caught:
        oai.completions.create(model=MODEL, prompt="Hi", max_tokens=10**6)
    assert caught.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=MODEL, messages=chat, max_completion_tokens=10**6)
    assert caught.value.param == "max_completion_tokens"
    with pytest.raises(openai.BadRequestError) as caught:
        oai.chat.completions.create(model=MODEL, messages=chat, max_tokens=2, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}})
    assert caught.value.param == "response_format"
    for field, value in [("tool_choice", "required"), ("logit_bias", {"1": 5}), ("reasoning_effort", "low")]:
        with pytest.raises(openai.BadRequestError) as caught:
            oai.chat.completions.create(model=MODEL, messages=chat, max_tokens=2, **{field: value})
        assert caught.value.param == field and field in caught.value.message
    from glitches import InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as sdk_error:  # the SDK sees the same field and reason
        gw["sdk"].generate("Hi", max_tokens=2, model="gpt-4o")
    assert (sdk_error.value.field, sdk_error.value.reason) == ("model", "model_not_found")
    with pytest.raises(InvalidArgumentError) as sdk_error:
        gw["sdk"].generate("Hi", max_tokens=2, response_format={"type": "object", "required": 5})
    assert sdk_error.value.field == "response_format"
    assert httpx.get(gw["base"].removesuffix("/v1") + "/health", timeout=10).status_code == 200
    metrics = httpx.get(gw["base"].removesuffix("/v1") + "/metrics", timeout=10).text
    assert 'glitches_gateway_requests_total{route="/v1/chat/completions",status="404"}' in metrics
    assert_idle(gw["registry"])


def test_non_streaming_client_going_away_cancels_its_request(gw):
    """The client gives up (read timeout) mid-generation: the scheduler releases the claims within ~2 s."""
    import threading

    body = {"model": MODEL, "prompt": "Counting to a thousand: 1, 2, 3, 4, 5,", "max_tokens": 400, "temperature": 0}
    outcome = {}

    def request():
        try:
            httpx.post(gw["base"] + "/completions", json=body, timeout=httpx.Timeout(30, read=4))
            outcome["error"] = None
        except httpx.ReadTimeout as error:
            outcome["error"] = error

    thread = threading.Thread(target=request)
    thread.start()
    deadline = time.monotonic() + 30
    while not gw["registry"].claims() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw["registry"].claims(), "the request never held claims"
    thread.join()
    assert outcome["error"] is not None  # 400 tokens take far more than 4 s here: it was mid-generation
    gone = time.monotonic()
    assert_idle(gw["registry"], timeout_s=3)
    print(f"claims released {time.monotonic() - gone:.2f} s after the client disconnected")
