"""Decode from a held prefix: step the prompt's remaining tokens forced, then decode as usual.

Protocol (Worker/DecodeFromHeld, glitches/fpga_worker/server.py): the card has adopted a region whose
first `held` tokens hold the prompt's KV (glitches/decode_contract/emu_kv.py, adopt). This loop feeds
prompt[held:] one token at a time at positions held .. len(prompt) - 1 (the tokens are forced: their
logits are not sampled, only their KV is written), samples generated token 0 from the last forced
step's logits exactly as prefill would (services.sampling.sample at index 0, the grammar mask applied),
then hands over to the shared decode loop (services/generation/decoding.py) from position len(prompt).
held < len(prompt) always (the card holds back at least one prompt token), so there is a last step.

Prompt logprobs (sampling.prompt_logprobs; the server then passes held = 0): the logits of the forced step
at position p score prompt[p + 1] (services/generation/logprobs.py, token_logprob with top_logprobs
alternatives), so positions 0 .. len(prompt) - 2 give one record per prompt token after the first, the
shapes GPU prefill returns. They are appended to `prompt_scores` before the first Step is yielded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from glitches.services.generation.decoding import Step, decode_loop, finish_reason, sample_next
from glitches.services.generation.logprobs import TokenLogprob, token_logprob
from glitches.services.generation.sampling import Sampling
from glitches.services.runtime.errors import InvalidArgument


def decode_from_held(step: Callable[[int, int], torch.Tensor], prompt: list[int], held: int, sampling: Sampling,
                     text_of: Callable[[list[int]], str], cancelled: Callable[[], bool] = lambda: False,
                     modeled_s: Callable[[], float] = lambda: 0.0, constraint=None,
                     prompt_scores: list[TokenLogprob] | None = None) -> Iterator[Step]:
    """Yield the generated tokens (index 0 first) of `prompt` whose first `held` tokens' KV is in place.

    step(token_id, position) -> logits [vocab] float32 appends the token's KV. The first Step's step_s is
    the time of all forced steps together (the card's own "prefill"). prompt_scores (a list, with held = 0)
    receives the prompt's logprobs (module docstring); None: the prompt is not scored.
    """
    if prompt_scores is not None and held:
        raise InvalidArgument(f"prompt logprobs need the whole prompt stepped; {held} tokens were held")
    if not 0 <= held < len(prompt):
        raise InvalidArgument(f"held prefix of {held} tokens must leave at least one of the prompt's "
                              f"{len(prompt)} tokens to step")
    started = time.perf_counter()
    logits = None
    for position in range(held, len(prompt)):
        if cancelled():
            return
        logits = step(prompt[position], position)
        if prompt_scores is not None and position + 1 < len(prompt):
            prompt_scores.append(token_logprob(logits, prompt[position + 1], sampling.top_logprobs))
    token, logprob = sample_next(logits, sampling, 0, constraint, len(prompt) - 1,
                                 "the held KV holds NaN or Inf values")
    generated = [token]
    finish = finish_reason(generated, sampling, text_of, constraint)
    yield Step(token, 0, time.perf_counter() - started, finish, modeled_s(), logprob)
    if finish is None:
        yield from decode_loop(step, generated, len(prompt), sampling, text_of, cancelled, modeled_s, constraint)
