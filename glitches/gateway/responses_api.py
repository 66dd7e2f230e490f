"""POST /v1/responses (OpenAI's Responses API): the request body, its translation to chat messages and
sampling arguments, and the Response object and stream events built from the generated text.

Protocol:
- `input`: a string (one user message) or a list of items: messages ({"type": "message"} optional,
  role user/system/developer/assistant, content a string or input_text/output_text parts),
  `function_call` items (an earlier call of the model) and `function_call_output` items (the
  client's result of a call, matched by call_id). `instructions` is a system message put first.
- `tools` (function tools, the flat shape {"type": "function", "name", "parameters", ...}),
  `tool_choice` and `parallel_tool_calls` work as on chat completions (glitches.gateway.tools).
- `text.format`: {"type": "text"}, {"type": "json_object"} or {"type": "json_schema", "name",
  "schema", "strict"}: enforced by constrained decoding like chat's response_format.
- Responses are not stored: `store` is accepted (either value) and the reply says `"store": false`;
  `previous_response_id` is refused with a 400 naming it (send the whole conversation in `input`).
- status "completed", or "incomplete" with incomplete_details.reason "max_output_tokens" when the
  generation hit max_output_tokens.
"""

from __future__ import annotations

import json
import time
import uuid

from pydantic import Field

from glitches.gateway.errors import RequestError
from glitches.gateway.schemas import INT32_MAX, UINT64_MAX, _Strict, refuse_extra_fields
from glitches.gateway.tools import ToolPlan, plan_tools

ROLES = ("user", "system", "developer", "assistant")


class TextFormat(_Strict):
    type: str
    name: str | None = None
    schema_: dict | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class TextConfig(_Strict):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(_Strict):
    model: str
    input: str | list[dict]
    instructions: str | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=UINT64_MAX)  # not OpenAI's: GLITCHES' sampling seed
    stream: bool | None = False
    text: TextConfig | None = None
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None  # accepted; nothing is stored (see the module docstring)
    previous_response_id: str | None = None
    user: str | None = None
    truncation: str | None = None  # "disabled" (the default) only

    def check(self) -> None:
        refuse_extra_fields(self)
        if self.text is not None:
            refuse_extra_fields(self.text, "text.")
            if self.text.format is not None:
                refuse_extra_fields(self.text.format, "text.format.")
            if self.text.verbosity not in (None, "medium"):
                raise RequestError("text.verbosity is not supported; leave it out", param="text.verbosity")
        if self.previous_response_id is not None:
            raise RequestError("previous_response_id: GLITCHES does not store responses; send the whole "
                               "conversation in input (function_call and function_call_output items included)",
                               param="previous_response_id")
        if self.truncation not in (None, "disabled"):
            raise RequestError("truncation: only 'disabled' is supported", param="truncation")

    def response_format(self) -> str | dict | None:
        """AsyncClient.stream's response_format of text.format."""
        fmt = self.text.format if self.text else None
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            return "json_object"
        if fmt.type == "json_schema":
            if fmt.schema_ is None:
                raise RequestError("text.format.schema is required with type json_schema", param="text.format.schema")
            if not fmt.name:
                raise RequestError("text.format.name is required with type json_schema", param="text.format.name")
            return fmt.schema_
        raise RequestError(f"text.format.type: must be text, json_object or json_schema, got {fmt.type!r}",
                           param="text.format.type")

    def plan(self) -> ToolPlan:
        plan = plan_tools(self.tools, self.tool_choice, self.parallel_tool_calls, nested=False)
        if plan.active and self.response_format() is not None:
            raise RequestError("text.format: cannot be combined with tools; leave one out", param="text.format")
        return plan

    def messages(self) -> list[dict]:
        """The conversation as chat messages (tool_calls / tool messages for function call items)."""
        out = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return [*out, {"role": "user", "content": self.input}]
        if not self.input:
            raise RequestError("input: empty; give a string or at least one item", param="input")
        for i, item in enumerate(self.input):
            where = f"input.{i}"
            kind = item.get("type", "message") if isinstance(item, dict) else None
            if kind == "message":
                out.append(_message(item, where))
            elif kind == "function_call":
                call = _function_call(item, where)
                if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                    out[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
                else:
                    out.append({"role": "assistant", "content": "", "tool_calls": [call]})
            elif kind == "function_call_output":
                call_id, output = item.get("call_id"), item.get("output")
                if not isinstance(call_id, str) or not call_id:
                    raise RequestError(f"{where}.call_id: required (the call this output answers)",
                                       param=f"{where}.call_id")
                if not isinstance(output, str):
                    raise RequestError(f"{where}.output: must be a string", param=f"{where}.output")
                out.append({"role": "tool", "content": output, "tool_call_id": call_id})
            else:
                raise RequestError(f"{where}.type: items of type message, function_call and function_call_output "
                                   f"are supported, got {kind!r}", param=f"{where}.type")
        return out


def _text_of(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where}.content: must be a string or a list of text parts", param=f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in ("input_text", "output_text", "text") \
                or not isinstance(part.get("text"), str):
            raise RequestError(f"{where}.content.{j}: only input_text / output_text parts are supported",
                               param=f"{where}.content.{j}")
        texts.append(part["text"])
    return "".join(texts)


def _message(item: dict, where: str) -> dict:
    role = item.get("role")
    if role not in ROLES:
        raise RequestError(f"{where}.role: must be one of {', '.join(ROLES)}, got {role!r}", param=f"{where}.role")
    return {"role": "system" if role == "developer" else role, "content": _text_of(item.get("content"), where)}


def _function_call(item: dict, where: str) -> dict:
    for name in ("call_id", "name", "arguments"):
        if not isinstance(item.get(name), str):
            raise RequestError(f"{where}.{name}: required string", param=f"{where}.{name}")
    try:
        json.loads(item["arguments"])
    except ValueError:
        raise RequestError(f"{where}.arguments: not JSON", param=f"{where}.arguments") from None
    return {"id": item["call_id"], "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]}}


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseShape:
    """The Response object and the stream events of one /v1/responses request."""

    def __init__(self, body: ResponsesRequest, plan: ToolPlan, model: str):
        self.body, self.plan, self.model = body, plan, model
        self.id = _new_id("resp")
        self.created_at = int(time.time())  # Unix seconds
        self.sequence = 0

    def response(self, status: str, output: list[dict], usage: dict | None = None,
                 incomplete: str | None = None) -> dict:
        b = self.body
        fmt = b.text.format.model_dump(by_alias=True, exclude_none=True) if b.text and b.text.format else \
            {"type": "text"}
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "error": None, "incomplete_details": {"reason": incomplete} if incomplete else None,
                "instructions": b.instructions, "model": self.model, "output": output,
                "parallel_tool_calls": self.plan.parallel, "temperature": b.temperature, "top_p": b.top_p,
                "tool_choice": b.tool_choice if b.tool_choice is not None else "auto",
                "tools": [{"type": "function", "name": t["name"], "description": t["description"] or None,
                           "parameters": t["parameters"], "strict": True} for t in self.plan.tools],
                "max_output_tokens": b.max_output_tokens, "store": False, "text": {"format": fmt},
                "truncation": "disabled", "usage": usage}

    @staticmethod
    def message_item(text: str, status: str = "completed") -> dict:
        return {"id": _new_id("msg"), "type": "message", "role": "assistant", "status": status,
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}

    @staticmethod
    def call_items(calls: list[dict]) -> list[dict]:
        return [{"id": _new_id("fc"), "type": "function_call", "call_id": c["id"], "name": c["function"]["name"],
                 "arguments": c["function"]["arguments"], "status": "completed"} for c in calls]

    def output(self, text: str) -> list[dict]:
        """Output items of the generated text: a message, function calls, or both (text first)."""
        content, calls = self.plan.parse(text)
        items = [self.message_item(content)] if content or not calls else []
        return items + self.call_items(calls)

    def event(self, kind: str, **fields) -> dict:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}


def usage_body(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    return {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + completion_tokens}
