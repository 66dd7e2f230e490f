"""The request bodies the gateway accepts (pydantic, strict types) and their translation to the SDK's
sampling arguments. Fields OpenAI defines but GLITCHES cannot honour (logit_bias, audio, ...)
and fields nobody defines are refused with a 400 that names them in `param`, rather than silently
ignored (OpenAI itself refuses unrecognised arguments). A field sent as null, {} or [] asks for
nothing and is accepted. Fields that never change the output (`user`, `safety_identifier`,
`prompt_cache_key`, `service_tier`, `metadata`) are accepted and have no effect.
vLLM's extensions `ignore_eos` and `min_tokens` are honoured. Limits that depend on the gateway's
configuration (stop strings, top_logprobs) are checked in `check_limits`."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from glitches.gateway.errors import RequestError

INT32_MAX = 2**31 - 1  # SamplingParams.max_new_tokens is an int32
UINT64_MAX = 2**64 - 1  # SamplingParams.seed is a uint64
MAX_CHOICES = 256  # prompts x n in one request: each choice is one scheduler request


class Limits:
    """The gateway's configurable limits (glitches gateway --max-stop-strings, ...)."""

    def __init__(self, max_stop_strings: int = 16, max_top_logprobs: int = 20, max_completion_logprobs: int = 5,
                 max_choices_in_flight: int = 16):
        self.max_stop_strings = max_stop_strings  # OpenAI allows 4; lm-eval sends more
        self.max_top_logprobs = max_top_logprobs  # chat's top_logprobs (OpenAI: 20)
        self.max_completion_logprobs = max_completion_logprobs  # legacy completions' logprobs (OpenAI: 5)
        # choices (prompts x n) of one request running on the scheduler at once; the others start as those end.
        # Without a bound, n above the scheduler's admission (--max-active + --max-queued, 32 by default) was
        # refused RESOURCE_EXHAUSTED on an idle cluster, every time. A streamed response streams every choice
        # from its start, so a stream may ask for at most this many.
        self.max_choices_in_flight = max_choices_in_flight


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


# OpenAI fields GLITCHES does not implement -> what the 400 says (any other unknown field: "not a field ...")
UNSUPPORTED_FIELDS = {
    "tools": "tool calling on /v1/completions is not supported (use /v1/chat/completions)",
    "tool_choice": "tool calling on /v1/completions is not supported (use /v1/chat/completions)",
    "functions": "function calling is not supported", "function_call": "function calling is not supported",
    "parallel_tool_calls": "tool calling on /v1/completions is not supported", "logit_bias": "logit_bias is not supported",
    "reasoning_effort": "reasoning_effort is not supported (the model does not reason in separate tokens)",
    "audio": "audio output is not supported", "modalities": "only text output is supported",
    "prediction": "predicted outputs are not supported", "web_search_options": "web search is not supported",
    "verbosity": "verbosity is not supported", "store": "stored completions are not supported",
}
NO_EFFECT_FIELDS = ("user", "safety_identifier", "prompt_cache_key", "service_tier", "metadata")
_NOTHING = (None, {}, [], "none", False)  # values of an unsupported field that ask for nothing


def refuse_extra_fields(model: BaseModel, where: str = "") -> None:
    """400 naming the first field of `model` (and `where`, its path) that GLITCHES would otherwise ignore."""
    for name, value in (model.model_extra or {}).items():
        if name in NO_EFFECT_FIELDS or any(value == nothing and type(value) is type(nothing) for nothing in _NOTHING):
            continue
        param = f"{where}{name}"
        reason = UNSUPPORTED_FIELDS.get(name)
        message = (f"{param}: {reason} by GLITCHES; leave it out" if reason
                   else f"{param}: unrecognized request argument; GLITCHES does not implement it, leave it out")
        raise RequestError(message, param=param)


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    schema_: dict = Field(alias="schema")  # enforced by token masking whether `strict` is true or not
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    def sdk_value(self) -> str | dict | None:
        """AsyncClient.stream's response_format: None (text), "json_object", or the schema dict."""
        if self.type == "json_schema":
            if self.json_schema is None:
                raise RequestError("response_format.json_schema is required with type json_schema",
                                   param="response_format.json_schema")
            return self.json_schema.schema_
        if self.json_schema is not None:
            raise RequestError(f"response_format.json_schema is only allowed with type json_schema, not "
                               f"{self.type}", param="response_format.json_schema")
        return None if self.type == "text" else "json_object"


class _Sampling(_Strict):
    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=UINT64_MAX)
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_CHOICES)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool | None = None  # vLLM's: never stop on EOS
    min_tokens: int | None = Field(default=None, ge=0, le=INT32_MAX)  # vLLM's: no EOS / stop before this many
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None  # OpenAI's end-user id: only counted by --requests-per-minute-per-user
    response_format: ResponseFormat | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        return stops

    def refuse_unsupported(self) -> None:
        refuse_extra_fields(self)
        if self.stream_options is not None:
            refuse_extra_fields(self.stream_options, "stream_options.")
        if self.response_format is not None:
            refuse_extra_fields(self.response_format, "response_format.")
            if self.response_format.json_schema is not None:
                refuse_extra_fields(self.response_format.json_schema, "response_format.json_schema.")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise RequestError(f"{name} is not supported; leave it out or send 0", param=name)

    def check_limits(self, limits: Limits) -> None:
        if len(self.stop or ()) > limits.max_stop_strings:
            raise RequestError(f"stop: at most {limits.max_stop_strings} stop strings, got {len(self.stop)}",
                               param="stop")
        if self.min_tokens and self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise RequestError(f"min_tokens ({self.min_tokens}) must not be above max_tokens ({self.max_tokens})",
                               param="min_tokens")

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def sdk_kwargs(self, max_tokens: int | None, default_max_tokens: int) -> dict:
        """Keyword arguments of AsyncClient.stream. OpenAI's defaults: temperature 1, top_p 1."""
        return dict(max_tokens=max_tokens or default_max_tokens,
                    temperature=1.0 if self.temperature is None else self.temperature,
                    top_p=1.0 if self.top_p is None else self.top_p, seed=self.seed or 0,
                    stop=tuple(self.stop or ()), model=self.model, ignore_eos=bool(self.ignore_eos),
                    min_tokens=self.min_tokens or 0,
                    **({"response_format": rf} if (rf := self.response_format_value()) is not None else {}))

    def response_format_value(self) -> str | dict | None:
        return None if self.response_format is None else self.response_format.sdk_value()


class CompletionRequest(_Sampling):
    # one text, a list of texts, one prompt as token ids, or a list of prompts as token ids
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=None, ge=0, le=INT32_MAX)  # 0 only with echo: score the prompt
    echo: bool | None = False
    logprobs: int | None = Field(default=None, ge=0)  # legacy: the top-N count; 0 = the chosen token only
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self, limits: Limits) -> list[str | list[int]]:
        """The prompts, each text or token ids, after every check that needs no scheduler."""
        self.refuse_unsupported()
        self.check_limits(limits)
        if self.best_of not in (None, 1):
            raise RequestError("best_of is not supported; leave it out", param="best_of")
        if self.suffix:
            raise RequestError("suffix is not supported; leave it out", param="suffix")
        if self.logprobs is not None and self.logprobs > limits.max_completion_logprobs:
            raise RequestError(f"logprobs: at most {limits.max_completion_logprobs} on /v1/completions, got "
                               f"{self.logprobs}", param="logprobs")
        if self.max_tokens == 0 and not self.echo:
            raise RequestError("max_tokens: 0 is only allowed with echo (to score the prompt); ask for at least 1",
                               param="max_tokens")
        prompt = self.prompt
        prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else list(prompt)
        if not prompts or any(len(p) == 0 for p in prompts):
            raise RequestError("prompt: empty; give text or at least one token id", param="prompt")
        if len(prompts) * (self.n or 1) > MAX_CHOICES:
            raise RequestError(f"{len(prompts)} prompts x n={self.n or 1} is more than {MAX_CHOICES} choices",
                               param="n")
        return prompts


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(_Strict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool message answers this call

    def as_template_message(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        message = {"role": "system" if self.role == "developer" else self.role, "content": content}
        if self.tool_calls:
            message["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message

    def check_tool_fields(self, where: str) -> None:
        if self.role == "tool" and not self.tool_call_id:
            raise RequestError(f"{where}tool_call_id: a tool message needs the id of the call it answers",
                               param=f"{where}tool_call_id")
        if self.role != "tool" and self.tool_call_id is not None:
            raise RequestError(f"{where}tool_call_id: only tool messages carry one", param=f"{where}tool_call_id")
        if self.tool_calls and self.role != "assistant":
            raise RequestError(f"{where}tool_calls: only assistant messages carry tool calls",
                               param=f"{where}tool_calls")
        for k, call in enumerate(self.tool_calls or ()):
            try:
                json.loads(call.function.arguments)
            except ValueError:
                raise RequestError(f"{where}tool_calls.{k}.function.arguments: not JSON",
                                   param=f"{where}tool_calls.{k}.function.arguments") from None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=INT32_MAX)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0)
    tools: list | None = None  # checked by glitches.gateway.tools.plan_tools
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None

    def check(self, limits: Limits) -> None:
        self.refuse_unsupported()
        self.check_limits(limits)
        if self.top_logprobs:
            if not self.logprobs:
                raise RequestError("top_logprobs needs logprobs: true", param="top_logprobs")
            if self.top_logprobs > limits.max_top_logprobs:
                raise RequestError(f"top_logprobs: at most {limits.max_top_logprobs}, got {self.top_logprobs}",
                                   param="top_logprobs")
        for i, message in enumerate(self.messages):
            refuse_extra_fields(message, f"messages.{i}.")
            message.check_tool_fields(f"messages.{i}.")
            for j, part in enumerate(message.content if isinstance(message.content, list) else ()):
                refuse_extra_fields(part, f"messages.{i}.content.{j}.")
