"""The gateway in-process over a fake scheduler client: n > 1 and lists of prompts (choice indices,
seeds, usage), prompts as token ids, echo with max_tokens 0, and OpenAI's logprobs shapes for
completions and chat, streamed and not (token texts from SmolLM2's real tokenizer)."""

from __future__ import annotations

import asyncio
import json

import pytest
from starlette.testclient import TestClient

from glitches.gateway.app import Gateway, create_app
from glitches.gateway.chat import ChatTemplate
from glitches.gateway.schemas import Limits
from glitches.types import Completion, Logprob, TextChunk, TokenLogprob
from glitches.services.generation import models
from tests.gateway_helpers import TIMINGS, FakeClient

# " Paris" = 7042, "." = 30 in SmolLM2's vocabulary; the prompt "The capital" = 504, 3575
PROMPT_IDS = (504, 3575)
RECORDS = (TokenLogprob(7042, -0.25, (Logprob(7042, -0.25), Logprob(30, -2.5))),
           TokenLogprob(30, -0.5, (Logprob(30, -0.5), Logprob(7042, -3.0))))
PROMPT_RECORDS = (TokenLogprob(3575, -11.5, (Logprob(30, -1.0), Logprob(3575, -11.5))),)


def _final() -> Completion:
    return Completion("rid", " Paris.", (7042, 30), PROMPT_IDS, "length", "fpga", "fpga-0", "gpu-0", 2, 2, TIMINGS,
                      logprobs=RECORDS, prompt_logprobs=PROMPT_RECORDS)


ITEMS = [TextChunk(" Paris", (7042,), RECORDS[:1], PROMPT_RECORDS, PROMPT_IDS), TextChunk(".", (30,), RECORDS[1:]),
         _final()]


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer(models.resolve_model(models.DEFAULT_MODEL))


@pytest.fixture
def app(tokenizer):
    gateway = Gateway("127.0.0.1:1", ChatTemplate(tokenizer), "tiny", limits=Limits(max_stop_strings=16))
    with TestClient(create_app(gateway), raise_server_exceptions=False) as http:
        gateway.client = FakeClient(ITEMS)
        yield gateway, http


def _events(text: str) -> list:
    return [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]


def test_lists_of_prompts_times_n_are_indexed_seeded_and_summed(app):
    gateway, http = app
    reply = http.post("/v1/completions", json={"model": "tiny", "prompt": [[504, 3575], [504]], "n": 2, "seed": 7,
                                               "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert [(p, k["seed"]) for p, k in gateway.client.calls] == [([504, 3575], 7), ([504, 3575], 8), ([504], 7),
                                                                 ([504], 8)]
    # prompt tokens once per prompt (the fake reports 2 for each), completion tokens of every choice
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 8, "total_tokens": 12,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    assert gateway.client.closed == 4


def test_completion_logprobs_with_echo(app):
    gateway, http = app
    body = http.post("/v1/completions", json={"model": "tiny", "prompt": "The capital", "max_tokens": 2,
                                              "echo": True, "logprobs": 2}).json()
    choice = body["choices"][0]
    assert choice["text"] == "The capital Paris."
    assert choice["logprobs"] == {"tokens": ["The", " capital", " Paris", "."], "token_logprobs": [None, -11.5, -0.25, -0.5],
                                  "top_logprobs": [None, {".": -1.0, " capital": -11.5}, {" Paris": -0.25, ".": -2.5},
                                                   {".": -0.5, " Paris": -3.0}],
                                  "text_offset": [0, 3, 11, 17]}
    _, kwargs = gateway.client.calls[0]
    assert kwargs["logprobs"] and kwargs["top_logprobs"] == 2 and kwargs["prompt_logprobs"]


def test_max_tokens_zero_with_echo_returns_only_the_prompt(app):
    gateway, http = app
    body = http.post("/v1/completions", json={"model": "tiny", "prompt": [504, 3575], "max_tokens": 0,
                                              "echo": True, "logprobs": 0}).json()
    assert body["choices"][0]["text"] == "The capital"
    assert body["choices"][0]["logprobs"]["token_logprobs"] == [None, -11.5]
    assert body["usage"]["completion_tokens"] == 0
    assert gateway.client.calls[0][1]["max_tokens"] == 1  # one token is generated and dropped
    events = _events(http.post("/v1/completions", json={"model": "tiny", "prompt": [504, 3575], "max_tokens": 0,
                                                        "echo": True, "stream": True}).text)
    assert "".join(e["choices"][0]["text"] for e in events) == "The capital"


def test_completion_logprobs_stream_with_running_offsets(app):
    _, http = app
    events = _events(http.post("/v1/completions", json={"model": "tiny", "prompt": "The capital", "max_tokens": 2,
                                                        "logprobs": 1, "stream": True}).text)
    pieces = [e["choices"][0]["logprobs"] for e in events if e["choices"][0]["logprobs"]]
    assert [p["tokens"] for p in pieces] == [[" Paris"], ["."]]
    assert [p["text_offset"] for p in pieces] == [[0], [6]]


def test_chat_logprobs_shape_streamed_and_not(app):
    gateway, http = app
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 1}
    body = http.post("/v1/chat/completions", json=ask).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert content[0] == {"token": " Paris", "logprob": -0.25, "bytes": list(b" Paris"),
                          "top_logprobs": [{"token": " Paris", "logprob": -0.25, "bytes": list(b" Paris")},
                                           {"token": ".", "logprob": -2.5, "bytes": [46]}]}
    assert body["choices"][0]["logprobs"]["refusal"] is None
    events = _events(http.post("/v1/chat/completions", json={**ask, "stream": True, "n": 2}).text)
    for index in (0, 1):
        mine = [e["choices"][0] for e in events if e["choices"][0]["index"] == index]
        assert [t["token"] for c in mine if c["logprobs"] for t in c["logprobs"]["content"]] == [" Paris", "."]
        assert mine[-1]["finish_reason"] == "length"


@pytest.mark.parametrize("body, param", [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"stop": [str(i) for i in range(17)]}, "stop"),
])
def test_chat_limits(app, body, param):
    gateway, http = app
    reply = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "a"}],
                                                    **body})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == param
    assert gateway.client.calls == []


def test_ignore_eos_and_min_tokens_reach_the_sdk(app):
    gateway, http = app
    http.post("/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 9, "ignore_eos": True,
                                       "min_tokens": 4})
    assert gateway.client.calls[0][1]["ignore_eos"] is True and gateway.client.calls[0][1]["min_tokens"] == 4


class _CountingClient(FakeClient):
    """FakeClient whose streams take a moment, counting how many are open at once."""

    def __init__(self, items):
        super().__init__(items)
        self.open = self.most_open = 0

    def stream(self, prompt, **kwargs):
        inner = super().stream(prompt, **kwargs)

        async def gen():
            self.open += 1
            self.most_open = max(self.most_open, self.open)
            try:
                async for item in inner:
                    await asyncio.sleep(0.002)
                    yield item
            finally:
                self.open -= 1
        return gen()


def test_more_choices_than_run_at_once_wait_for_each_other(tokenizer):
    """n above the scheduler's admission used to be refused on an idle cluster; now at most
    --max-choices-in-flight run at once and the response has every choice."""
    gateway = Gateway("127.0.0.1:1", ChatTemplate(tokenizer), "tiny", limits=Limits(max_choices_in_flight=4))
    with TestClient(create_app(gateway), raise_server_exceptions=False) as http:
        gateway.client = _CountingClient(ITEMS)
        reply = http.post("/v1/completions", json={"model": "tiny", "prompt": [504, 3575], "n": 40, "max_tokens": 2})
        assert reply.status_code == 200, reply.text
        assert [c["index"] for c in reply.json()["choices"]] == list(range(40))
        assert len(gateway.client.calls) == 40 and gateway.client.most_open == 4 and gateway.client.open == 0
        streamed = http.post("/v1/chat/completions", json={"model": "tiny", "n": 5, "stream": True, "max_tokens": 2,
                                                           "messages": [{"role": "user", "content": "hi"}]})
        assert streamed.status_code == 400 and streamed.json()["error"]["param"] == "n"
        assert "--max-choices-in-flight" in streamed.json()["error"]["message"] and len(gateway.client.calls) == 40
        within = http.post("/v1/chat/completions", json={"model": "tiny", "n": 4, "stream": True, "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "hi"}]})
        assert within.status_code == 200 and within.text.rstrip().endswith("data: [DONE]")
