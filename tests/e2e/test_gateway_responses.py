"""POST /v1/responses through the session cluster's gateway, driven by the official `openai` client: text
(equal to the chat completion of the same conversation), streamed with the documented event order, a function
tool call and its output fed back as input items, text.format json_schema, and the 400s (previous_response_id,
bad items)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from glitches.services.generation import models
from tests.e2e.conftest import assert_idle

pytestmark = pytest.mark.e2e
MODEL = models.DEFAULT_MODEL
CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
        "additionalProperties": False}
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city", "parameters": CITY}


def test_text_equals_chat_streamed_and_not(gateway_cluster):
    oai = gateway_cluster["oai"]
    chat = oai.chat.completions.create(model=MODEL, max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}])
    reply = oai.responses.create(model=MODEL, instructions="Be brief.", input="Name a colour.",
                                 max_output_tokens=8, temperature=0)
    assert reply.output_text == chat.choices[0].message.content
    assert reply.status == ("incomplete" if chat.choices[0].finish_reason == "length" else "completed")
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (chat.usage.prompt_tokens,
                                                                   chat.usage.completion_tokens)
    events = list(oai.responses.create(model=MODEL, instructions="Be brief.", max_output_tokens=8, temperature=0,
                                       input=[{"role": "user", "content": [{"type": "input_text",
                                                                           "text": "Name a colour."}]}],
                                       stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete" if reply.status == "incomplete" else "response.completed"]
    assert set(kinds[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == reply.output_text
    assert events[-1].response.output_text == reply.output_text
    assert_idle(gateway_cluster["registry"])


def test_function_call_round_trip_and_streamed_call(gateway_cluster):
    oai = gateway_cluster["oai"]
    ask = "What is the weather in Paris?"
    first = oai.responses.create(model=MODEL, input=ask, tools=[WEATHER], tool_choice="required",
                                 parallel_tool_calls=False, max_output_tokens=48, temperature=0)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), CITY)
    events = list(oai.responses.create(model=MODEL, input=ask, tools=[WEATHER], tool_choice="required",
                                       parallel_tool_calls=False, max_output_tokens=48, temperature=0, stream=True))
    assert [e.type for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert events[4].arguments == calls[0].arguments
    second = oai.responses.create(model=MODEL, tools=[WEATHER], tool_choice="none", max_output_tokens=16,
                                  temperature=0, input=[
                                      {"role": "user", "content": ask},
                                      {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                                       "arguments": calls[0].arguments},
                                      {"type": "function_call_output", "call_id": calls[0].call_id,
                                       "output": "Sunny, 21 degrees Celsius."}])
    assert [item.type for item in second.output] == ["message"] and second.output_text
    # the same conversation through chat completions (tool_calls + a tool message) gives the same answer
    chat = oai.chat.completions.create(model=MODEL, max_tokens=16, temperature=0, tools=[
        {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}], tool_choice="none",
        messages=[{"role": "user", "content": ask},
                  {"role": "assistant", "content": None, "tool_calls": [{
                      "id": calls[0].call_id, "type": "function",
                      "function": {"name": "get_weather", "arguments": calls[0].arguments}}]},
                  {"role": "tool", "tool_call_id": calls[0].call_id, "content": "Sunny, 21 degrees Celsius."}])
    assert second.output_text == chat.choices[0].message.content
    assert second.usage.input_tokens == chat.usage.prompt_tokens
    assert_idle(gateway_cluster["registry"])


def test_text_format_json_schema(gateway_cluster):
    schema = {"type": "object", "properties": {"colour": {"type": "string", "maxLength": 10}},
              "required": ["colour"], "additionalProperties": False}
    reply = gateway_cluster["oai"].responses.create(
        model=MODEL, input="Name a colour as JSON.", max_output_tokens=32, temperature=0,
        text={"format": {"type": "json_schema", "name": "colour", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(reply.output_text), schema)


@pytest.mark.parametrize("extra, param", [
    ({"previous_response_id": "resp_123"}, "previous_response_id"),
    ({"input": [{"type": "image_generation_call", "id": "x"}]}, "input.0.type"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input.0.call_id"),
    ({"tools": [WEATHER, WEATHER]}, "tools.1.name"),
    ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "no-such"}}}}, "text.format"),
])
def test_bad_inputs_are_400_naming_the_parameter(gateway_cluster, extra, param):
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 2, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        gateway_cluster["oai"].responses.create(**body)
    assert caught.value.param == param


STORY = {"type": "function", "name": "tell", "parameters": {
    "type": "object", "properties": {"story": {"type": "string", "minLength": 600}}, "required": ["story"]}}


@pytest.mark.parametrize("tools", [[], [STORY]])
def test_a_client_hanging_up_mid_stream_leaves_nothing_held(gateway_cluster, tools):
    """Text: hang up after the first events of a 400-token story; a tool call: hang up while it is generated
    (its argument must be 600+ characters). Idle within 3 s: the hang-up cancelled it (the call alone takes
    tens of seconds here, see test_gateway_tools.py)."""
    import httpx

    body = {"model": MODEL, "input": "Write a long story.", "max_output_tokens": 400, "stream": True,
            "temperature": 1.0, "tools": tools, **({"tool_choice": "required"} if tools else {})}
    try:  # text: hang up after the first events; with tools (generated whole first) before any byte
        with httpx.stream("POST", gateway_cluster["url"] + "/v1/responses", json=body,
                          timeout=0.3 if tools else 60) as reply:
            for _ in reply.iter_bytes():
                break
        assert not tools, "the whole tool call came back within 0.3 s"
    except httpx.ReadTimeout:
        assert tools
    assert_idle(gateway_cluster["registry"], timeout_s=3)
