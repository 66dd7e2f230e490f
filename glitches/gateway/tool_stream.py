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
Exception: a "required" / named request with one choice streams its calls as they are generated
(CallStreamer), the same chunks with the arguments in several pieces.
"""

from __future__ import annotations

import json
import re
import uuid
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


class CallStreamer:
    """Tool-call deltas of a constrained ("required" / named) output while it is generated.

    The grammar fixes the text's shape: compact JSON, `[` call (`, ` call)* `]` or one call, each call
    `{"name": "<name>", "arguments": <object>}` with `name` first (llguidance keeps the schema's property
    order). feed() returns OpenAI delta dicts: a call's head (index, id, type, name, arguments "") once its
    name is complete, then pieces of its arguments' JSON text as they arrive."""

    _HEAD = re.compile(r'\{"name": "((?:[^"\\]|\\.)*)", "arguments": ')

    def __init__(self):
        self.text = ""  # everything generated so far
        self.at = 0  # characters of `text` consumed
        self.calls: list[dict] = []  # {"id", "name", "arguments"}
        self._depth = -1  # -1: not inside a call's arguments
        self._in_string = self._escaped = False

    def feed(self, piece: str) -> list[dict]:
        self.text += piece
        deltas = []
        while self.at < len(self.text):
            if self._depth < 0:  # between calls: find the next call's head
                match = self._HEAD.search(self.text, self.at)
                if match is None:
                    break
                call = {"id": "call_" + uuid.uuid4().hex[:24], "name": json.loads(f'"{match.group(1)}"'),
                        "arguments": ""}
                self.calls.append(call)
                deltas.append({"index": len(self.calls) - 1, "id": call["id"], "type": "function",
                               "function": {"name": call["name"], "arguments": ""}})
                self.at, self._depth = match.end(), 0
                continue
            start = self.at
            while self.at < len(self.text) and self._depth >= 0:
                self._step(self.text[self.at])
                self.at += 1
            piece_of_args = self.text[start:self.at]
            self.calls[-1]["arguments"] += piece_of_args
            deltas.append({"index": len(self.calls) - 1, "function": {"arguments": piece_of_args}})
        return deltas

    def _step(self, char: str) -> None:
        """Advance the arguments' JSON by one character; depth -1 once the arguments object closed."""
        if self._in_string:
            if self._escaped:
                self._escaped = False
            elif char == "\\":
                self._escaped = True
            elif char == '"':
                self._in_string = False
            return
        if char == '"':
            self._in_string = True
        elif char in "{[":
            self._depth += 1
        elif char in "}]":
            self._depth -= 1
            if self._depth == 0:
                self._depth = -1


async def streamed_call_events(shapes: Shapes, first, stream, include_usage: bool, clock, finish_of,
                               usage_of_final) -> AsyncIterator[bytes]:
    """One choice of a "required" / named request streamed as it is generated (OpenAI's chunk shape)."""
    from glitches.errors import GlitchesError
    from glitches.gateway.errors import error_body, http_status_of
    from glitches.types import Completion

    extra = {"usage": None} if include_usage else {}
    streamer = CallStreamer()
    try:
        yield sse(_chunk(shapes, 0, {"role": "assistant", "content": None}, extra=extra))
        item = first
        while not isinstance(item, Completion):
            for delta in streamer.feed(item.text):
                yield sse(_chunk(shapes, 0, {"tool_calls": [delta]}, extra=extra))
            item = await anext(stream)
            if not isinstance(item, Completion):
                clock.token()
        complete = _whole_calls(item.text)
        finish = "tool_calls" if complete else finish_of(item)
        yield sse(_chunk(shapes, 0, {}, finish, extra=extra))
        if include_usage:
            yield sse(shapes.usage_body_chunk(usage_of_final(item)))
    except GlitchesError as error:
        yield sse(error_body(error.message, http_status_of(error)[1], code=error.code.lower()))
    except StopAsyncIteration:
        yield sse(error_body("the scheduler ended the stream without a final message", "server_error"))
    finally:
        await stream.aclose()  # cancels the gRPC call when the HTTP client went away
    yield sse("[DONE]")


def _whole_calls(text: str) -> bool:
    """Whether the constrained text is complete JSON (not cut by max_tokens)."""
    try:
        json.loads(text)
        return True
    except ValueError:
        return False
