"""OpenAI's logprobs objects from the SDK's TokenLogprob records, and the text of single tokens.

Two shapes:
- legacy completions: {"tokens": [str], "token_logprobs": [float|None], "top_logprobs": [{str: float}|None],
  "text_offset": [int]} (with echo the prompt's tokens come first, the first of them with None);
- chat: {"content": [{"token": str, "logprob": float, "bytes": [int], "top_logprobs": [{token, logprob, bytes}]}],
  "refusal": None}.
A token's text is its exact bytes (byte-level BPE undone) decoded as UTF-8, U+FFFD where a token holds
only part of a character; `bytes` is exact. text_offset counts characters of those token texts, from 0 at
the start of the returned text (the prompt with echo), as vLLM does.
"""

from __future__ import annotations

import math

from glitches.types import TokenLogprob

LOGPROB_FLOOR = -9999.0  # JSON has no -inf: OpenAI reports impossible tokens at this value


def _finite(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else LOGPROB_FLOOR


class TokenStrings:
    """Bytes and text of one token id with the model's tokenizer (cached per id)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        if self._byte_level:
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            self._byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        self._cache: dict[int, bytes] = {}

    def bytes_of(self, token_id: int) -> bytes:
        cached = self._cache.get(token_id)
        if cached is None:
            piece = self._tokenizer.convert_ids_to_tokens(token_id) if self._byte_level else None
            if piece is not None and all(c in self._byte_of for c in piece):
                cached = bytes(self._byte_of[c] for c in piece)
            else:  # special tokens outside the byte alphabet, or other tokenizers
                cached = self._tokenizer.decode([token_id]).encode("utf-8")
            self._cache[token_id] = cached
        return cached

    def text_of(self, token_id: int) -> str:
        return self.bytes_of(token_id).decode("utf-8", errors="replace")


class LegacyLogprobs:
    """Builds a completions `logprobs` object token by token; text_offset runs on across pieces."""

    def __init__(self, strings: TokenStrings, offset: int = 0):
        self.strings = strings
        self.offset = offset  # characters before the next token

    def piece(self, entries: list[tuple[int, TokenLogprob | None]]) -> dict:
        """(token id, its record or None for a prompt's first token) -> one logprobs object."""
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for token_id, record in entries:
            text = self.strings.text_of(token_id)
            out["tokens"].append(text)
            out["token_logprobs"].append(None if record is None else _finite(record.logprob))
            out["top_logprobs"].append(None if record is None else
                                       {self.strings.text_of(t.token_id): _finite(t.logprob) for t in record.top})
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out


def merge_legacy(pieces: list[dict]) -> dict:
    merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for piece in pieces:
        for key, values in piece.items():
            merged[key].extend(values)
    return merged


def chat_logprobs(strings: TokenStrings, records: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        raw = strings.bytes_of(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": _finite(logprob), "bytes": list(raw)}

    content = [{**entry(r.token_id, r.logprob), "top_logprobs": [entry(t.token_id, t.logprob) for t in r.top]}
               for r in records]
    return {"content": content, "refusal": None}
