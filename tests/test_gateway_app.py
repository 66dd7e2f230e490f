"""The gateway app in-process (starlette's TestClient) over a fake scheduler client: request
validation, OpenAI's shapes, SSE framing, and the HTTP status of every gRPC status."""

from __future__ import annotations

import json

import grpc
import pytest
from starlette.testclient import TestClient

from glitches.errors import error_for
from glitches.gateway.app import Gateway, create_app
from glitches.gateway.chat import ChatTemplate
from glitches.types import TextChunk
from tests.gateway_helpers import FakeClient, completion

class FakeTokenizer:
    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        if any(m["role"] == "assistant" and not m["content"] for m in messages):
            raise ValueError("empty assistant turn")
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"


@pytest.fixture
def app():
    gateway = Gateway("127.0.0.1:1", ChatTemplate(FakeTokenizer()), "tiny")
    with TestClient(create_app(gateway), raise_server_exceptions=False) as http:
        gateway.client = FakeClient([TextChunk("Hello", (1,)), TextChunk(" world", (2,)), completion()])
        yield gateway, http


def test_completion_shape_and_sampling_arguments(app):
    gateway, http = app
    reply = http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 5, "seed": 3,
                                               "stop": "x", "temperature": 0})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "Hello world"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                             "prompt_tokens_details": {"cached_tokens": 0}}
    prompt, kwargs = gateway.client.calls[0]
    assert prompt == "Hi" and kwargs == dict(chat=False, max_tokens=5, temperature=0.0, top_p=1.0, seed=3,
                                             stop=("x",), model="tiny", ignore_eos=False, min_tokens=0,
                                             logprobs=False, top_logprobs=0, prompt_logprobs=False)
    assert gateway.client.closed == 1


def test_chat_renders_the_template_and_defaults(app):
    gateway, http = app
    reply = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Hello world"}
    prompt, kwargs = gateway.client.calls[0]
    assert prompt == "<system>Be brief.<user>Hi<assistant>"
    assert kwargs["max_tokens"] == 256 and kwargs["temperature"] == 1.0  # OpenAI's default temperature


def _events(text: str) -> list:
    assert text.endswith("data: [DONE]\n\n")
    return [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: {")]


def test_chat_stream_is_sse_with_usage_last(app):
    _, http = app
    reply = http.post("/v1/chat/completions", json={"model": "tiny", "stream": True, "max_completion_tokens": 4,
                                                    "stream_options": {"include_usage": True},
                                                    "messages": [{"role": "user", "content": "Hi"}]})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = _events(reply.text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "Hello world"
    assert events[-2]["choices"][0]["finish_reason"] == "length"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 5


def test_error_after_the_first_token_is_an_error_event(app):
    gateway, http = app
    gateway.client.items = [TextChunk("Hel", (1,)), error_for(grpc.StatusCode.UNAVAILABLE, "decode worker went away")]
    reply = http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "stream": True})
    assert reply.status_code == 200
    events = _events(reply.text)
    assert events[0]["choices"][0]["text"] == "Hel"
    assert events[-1]["error"]["message"] == "decode worker went away"
    assert gateway.client.closed == 1


@pytest.mark.parametrize("code, status", [("INVALID_ARGUMENT", 400), ("UNAUTHENTICATED", 401),
                                          ("PERMISSION_DENIED", 403), ("NOT_FOUND", 404),
                                          ("RESOURCE_EXHAUSTED", 429), ("UNAVAILABLE", 503),
                                          ("DEADLINE_EXCEEDED", 504), ("INTERNAL", 500)])
@pytest.mark.parametrize("stream", [False, True])
def test_grpc_status_maps_to_http_status(app, code, status, stream):
    gateway, http = app
    gateway.client.items = [error_for(grpc.StatusCode[code], "what to change")]
    reply = http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi", "stream": stream})
    assert reply.status_code == status
    assert reply.json()["error"]["message"] == "what to change"
    assert reply.json()["error"]["code"] == code.lower()


@pytest.mark.parametrize("body, param", [
    ({"model": "tiny", "prompt": "Hi", "n": 0}, "n"),
    ({"model": "tiny", "prompt": ["a", "b"], "n": 200}, "n"),
    ({"model": "tiny", "prompt": "Hi", "temperature": 2.5}, "temperature"),
    ({"model": "tiny", "prompt": "Hi", "top_p": 0}, "top_p"),
    ({"model": "tiny", "prompt": "Hi", "max_tokens": 0}, "max_tokens"),
    ({"model": "tiny", "prompt": "Hi", "max_tokens": 2**40}, "max_tokens"),
    ({"model": "tiny", "prompt": "Hi", "max_tokens": "5"}, "max_tokens"),
    ({"model": "tiny", "prompt": "Hi", "seed": -1}, "seed"),
    ({"model": "tiny", "prompt": "Hi", "stop": [str(i) for i in range(17)]}, "stop"),
    ({"model": "tiny", "prompt": "Hi", "stop": [""]}, "stop"),
    ({"model": "tiny", "prompt": []}, "prompt"),
    ({"model": "tiny", "prompt": [[]]}, "prompt"),
    ({"model": "tiny", "prompt": [1, "a"]}, "prompt"),
    ({"model": "tiny", "prompt": "Hi", "logprobs": 6}, "logprobs"),
    ({"model": "tiny", "prompt": "Hi", "logprobs": -1}, "logprobs"),
    ({"model": "tiny", "prompt": "Hi", "min_tokens": 9, "max_tokens": 4}, "min_tokens"),
    ({"prompt": "Hi"}, "model"),
])
def test_bad_completion_requests_are_400_naming_the_field(app, body, param):
    gateway, http = app
    reply = http.post("/v1/completions", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert reply.json()["error"]["param"].startswith(param)
    assert gateway.client.calls == []


@pytest.mark.parametrize("raw", [b"{", b"[]", b"\xff\xfe{}", b'{"model": "tiny", "prompt": "\\ud800"}',
                                 b'{"model": "tiny", "prompt": "Hi", "temperature": NaN}', b"[" * 100000])
def test_malformed_bodies_are_400(app, raw):
    _, http = app
    reply = http.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and "error" in reply.json()


def test_chat_errors(app):
    _, http = app
    assert http.post("/v1/chat/completions", json={"model": "tiny", "messages": []}).status_code == 400
    bad_role = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "tool",
                                                                                      "content": "x"}]})
    assert bad_role.status_code == 400 and bad_role.json()["error"]["param"].startswith("messages")
    refused = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": None}]})
    assert refused.status_code == 400 and "chat template" in refused.json()["error"]["message"]


def test_body_limit_unknown_route_and_method(app):
    gateway, http = app
    gateway.max_body_bytes = 100
    assert http.post("/v1/completions", json={"model": "tiny", "prompt": "x" * 200}).status_code == 413
    missing = http.get("/v1/nothing")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert http.get("/v1/completions").status_code == 405


def test_models(app):
    gateway, http = app
    assert http.get("/v1/models").json()["data"][0]["id"] == "tiny"
    assert http.get("/v1/models/tiny").json()["id"] == "tiny"
    assert http.get("/v1/models/other").status_code == 404
    gateway.client.status_error = error_for(grpc.StatusCode.UNAVAILABLE, "no scheduler")
    assert http.get("/v1/models").status_code == 503


def test_unreachable_scheduler_is_503():
    """The real AsyncClient against a port nobody listens on."""
    gateway = Gateway("127.0.0.1:1", None, "tiny", timeout_s=5)
    with TestClient(create_app(gateway)) as http:
        reply = http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi"})
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "unavailable"
        assert http.get("/v1/models").status_code == 503


# --- OpenAI's error contract, structured output, /health, /metrics ----------------------------------------

@pytest.mark.parametrize("route, field, value", [
    ("/v1/chat/completions", "tools", [{"type": "retrieval"}]),  # param: tools.0.type
    ("/v1/chat/completions", "tool_choice", "required"),  # without tools
    ("/v1/chat/completions", "functions", [{"name": "f"}]),
    ("/v1/chat/completions", "function_call", "auto"),
    ("/v1/chat/completions", "reasoning_effort", "low"),
    ("/v1/chat/completions", "audio", {"voice": "alloy", "format": "wav"}),
    ("/v1/chat/completions", "modalities", ["text", "audio"]),
    ("/v1/chat/completions", "prediction", {"type": "content", "content": "x"}),
    ("/v1/chat/completions", "web_search_options", {"search_context_size": "low"}),
    ("/v1/chat/completions", "store", True),
    ("/v1/chat/completions", "logit_bias", {"50256": -100}),
    ("/v1/completions", "logit_bias", {"50256": -100}),
    ("/v1/completions", "top_k", 5),  # not an OpenAI field at all
])
def test_unimplemented_fields_are_refused_naming_them(app, route, field, value):
    gateway, http = app
    body = {"model": "tiny", field: value}
    body.update({"prompt": "Hi"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]})
    reply = http.post(route, json=body)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"].startswith(field) and field in error["message"]
    assert error["type"] == "invalid_request_error"
    assert gateway.client.calls == []


def test_fields_that_ask_for_nothing_are_accepted(app):
    """null / [] / {} / "none" (as wrappers send them) and the assistant message a client echoes back."""
    gateway, http = app
    reply = http.post("/v1/chat/completions", json={
        "model": "tiny", "tools": [], "tool_choice": "none", "logit_bias": {}, "functions": None, "user": "u1",
        "messages": [{"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": "Hello", "refusal": None, "tool_calls": None, "audio": None},
                     {"role": "user", "content": "Again"}]})
    assert reply.status_code == 200, reply.text
    bad = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "user", "content": "Hi", "name": "bob"}]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "messages.0.name"


@pytest.mark.parametrize("route", ["/v1/completions", "/v1/chat/completions"])
def test_response_format_reaches_the_sdk(app, route):
    gateway, http = app
    base = {"model": "tiny"}
    base.update({"prompt": "Hi"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]})
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    for response_format, sdk in [({"type": "json_object"}, "json_object"),
                                 ({"type": "json_schema", "json_schema": {"name": "t", "schema": schema,
                                                                         "strict": True}}, schema),
                                 ({"type": "text"}, None)]:
        assert http.post(route, json={**base, "response_format": response_format}).status_code == 200
        assert gateway.client.calls[-1][1].get("response_format") == sdk
    for bad, param in [({"type": "yaml"}, "response_format.type"),
                       ({"type": "json_schema"}, "response_format.json_schema"),
                       ({"type": "json_schema", "json_schema": {"name": "t"}}, "response_format.json_schema"),
                       ({"type": "json_object", "extra": 1}, "response_format.extra")]:
        reply = http.post(route, json={**base, "response_format": bad})
        assert reply.status_code == 400 and reply.json()["error"]["param"].startswith(param), reply.text


@pytest.mark.parametrize("route, prompt_param", [("/v1/completions", "prompt"), ("/v1/chat/completions", "messages")])
def test_scheduler_reasons_become_openai_codes_and_params(app, route, prompt_param):
    gateway, http = app
    body = {"model": "tiny"}
    body.update({"prompt": "Hi"} if route == "/v1/completions" else {"messages": [{"role": "user", "content": "Hi"}]})
    cases = [
        (error_for(grpc.StatusCode.INVALID_ARGUMENT, "unknown model", field="model", reason="model_not_found"),
         404, "model_not_found", "model"),
        (error_for(grpc.StatusCode.INVALID_ARGUMENT, "too long", field="prompt", reason="context_length_exceeded"),
         400, "context_length_exceeded", prompt_param),
        (error_for(grpc.StatusCode.INVALID_ARGUMENT, "over the limit", field="max_new_tokens"), 400, "invalid_argument",
         "max_tokens"),
        (error_for(grpc.StatusCode.INVALID_ARGUMENT, "bad schema", field="response_format"), 400, "invalid_argument",
         "response_format"),
    ]
    for stream in (False, True):
        for error, status, code, param in cases:
            gateway.client.items = [error]
            reply = http.post(route, json={**body, "stream": stream})
            assert reply.status_code == status
            assert reply.json()["error"] == {"message": error.message, "type": "invalid_request_error",
                                             "param": param, "code": code}


def test_a_prompt_that_cannot_fit_is_refused_before_rendering(app):
    gateway, http = app
    gateway.context_tokens, gateway.max_token_chars = 100, 10
    many = [{"role": "user", "content": "x"}] * 101
    reply = http.post("/v1/chat/completions", json={"model": "tiny", "messages": many})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "context_length_exceeded"
    assert reply.json()["error"]["param"] == "messages"
    long = http.post("/v1/completions", json={"model": "tiny", "prompt": "x" * 1001})
    assert long.json()["error"]["code"] == "context_length_exceeded" and long.json()["error"]["param"] == "prompt"
    assert gateway.client.calls == []


def test_health_and_metrics(app):
    gateway, http = app
    assert http.get("/health").json() == {"status": "ok"} and http.get("/healthz").status_code == 200
    assert http.post("/v1/completions", json={"model": "tiny", "prompt": "Hi"}).status_code == 200
    gateway.client.items = [TextChunk("a", (1,)), TextChunk("b", (2,)), completion()]
    assert http.post("/v1/chat/completions", json={"model": "tiny", "stream": True,
                                                   "messages": [{"role": "user", "content": "Hi"}]}).status_code == 200
    assert http.post("/v1/completions", json={"model": "tiny"}).status_code == 400
    text = http.get("/metrics").text
    assert 'glitches_gateway_requests_total{route="/v1/completions",status="200"} 1.0' in text
    assert 'glitches_gateway_requests_total{route="/v1/completions",status="400"} 1.0' in text
    assert 'glitches_gateway_requests_total{route="/health",status="200"} 1.0' in text
    assert 'glitches_gateway_ttft_seconds_count{route="/v1/chat/completions"} 1.0' in text
    assert 'glitches_gateway_inter_token_seconds_count{route="/v1/chat/completions"} 1.0' in text  # 2 tokens
    assert 'glitches_gateway_inter_token_seconds_count{route="/v1/completions"} 1.0' in text
