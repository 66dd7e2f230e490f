"""The device-independent decode loop: step, sample, check for the end.

Both the FPGA worker (from KV in HBM) and the GPU worker (GPU assist) run it
with their own `step(token_id, position) -> logits [vocab]`. With a response format, the
caller passes the request's `services.grammar.Constraint`: it masks the logits before each
token is sampled, and the request finishes with STOP once the JSON value is complete.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

import torch

from glitches.services.runtime.errors import InvalidArgument
from glitches.services.generation.logprobs import TokenLogprob
from glitches.services.generation.sampling import Sampling, sample


class Finish(str, Enum):
    LENGTH = "length"
    EOS = "eos"
    STOP = "stop"


@dataclass(frozen=True)
class Step:
    token_id: int
    index: int  # index among generated tokens (prefill's first token is 0)
    step_s: float  # device time of this step, seconds
    finish: Finish | None  # set on the last token
    modeled_step_s: float = 0.0  # modeled accelerator time, seconds (emulators only)
    logprobs: TokenLogprob | None = None  # with sampling.logprobs


def stop_search_start(text_of: Callable[[list[int]], str], generated: list[int], min_tokens: int) -> int:
    """The character offset a stop string must end beyond to count: the length of the text of the first
    min_tokens - 1 tokens, so a stop string counts only once min_tokens tokens exist and never if it was
    complete before then (vLLM's rule). 0 without min_tokens."""
    if min_tokens <= 1:
        return 0
    return len(text_of(generated[: min_tokens - 1]))


def find_stop(text: str, stops: tuple[str, ...], start: int) -> int:
    """Index in `text` of the earliest stop string that ends after character `start`, or -1."""
    found = [i for s in stops if s and (i := text.find(s, max(0, start - len(s) + 1))) >= 0]
    return min(found, default=-1)


def finish_reason(generated: list[int], sampling: Sampling, text_of: Callable[[list[int]], str],
                  constraint=None) -> Finish | None:
    """Why generation ends after `generated` (all tokens so far), or None to go on.

    EOS ends it unless sampling.ignore_eos; EOS and stop strings count only once min_tokens exist.
    `constraint` (a services.grammar.Constraint, or None) ends it with STOP once its grammar is complete.
    """
    honour = len(generated) >= sampling.min_tokens
    if honour and not sampling.ignore_eos and generated and generated[-1] in sampling.eos_token_ids:
        return Finish.EOS
    if honour and sampling.stop:
        text = text_of(generated)
        if find_stop(text, sampling.stop, stop_search_start(text_of, generated, sampling.min_tokens)) >= 0:
            return Finish.STOP
    if constraint is not None and constraint.done:
        return Finish.STOP
    if len(generated) >= sampling.max_new_tokens:
        return Finish.LENGTH
    return None


def sample_next(logits: torch.Tensor, sampling: Sampling, index: int, constraint, position: int,
                kv_fix: str = "the request's KV holds NaN or Inf values; send finite KV"):
    """Generated token number `index` from one position's logits [vocab] float32: refused (INVALID_ARGUMENT,
    saying `kv_fix`) when they hold NaN or +Inf (-inf is a token ruled out, fine), masked by `constraint`
    (advanced over the token) and sampled. Returns (token id, its TokenLogprob or None)."""
    if bool(torch.isnan(logits).any() or torch.isposinf(logits).any()):
        raise InvalidArgument(f"the logits at position {position} hold NaN or +Inf: {kv_fix}")
    masked = constraint.mask(logits) if constraint is not None else logits
    token, logprob = sample(masked, sampling, index, raw_logits=logits)
    if constraint is not None:
        constraint.advance(token)
    return token, logprob


def decode_loop(step: Callable[[int, int], torch.Tensor], generated: list[int], position: int,
                sampling: Sampling, text_of: Callable[[list[int]], str],
                cancelled: Callable[[], bool] = lambda: False,
                modeled_s: Callable[[], float] = lambda: 0.0, constraint=None) -> Iterator[Step]:
    """Feed generated[-1] at `position`, then each new token, yielding every new token.

    `generated` holds the tokens produced so far (at least prefill's first token);
    it is extended in place. Stops on max_new_tokens, EOS, a stop string, or when
    `cancelled()` turns true. `constraint` (services.grammar.Constraint, already advanced over
    `generated`) masks each step's logits before sampling.
    """
    generated = list(generated)
    while not cancelled():
        started = time.perf_counter()
        logits = step(generated[-1], position)
        token, logprob = sample_next(logits, sampling, len(generated), constraint, position)
        elapsed = time.perf_counter() - started
        generated.append(token)
        position += 1
        finish = finish_reason(generated, sampling, text_of, constraint)
        yield Step(token, len(generated) - 1, elapsed, finish, modeled_s(), logprob)
        if finish is not None:
            return
