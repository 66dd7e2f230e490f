"""Chat choices with tool calls: the message body, and OpenAI's streamed chunk sequence for them.

A streamed request with tools is generated whole first (whether the text is a tool call is known
only at its end), then sent as chunks in OpenAI's shape, per choice:
  {"delta": {"role": "assistant", "content": null}}
  then either {"delta": {"content": <text>}}
  or, per call k: {"delta": {"tool_calls": [{"index": k, "id", "type": "function",
                                            "function": {"name", "arguments": ""}}]}}
                  {"delta": {"tool_calls": [{"index": k, "function": {"arguments": <JSON text>}}]}}
  then {"delta": {}, "finish_reason": "tool_calls" | "stop" | "length"}
and, with stream_options.include_usage, a usage chunk, then `data: [DONE]`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from glitches.gateway.responses import Shapes, sse
from glitches.gateway.tools import ToolPlan


def tool_choice_body(index: int, text: str, logprobs: dict | None, finish: str, plan: ToolPlan) -> dict:
    """One entry of `choices`: the message's content and tool_calls read from the generated text."""
    content, calls = plan.parse(text)
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
        finish = "tool_calls" if finish == "stop" or plan.mode in ("required", "named") else finish
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


def _chunk(shapes: Shapes, index: int, delta: dict, finish: str | None = None, extra: dict | None = None) -> dict:
    choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
    return {**shapes._head("chat.completion.chunk"), "choices": [choice], **(extra or {})}


async def tool_events(shapes: Shapes, choices: list[dict], usage_body: dict,
                      include_usage: bool) -> AsyncIterator[bytes]:
    """The server-sent events of finished choices (tool_choice_body's), in OpenAI's chunk shape."""
    extra = {"usage": None} if include_usage else {}
    for choice in choices:
        index, message = choice["index"], choice["message"]
        yield sse(_chunk(shapes, index, {"role": "assistant", "content": None}, extra=extra))
        if message.get("content"):
            yield sse(_chunk(shapes, index, {"content": message["content"]}, extra=extra))
        for k, call in enumerate(message.get("tool_calls", ())):
            head = {"index": k, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            yield sse(_chunk(shapes, index, {"tool_calls": [head]}, extra=extra))
            yield sse(_chunk(shapes, index, {"tool_calls": [{"index": k, "function": {
                "arguments": call["function"]["arguments"]}}]}, extra=extra))
        yield sse(_chunk(shapes, index, {}, choice["finish_reason"], extra=extra))
    if include_usage:
        yield sse(shapes.usage_body_chunk(usage_body))
    yield sse("[DONE]")
