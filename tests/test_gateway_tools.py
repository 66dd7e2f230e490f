"""Tool calling's pieces without a cluster: checking tools/tool_choice (400s naming the parameter), the
constrained schema (it compiles in llguidance, and a call it admits parses back), and reading tool calls
out of "auto" text."""

from __future__ import annotations

import json

import jsonschema
import llguidance
import pytest

from glitches.gateway.errors import RequestError
from glitches.gateway.tools import fallback_messages, plan_tools

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def _param_of(tools, tool_choice=None, parallel=None) -> str:
    with pytest.raises(RequestError) as caught:
        plan_tools(tools, tool_choice, parallel)
    assert caught.value.status == 400
    return caught.value.param


def test_bad_tool_definitions_name_the_parameter():
    bad_schema = {"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                              "properties": 3}}}
    assert _param_of([bad_schema]) == "tools.0.function.parameters"
    assert _param_of([{"type": "function", "function": {"name": "f", "parameters": [1]}}]) == \
        "tools.0.function.parameters"
    assert _param_of([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]) == \
        "tools.0.function.parameters"
    assert _param_of([WEATHER, WEATHER]) == "tools.1.function.name"
    assert _param_of([{"type": "retrieval"}]) == "tools.0.type"
    assert _param_of([{"type": "function", "function": {"name": "a b"}}]) == "tools.0.function.name"
    assert _param_of([WEATHER], {"type": "function", "function": {"name": "nope"}}) == "tool_choice"
    assert _param_of(None, "required") == "tool_choice"
    assert _param_of([WEATHER], "sometimes") == "tool_choice"


def test_required_schema_compiles_and_admits_calls_that_parse():
    plan = plan_tools([WEATHER, TIME], "required", None)
    schema = plan.schema()
    llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema))
    text = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
    jsonschema.validate(json.loads(text), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "get_weather", "arguments": {}}], schema)
    content, calls = plan.parse(text)
    assert content is None and calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert calls[0]["id"].startswith("call_") and calls[0]["type"] == "function"
    single = plan_tools([WEATHER], {"type": "function", "function": {"name": "get_weather"}}, None).schema()
    assert single["properties"]["name"] == {"const": "get_weather"}
    assert plan_tools([WEATHER, TIME], "required", False).schema()["anyOf"]


def test_auto_reads_tool_call_blocks_and_keeps_other_text():
    plan = plan_tools([WEATHER], None, None)
    assert plan.mode == "auto"
    content, calls = plan.parse('Let me see. <tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}'
                                '</tool_call>')
    assert content == "Let me see." and json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert plan.parse("<tool_call>{broken</tool_call>") == ("<tool_call>{broken</tool_call>", [])
    assert plan.parse("just text") == ("just text", [])
    assert plan_tools([WEATHER], "none", None).parse("<tool_call>x</tool_call>")[1] == []


def test_fallback_rendering_of_a_round_trip():
    plan = plan_tools([WEATHER], "auto", None)
    messages = [{"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
                {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}]
    out = fallback_messages(messages, plan)
    assert out[0]["role"] == "system" and "get_weather" in out[0]["content"]
    assert out[2] == {"role": "assistant",
                      "content": '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'}
    assert out[3] == {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"}


def test_responses_input_items_become_chat_messages():
    from glitches.gateway.responses_api import ResponsesRequest

    body = ResponsesRequest.model_validate({"model": "m", "instructions": "Be brief.", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in "}, {"type": "input_text",
                                                                                    "text": "Oslo?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Bergen"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"}]})
    body.check()
    messages = body.messages()
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1] == {"role": "user", "content": "Weather in Oslo?"}
    assert [c["id"] for c in messages[2]["tool_calls"]] == ["c1", "c2"]  # parallel calls: one assistant turn
    assert messages[3] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}


@pytest.mark.parametrize("extra, param", [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"input": [{"type": "reasoning"}]}, "input.0.type"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{"}]}, "input.0.arguments"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input.0.role"),
    ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"include": ["reasoning.encrypted_content"]}, "include"),
    ({"truncation": "auto"}, "truncation"),
])
def test_bad_responses_requests_name_the_parameter(extra, param):
    from glitches.gateway.responses_api import ResponsesRequest

    body = ResponsesRequest.model_validate({"model": "m", "input": "Hi", **extra})
    with pytest.raises(RequestError) as caught:
        body.check()
        body.plan()
        body.response_format()
        body.messages()
    assert caught.value.param == param


def test_call_streamer_splits_constrained_text_into_openai_deltas():
    from glitches.gateway.tool_stream import CallStreamer

    text = ('[{"name": "get_weather", "arguments": {"city": "O\\"s}lo", "n": [1, {"a": 2}]}}, '
            '{"name": "get_time", "arguments": {}}]')
    streamer, deltas = CallStreamer(), []
    for i in range(0, len(text), 3):  # pieces of 3 characters, as tokens arrive
        deltas += streamer.feed(text[i:i + 3])
    heads = [d for d in deltas if "id" in d]
    assert [(h["index"], h["function"]["name"]) for h in heads] == [(0, "get_weather"), (1, "get_time")]
    joined = {}
    for d in deltas:
        joined[d["index"]] = joined.get(d["index"], "") + d["function"]["arguments"]
    assert [json.loads(joined[k]) for k in (0, 1)] == [c["arguments"] for c in json.loads(text)]


def test_responses_route_has_its_own_metrics_label():
    from glitches.gateway.metrics import route_label

    assert route_label("/v1/responses") == "/v1/responses"


def test_a_template_with_a_tool_format_gets_the_tools_and_calls_natively():
    """A chat template that renders `tools` itself (here a small one set on SmolLM2's tokenizer) receives them
    through apply_chat_template(tools=...), and earlier calls' arguments as objects."""
    from glitches.gateway.chat import ChatTemplate
    from glitches.services.generation import models

    tokenizer = models.load_tokenizer(models.resolve_model(models.DEFAULT_MODEL))
    template = ("{% for t in tools or [] %}TOOL {{ t.function.name }};{% endfor %}"
                "{% for m in messages %}[{{ m.role }}]{{ m.content or '' }}"
                "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments.city }}"
                "{% endfor %}{% endfor %}[assistant]")
    original = tokenizer.chat_template
    tokenizer.chat_template = template
    try:
        rendered = ChatTemplate(tokenizer).render_with_tools([
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": "c"}], plan_tools([WEATHER], "auto", None))
    finally:
        tokenizer.chat_template = original
    assert rendered == "TOOL get_weather;[user]Weather?[assistant]CALL get_weather Oslo[tool]sunny[assistant]"
