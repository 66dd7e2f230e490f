"""The device-independent decode loop: step, sample, check for the end.

Both the FPGA worker (from KV in HBM) and the GPU worker (GPU assist) run it
with their own `step(token_id, position) -> logits [vocab]`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

import torch

from services.errors import InvalidArgument
from services.sampling import Sampling, sample_token


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


def finish_reason(generated: list[int], sampling: Sampling, text_of: Callable[[list[int]], str]) -> Finish | None:
    """Why generation ends after `generated` (all tokens so far), or None to go on."""
    if generated and generated[-1] in sampling.eos_token_ids:
        return Finish.EOS
    if sampling.stop and any(s in text_of(generated) for s in sampling.stop):
        return Finish.STOP
    if len(generated) >= sampling.max_new_tokens:
        return Finish.LENGTH
    return None


def decode_loop(step: Callable[[int, int], torch.Tensor], generated: list[int], position: int,
                sampling: Sampling, text_of: Callable[[list[int]], str],
                cancelled: Callable[[], bool] = lambda: False,
                modeled_s: Callable[[], float] = lambda: 0.0) -> Iterator[Step]:
    """Feed generated[-1] at `position`, then each new token, yielding every new token.

    `generated` holds the tokens produced so far (at least prefill's first token);
    it is extended in place. Stops on max_new_tokens, EOS, a stop string, or when
    `cancelled()` turns true.
    """
    generated = list(generated)
    while not cancelled():
        started = time.perf_counter()
        logits = step(generated[-1], position)
        if bool(torch.isnan(logits).any() or torch.isposinf(logits).any()):  # -inf: a token ruled out, fine
            raise InvalidArgument(f"the logits at position {position} hold NaN or +Inf: the request's KV holds "
                                  "NaN or Inf values; send finite KV")
        token = sample_token(logits, sampling, len(generated))
        elapsed = time.perf_counter() - started
        generated.append(token)
        position += 1
        finish = finish_reason(generated, sampling, text_of)
        yield Step(token, len(generated) - 1, elapsed, finish, modeled_s())
        if finish is not None:
            return
