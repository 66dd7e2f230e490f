"""OpenAI's response objects and stream chunks, built from the SDK's Completion and TextChunk."""

from __future__ import annotations

import json
import time
import uuid

from glitches.types import Completion

# GLITCHES finish reasons -> OpenAI's: an EOS token and a stop string are both "stop".
_FINISH = {"length": "length", "eos": "stop", "stop": "stop"}


def finish_reason(completion: Completion) -> str:
    return _FINISH.get(completion.finish_reason, "stop")


def usage(completion: Completion) -> dict:
    return usage_of(completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens)


def usage_of(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict:
    """OpenAI's usage; cached_tokens: prompt tokens the GPU reused from its prefix cache."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def sse(data: dict | str) -> bytes:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n".encode()


class Shapes:
    """Response and chunk bodies of one request; `chat` picks chat.completion or text_completion."""

    def __init__(self, chat: bool, model: str):
        self.chat = chat
        self.model = model
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())  # Unix seconds

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None}

    def full(self, completion: Completion) -> dict:
        return self.full_choices([self.choice(0, completion.text, None, finish_reason(completion))],
                                 usage(completion))

    def choice(self, index: int, text: str, logprobs: dict | None, finish: str) -> dict:
        """One entry of a non-streamed reply's `choices`."""
        if self.chat:
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": finish}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}

    def full_choices(self, choices: list[dict], usage_body: dict) -> dict:
        obj = "chat.completion" if self.chat else "text_completion"
        return {**self._head(obj), "choices": choices, "usage": usage_body}

    def chunk(self, text: str | None, finish: str | None = None, role: bool = False, index: int = 0,
              logprobs: dict | None = None) -> dict:
        if self.chat:
            delta = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_body_chunk(self, usage_body: dict) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage_body}
