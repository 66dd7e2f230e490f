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
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


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
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": completion.text},
                      "logprobs": None, "finish_reason": finish_reason(completion)}
            return {**self._head("chat.completion"), "choices": [choice], "usage": usage(completion)}
        choice = {"index": 0, "text": completion.text, "logprobs": None, "finish_reason": finish_reason(completion)}
        return {**self._head("text_completion"), "choices": [choice], "usage": usage(completion)}

    def chunk(self, text: str | None, finish: str | None = None, role: bool = False) -> dict:
        if self.chat:
            delta = {"role": "assistant"} if role else {}
            if text is not None:
                delta["content"] = text
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, completion: Completion) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._head(obj), "choices": [], "usage": usage(completion)}
