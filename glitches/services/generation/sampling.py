"""Choosing the next token from logits, the same way on every device.

Randomness comes from (seed, token index) alone, so a request sampled with a
seed produces the same tokens whichever worker decodes it, and after a
migration. Temperature 0 is greedy (argmax), matching transformers'
`generate(do_sample=False)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from glitches.services.runtime.errors import InvalidArgument
from glitches.services.generation.logprobs import TokenLogprob, token_logprob

_GOLDEN = 0x9E3779B97F4A7C15  # spreads consecutive indices across the seed space
_MASK63 = (1 << 63) - 1


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # in (0, 1]
    seed: int = 0
    max_new_tokens: int = 16  # counts the first token (from prefill)
    stop: tuple[str, ...] = ()
    eos_token_ids: tuple[int, ...] = field(default=())
    # structured output (glitches/services/generation/grammar.py masks the logits): "" free text, "json_object" or "json_schema"
    response_format: str = ""
    json_schema: str = ""  # the JSON Schema as JSON text, with response_format "json_schema"
    logprobs: bool = False  # return each generated token's TokenLogprob
    top_logprobs: int = 0  # with logprobs / prompt_logprobs: this many most likely tokens per position
    prompt_logprobs: bool = False  # prefill also scores every prompt token after the first
    ignore_eos: bool = False  # EOS ids never end generation
    min_tokens: int = 0  # EOS masked out and stop strings ignored until this many tokens are generated

    @classmethod
    def from_proto(cls, msg) -> Sampling:
        return cls(temperature=msg.temperature, top_p=msg.top_p if msg.HasField("top_p") else 1.0, seed=msg.seed,
                   max_new_tokens=msg.max_new_tokens, stop=tuple(msg.stop), eos_token_ids=tuple(msg.eos_token_ids),
                   response_format=_FORMAT_FROM_PROTO.get(msg.response_format, "?"), json_schema=msg.json_schema,
                   logprobs=msg.logprobs, top_logprobs=msg.top_logprobs, prompt_logprobs=msg.prompt_logprobs,
                   ignore_eos=msg.ignore_eos, min_tokens=msg.min_tokens)

    def to_proto(self, msg_cls):
        return msg_cls(temperature=self.temperature, top_p=self.top_p, seed=self.seed,
                       max_new_tokens=self.max_new_tokens, stop=list(self.stop), eos_token_ids=list(self.eos_token_ids),
                       response_format=_FORMAT_TO_PROTO[self.response_format], json_schema=self.json_schema,
                       logprobs=self.logprobs, top_logprobs=self.top_logprobs, prompt_logprobs=self.prompt_logprobs,
                       ignore_eos=self.ignore_eos, min_tokens=self.min_tokens)


# SamplingParams.response_format (common.proto ResponseFormatKind) <-> Sampling.response_format;
# an enum value this build does not know becomes "?", which check_sampling refuses
_FORMAT_FROM_PROTO = {0: "", 1: "json_object", 2: "json_schema"}
_FORMAT_TO_PROTO = {v: k for k, v in _FORMAT_FROM_PROTO.items()}


def check_sampling(sampling: Sampling) -> None:
    """Refuse what sample_token cannot honour. Workers check too: their RPCs can be called directly."""
    if not 0.0 <= sampling.temperature < math.inf:  # also rejects NaN
        raise InvalidArgument(f"sampling.temperature must be a finite number >= 0 (0 = greedy), "
                              f"got {sampling.temperature}")
    if not 0.0 < sampling.top_p <= 1.0:
        raise InvalidArgument(f"sampling.top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.response_format not in _FORMAT_TO_PROTO:
        raise InvalidArgument("sampling.response_format is not a ResponseFormatKind this worker knows",
                              field="response_format")


def sample_token(logits: torch.Tensor, sampling: Sampling, index: int) -> int:
    """Pick the token at generated position `index` from logits [vocab]."""
    if sampling.temperature <= 0.0:
        return int(torch.argmax(logits).item())
    # subtract the max before dividing: a tiny temperature (1e-30) would otherwise overflow to inf - inf = NaN
    logits = logits.float()
    probs = torch.softmax((logits - logits.max()) / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep a token while the mass before it is below top_p (the top token always stays)
        keep = (torch.cumsum(sorted_probs, dim=-1) - sorted_probs) < sampling.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    generator = torch.Generator().manual_seed((sampling.seed + index * _GOLDEN) & _MASK63)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator).item())


def sample(logits: torch.Tensor, sampling: Sampling, index: int,
           raw_logits: torch.Tensor | None = None) -> tuple[int, TokenLogprob | None]:
    """Pick the token at generated position `index` from logits [vocab], with its TokenLogprob when
    sampling.logprobs (else None). Every device's decode loop and prefill call this one function.
    `raw_logits` [vocab]: the model's logits before a grammar mask (glitches/services/generation/grammar.py) was applied to
    `logits`; the logprob is of those (default: `logits` themselves).

    Before min_tokens tokens exist (index < min_tokens), EOS ids are masked out of sampling (as vLLM's
    min_tokens does); the logprob is always of the raw logits (glitches/services/generation/logprobs.py).
    """
    chosen_from = logits
    if index < sampling.min_tokens and sampling.eos_token_ids:
        chosen_from = logits.clone()
        chosen_from[[t for t in sampling.eos_token_ids if t < logits.shape[-1]]] = -math.inf
    token = sample_token(chosen_from, sampling, index)
    scored = logits if raw_logits is None else raw_logits
    return token, token_logprob(scored, token, sampling.top_logprobs) if sampling.logprobs else None
