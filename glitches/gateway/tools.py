"""Tool calling on /v1/chat/completions: checking `tools`/`tool_choice`, the constrained output of
"required" and named calls, and reading tool calls back out of the model's text.

Protocol (what the model is asked to write, and what the gateway reads):
- A tool call is a JSON object `{"name": <tool name>, "arguments": {<the tool's parameters>}}`.
- tool_choice "required": the whole output is constrained (llguidance, through response_format
  json_schema on every device) to a JSON array of such objects, at least one, each one of the
  request's tools with arguments valid against that tool's `parameters`. With
  `parallel_tool_calls: false` it is exactly one object instead of an array.
- A named tool_choice: exactly one object whose name is that tool's.
- tool_choice "auto" (the default with tools): the output is free text; every
  `<tool_call>{...}</tool_call>` block in it whose JSON names one of the tools with an object of
  arguments becomes a tool call, and the text outside the blocks (if any) is the message content.
  A block that does not parse stays in the content (so nothing the model wrote is dropped).
- tool_choice "none": tools are left out of the prompt and nothing is parsed.
Tool calls get ids `call_<24 hex>`; `arguments` is sent as a JSON string, as OpenAI does.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field

from glitches.gateway.errors import RequestError

# the compact JSON llguidance is told to emit (glitches/services/generation/grammar.py's _JSON_OPTIONS)
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
MAX_TOOLS = 128  # OpenAI's limit on `tools`


@dataclass
class ToolPlan:
    """What one chat request does with tools. mode: "none" | "auto" | "required" | "named"."""
    mode: str
    tools: list[dict] = field(default_factory=list)  # each {"name", "description", "parameters"}
    parallel: bool = True
    named: str | None = None

    @property
    def active(self) -> bool:
        return self.mode != "none" and bool(self.tools)

    def schema(self) -> dict | None:
        """The JSON schema the output is constrained to (None: free text)."""
        if self.mode == "named":
            return _call_schema(next(t for t in self.tools if t["name"] == self.named))
        if self.mode != "required":
            return None
        one = ({"anyOf": [_call_schema(t) for t in self.tools]} if len(self.tools) > 1
               else _call_schema(self.tools[0]))
        return {"type": "array", "items": one, "minItems": 1} if self.parallel else one

    def parse(self, text: str) -> tuple[str | None, list[dict]]:
        """(message content or None, tool_calls in OpenAI's shape) of one choice's generated text."""
        if not self.active:
            return text, []
        if self.mode in ("required", "named"):
            try:
                value = json.loads(text)
            except ValueError:  # cut off by max_tokens: the text is returned as it is
                return text, []
            calls = value if isinstance(value, list) else [value]
            return None, [_openai_call(c["name"], c["arguments"]) for c in calls]
        names = {t["name"] for t in self.tools}
        calls, kept, last = [], [], 0
        for match in _BLOCK.finditer(text):
            call = _loads(match.group(1))
            if (isinstance(call, dict) and call.get("name") in names
                    and isinstance(call.get("arguments", {}), dict)):
                calls.append(_openai_call(call["name"], call.get("arguments", {})))
                kept.append(text[last:match.start()])
                last = match.end()
        kept.append(text[last:])
        if not calls:
            return text, []
        if not self.parallel:
            calls = calls[:1]
        content = "".join(kept).strip()
        return content or None, calls

    def system_prompt(self) -> str:
        """The fallback rendering of the tools for a chat template that has no tool format of its own."""
        listed = "\n".join(json.dumps({"name": t["name"], "description": t.get("description", ""),
                                       "parameters": t["parameters"]}, ensure_ascii=False) for t in self.tools)
        return ("You can call these tools (JSON Schema of each one's arguments):\n" + listed +
                "\nTo call a tool, write <tool_call>{\"name\": <tool name>, \"arguments\": {<arguments>}}"
                "</tool_call>. Otherwise answer in plain text.")

    def openai_tools(self) -> list[dict]:
        """The tools as a template with a tool format (transformers' `tools=`) takes them."""
        return [{"type": "function", "function": t} for t in self.tools]


def _loads(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call_schema(tool: dict) -> dict:
    return {"type": "object", "properties": {"name": {"const": tool["name"]}, "arguments": tool["parameters"]},
            "required": ["name", "arguments"], "additionalProperties": False}


def _openai_call(name: str, arguments) -> dict:
    return {"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _check_parameters(parameters, param: str) -> dict:
    """`parameters` if it is a JSON Schema object GLITCHES can enforce, else a 400 naming `param`."""
    import jsonschema
    import llguidance

    if parameters is None:
        return {"type": "object", "properties": {}}  # OpenAI: omitted = a function with no parameters
    if not isinstance(parameters, dict):
        raise RequestError(f"{param}: must be a JSON Schema object, got {type(parameters).__name__}", param=param)
    if parameters.get("type", "object") != "object":
        raise RequestError(f"{param}: a function's parameters must be a JSON Schema of type object, got type "
                           f"{parameters.get('type')!r}", param=param)
    try:
        jsonschema.validators.validator_for(parameters, default=jsonschema.Draft202012Validator).check_schema(
            parameters)
    except jsonschema.SchemaError as error:
        raise RequestError(f"{param}: not a valid JSON Schema: {error.message}", param=param) from None
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(parameters), overrides=_JSON_OPTIONS)
    except ValueError as error:
        raise RequestError(f"{param}: not a schema GLITCHES can enforce: {error}", param=param) from None
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise RequestError(f"{param}: not a schema GLITCHES can enforce: {problem}", param=param)
    return parameters


def check_tools(tools, param: str = "tools", nested: bool = True) -> list[dict]:
    """`tools` as [{"name", "description", "parameters"}]; 400 naming the first bad field.
    nested: chat's shape {"type": "function", "function": {...}}; else the Responses API's flat one."""
    if not isinstance(tools, list):
        raise RequestError(f"{param}: must be a list of tools", param=param)
    if len(tools) > MAX_TOOLS:
        raise RequestError(f"{param}: at most {MAX_TOOLS} tools, got {len(tools)}", param=param)
    out, seen = [], set()
    for i, tool in enumerate(tools):
        where = f"{param}.{i}"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise RequestError(f"{where}.type: only tools of type 'function' are supported", param=f"{where}.type")
        function = tool.get("function") if nested else tool
        fwhere = f"{where}.function" if nested else where
        if not isinstance(function, dict):
            raise RequestError(f"{fwhere}: must be an object with name and parameters", param=fwhere)
        allowed = {"name", "description", "parameters", "strict"} | (set() if nested else {"type"})
        if extra := sorted(set(function) - allowed):
            raise RequestError(f"{fwhere}.{extra[0]}: unrecognized field", param=f"{fwhere}.{extra[0]}")
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RequestError(f"{fwhere}.name: must be 1-64 letters, digits, '_' or '-', got {name!r}",
                               param=f"{fwhere}.name")
        if name in seen:
            raise RequestError(f"{fwhere}.name: duplicate tool name {name!r}", param=f"{fwhere}.name")
        seen.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise RequestError(f"{fwhere}.description: must be a string", param=f"{fwhere}.description")
        parameters = _check_parameters(function.get("parameters"), f"{fwhere}.parameters")
        out.append({"name": name, "description": description or "", "parameters": parameters})
    return out


def plan_tools(tools, tool_choice, parallel_tool_calls, nested: bool = True) -> ToolPlan:
    """The ToolPlan of a request's `tools`, `tool_choice` and `parallel_tool_calls`, or a 400."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise RequestError("parallel_tool_calls: must be true or false", param="parallel_tool_calls")
    parallel = parallel_tool_calls is not False
    checked = check_tools(tools, nested=nested) if tools else []
    if tool_choice is None:
        return ToolPlan("auto" if checked else "none", checked, parallel)
    if not checked and tool_choice != "none":
        raise RequestError("tool_choice: needs tools; send tools or leave tool_choice out", param="tool_choice")
    if tool_choice in ("none", "auto", "required"):
        return ToolPlan(tool_choice, checked, parallel)
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name") if nested else tool_choice.get("name")
        if name not in {t["name"] for t in checked}:
            raise RequestError(f"tool_choice: names function {name!r}, which is not in tools", param="tool_choice")
        return ToolPlan("named", checked, parallel, name)
    raise RequestError("tool_choice: must be 'none', 'auto', 'required' or {'type': 'function', ...}",
                       param="tool_choice")


def template_has_tools(tokenizer) -> bool:
    """Whether the model's chat template renders `tools` itself (it mentions them)."""
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def fallback_messages(messages: list[dict], plan: ToolPlan) -> list[dict]:
    """Messages for a template with no tool format: the tools go into the (first) system message,
    an assistant's tool_calls become `<tool_call>` blocks in its content, and a tool result a user
    message `<tool_response>...</tool_response>`."""
    out = []
    for m in messages:
        if m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        elif m.get("tool_calls"):
            blocks = "".join(
                "<tool_call>" + json.dumps({"name": c["function"]["name"],
                                            "arguments": _loads(c["function"]["arguments"])},
                                           ensure_ascii=False) + "</tool_call>"
                for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (m.get("content") or "") + blocks})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    if plan.active:
        prompt = plan.system_prompt()
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + prompt}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def native_messages(messages: list[dict]) -> list[dict]:
    """Messages for a template with a tool format: tool_calls' arguments as objects (what templates read)."""
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"],
                                                  "arguments": _loads(c["function"]["arguments"]) or {}}}
                               for c in m["tool_calls"]]
        out.append(m)
    return out
