"""One OpenAI choice = one scheduler request: what to send, and how its text and logprobs are shown.

A completions request with P prompts and n choices each becomes P x n choices, choice index
p * n + j (prompt p, sample j; sample j uses seed + j, so n > 1 with temperature > 0 gives different
answers, and with greedy n identical ones). With `echo` the prompt's text (and, with logprobs, its
tokens' logprobs, the first token's None) comes before the generated text. max_tokens 0 with echo
asks the scheduler for one token and returns none of it: only the prompt and its scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from glitches.gateway.logprob_shapes import LegacyLogprobs, TokenStrings, chat_logprobs, merge_legacy
from glitches.types import Completion, TextChunk

UINT64 = 2**64


@dataclass
class ChoiceSpec:
    index: int  # the choice's index in the response
    prompt_index: int  # which prompt (usage counts each prompt once)
    prompt: str | list[int]  # text, or token ids
    kwargs: dict  # AsyncClient.stream keyword arguments
    echo: bool = False
    drop_generated: bool = False  # max_tokens 0 with echo: the one generated token is not returned
    logprobs: bool = False  # show logprobs


def completion_specs(prompts: list, n: int, kwargs: dict, echo: bool, logprobs: int | None) -> list[ChoiceSpec]:
    drop = kwargs["max_tokens"] == 0
    sent = dict(kwargs, max_tokens=max(1, kwargs["max_tokens"]), logprobs=logprobs is not None,
                top_logprobs=logprobs or 0, prompt_logprobs=echo and logprobs is not None)
    return [ChoiceSpec(p * n + j, p, prompt, dict(sent, seed=(sent["seed"] + j) % UINT64), echo, drop,
                       logprobs is not None)
            for p, prompt in enumerate(prompts) for j in range(n)]


def chat_specs(prompt: str, n: int, kwargs: dict, logprobs: bool, top_logprobs: int) -> list[ChoiceSpec]:
    sent = dict(kwargs, logprobs=logprobs, top_logprobs=top_logprobs)
    return [ChoiceSpec(j, 0, prompt, dict(sent, seed=(sent["seed"] + j) % UINT64), logprobs=logprobs)
            for j in range(n)]


class ChoiceRender:
    """Text and logprobs of one choice: piece by piece for a stream, or whole."""

    def __init__(self, spec: ChoiceSpec, chat: bool, strings: TokenStrings | None, decode_prompt):
        self.spec = spec
        self.chat = chat
        self.strings = strings
        self._decode_prompt = decode_prompt  # token ids -> text, for echo of a token-id prompt
        self._legacy = LegacyLogprobs(strings) if spec.logprobs and not chat else None
        self._echoed = False

    def _echo_text(self, prompt_ids) -> str:
        prompt = self.spec.prompt
        return prompt if isinstance(prompt, str) else self._decode_prompt(list(prompt_ids or prompt))

    def _prompt_piece(self, prompt_ids, records) -> tuple[str, dict | None]:
        text = self._echo_text(prompt_ids)
        logprobs = None
        if self._legacy is not None:
            ids = list(prompt_ids)
            logprobs = self._legacy.piece([(ids[0], None), *zip(ids[1:], records)] if ids else [])
            self._legacy.offset = len(text)  # generated tokens' offsets start after the echoed prompt
        return text, logprobs

    def _generated_logprobs(self, token_ids, records):
        if not self.spec.logprobs:
            return None
        if self.chat:
            return chat_logprobs(self.strings, records)
        return self._legacy.piece(list(zip(token_ids, records)))

    def stream_pieces(self, chunk: TextChunk) -> list[tuple[str, dict | None]]:
        """(text, logprobs object or None) to send for one streamed chunk; empty pieces are left out."""
        pieces = []
        if self.spec.echo and not self._echoed:
            self._echoed = True
            pieces.append(self._prompt_piece(chunk.prompt_token_ids or self.spec.prompt, chunk.prompt_logprobs))
        if not self.spec.drop_generated:
            logprobs = self._generated_logprobs(chunk.token_ids, chunk.logprobs) if chunk.token_ids else None
            pieces.append((chunk.text, logprobs))
        return [(text, logprobs) for text, logprobs in pieces if text or logprobs]

    def whole(self, completion: Completion) -> tuple[str, dict | None]:
        text, pieces = "", []
        if self.spec.echo:
            text, prompt_logprobs = self._prompt_piece(completion.prompt_token_ids, completion.prompt_logprobs)
            pieces.append(prompt_logprobs)
        if not self.spec.drop_generated:
            text += completion.text
            pieces.append(self._generated_logprobs(completion.token_ids, completion.logprobs))
        if not self.spec.logprobs:
            return text, None
        if self.chat:
            return text, pieces[-1] if pieces else chat_logprobs(self.strings, ())
        return text, merge_legacy([p for p in pieces if p])

    def completion_tokens(self, completion: Completion) -> int:
        return 0 if self.spec.drop_generated else completion.completion_tokens
