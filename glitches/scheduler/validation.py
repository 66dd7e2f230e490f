"""A Generate request checked and tokenized before the scheduler places it.

`validate` turns a GenerateInput into the prompt's token ids and the request's Sampling with the
model's EOS filled in, or raises InvalidArgument naming the field at fault (and, where a client acts
on it, a services.errors.REASON_*). Nothing here touches Redis or a worker.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from glitches.scheduler.settings import SchedulerSettings
from glitches.services.generation import grammar
from glitches.services.runtime.errors import (REASON_CONTEXT_LENGTH_EXCEEDED, REASON_MODEL_NOT_FOUND, REASON_PROMPT_TOO_LONG,
                             InvalidArgument)
from glitches.services.generation.sampling import Sampling, check_sampling

MAX_STOP_CHARS = 1000  # characters of one stop string


@dataclass(frozen=True)
class GenerateInput:
    prompt: str
    chat: bool
    sampling: Sampling
    model: str = ""
    prompt_token_ids: tuple[int, ...] = ()  # the prompt as token ids (then `prompt` is empty, `chat` ignored)
    cache_salt: bytes = b""  # the tenant's prefix-cache salt, from the authenticated API key (glitches/scheduler/server.py)


class ModelInfo:
    """What the scheduler needs of the model: tokenizer, EOS ids, context length."""

    def __init__(self, name: str, tokenizer, eos_token_ids: tuple[int, ...], max_context_tokens: int,
                 vocab_size: int = 0):
        self.name = name
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_context_tokens = max_context_tokens
        self.vocab_size = vocab_size or len(tokenizer)  # token ids must be below it

    def text_of(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def encode(self, prompt: str, chat: bool) -> list[int]:
        if chat:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            return [int(i) for i in ids]
        return list(self.tokenizer(prompt)["input_ids"])


def validate(request: GenerateInput, model: ModelInfo, settings: SchedulerSettings) -> tuple[list[int], Sampling]:
    """The prompt's token ids and the request's sampling with EOS filled in; INVALID_ARGUMENT otherwise.

    Each error names its field (GenerateRequest/SamplingParams field names) and, where a client
    acts on it, a reason (services.errors.REASON_*), as trailing metadata.
    """
    s = request.sampling
    if request.model and request.model != model.name:
        raise InvalidArgument(f"unknown model {request.model!r}: this cluster serves {model.name!r}",
                              field="model", reason=REASON_MODEL_NOT_FOUND)
    if request.prompt and request.prompt_token_ids:
        raise InvalidArgument("give the prompt as text or as token ids, not both", field="prompt")
    if not request.prompt and not request.prompt_token_ids:
        raise InvalidArgument("the prompt is empty; give some text", field="prompt")
    if s.max_new_tokens < 1:
        raise InvalidArgument(f"max_new_tokens must be at least 1, got {s.max_new_tokens}", field="max_new_tokens")
    if s.max_new_tokens > settings.max_new_tokens_limit:
        raise InvalidArgument(f"max_new_tokens {s.max_new_tokens} is above this cluster's limit of "
                              f"{settings.max_new_tokens_limit}", field="max_new_tokens")
    if not s.temperature >= 0.0:  # also rejects NaN
        raise InvalidArgument(f"temperature must be >= 0 (0 = greedy), got {s.temperature}", field="temperature")
    if not 0.0 < s.top_p <= 1.0:
        raise InvalidArgument(f"top_p must be in (0, 1], got {s.top_p}", field="top_p")
    if s.top_logprobs > settings.max_top_logprobs:
        raise InvalidArgument(f"top_logprobs {s.top_logprobs} is above this cluster's limit of "
                              f"{settings.max_top_logprobs} (--max-top-logprobs)", field="top_logprobs")
    if len(s.stop) > settings.max_stop_strings:
        raise InvalidArgument(f"{len(s.stop)} stop strings are more than this cluster's limit of "
                              f"{settings.max_stop_strings} (--max-stop-strings)", field="stop")
    if any(len(x) > MAX_STOP_CHARS for x in s.stop):
        raise InvalidArgument(f"stop strings have at most {MAX_STOP_CHARS} characters each, got one of "
                              f"{max(map(len, s.stop))}", field="stop")
    if s.min_tokens > s.max_new_tokens:
        raise InvalidArgument(f"min_tokens ({s.min_tokens}) must not be above max_new_tokens "
                              f"({s.max_new_tokens})", field="min_tokens")
    check_sampling(s)
    grammar.check_format(s)  # a schema the grammar compiler refuses: field response_format
    if request.prompt_token_ids:
        prompt_ids = list(request.prompt_token_ids)
        if max(prompt_ids) >= model.vocab_size:
            raise InvalidArgument(f"prompt token id {max(prompt_ids)} is outside the vocabulary "
                                  f"(ids 0..{model.vocab_size - 1})", field="prompt")
    else:
        prompt_ids = model.encode(request.prompt, request.chat)
    if not prompt_ids:
        raise InvalidArgument("the prompt tokenizes to nothing; give some text", field="prompt")
    limit = settings.max_prompt_tokens
    if limit and len(prompt_ids) > limit:
        raise InvalidArgument(f"the prompt has {len(prompt_ids)} tokens, above this cluster's limit of {limit} "
                              "(--max-prompt-tokens); shorten it", field="prompt", reason=REASON_PROMPT_TOO_LONG)
    context = model.max_context_tokens
    if len(prompt_ids) + s.max_new_tokens > context:
        raise InvalidArgument(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({s.max_new_tokens}) exceeds "
                              f"the model's context of {context} tokens; shorten the prompt or ask for fewer tokens",
                              field="prompt", reason=REASON_CONTEXT_LENGTH_EXCEEDED)
    eos = s.eos_token_ids or model.eos_token_ids
    sampling = dataclasses.replace(s, eos_token_ids=tuple(eos))
    return prompt_ids, sampling
