"""What a GPU's prefix cache and a card's held prefix save, in the simulator's terms (glitches/sim/node.py).

A GPU that holds `cached` leading tokens of a prompt computes only the rest; what that costs is one
forward pass over the new tokens with the cached ones already in KV, i.e. one prefill chunk
(new tokens, tokens already in KV) as the batching loop prices it (gpu_batching.step_time_s):
- a timing with a step model (RooflineTiming.step_s, a measured profile's fitted StepModel): per new
  token, plus the attention over the cached context (the roofline's KV read, the step model's
  per-context-token term);
- a timing without one (ConstantTiming, measured profiles without batched samples): prefill_s of the
  new tokens alone (attention over the cached context not charged, a stated approximation).
With nothing cached it is exactly prefill_s(prompt), so reuse off is priced as before reuse existed.

On the transfer paths the KV that streams GPU -> card covers [card_held, prompt): the whole prompt on
"transfer" / "fresh" (card_held 0), only what the holding card lacks on "transfer-partial".
"""

from __future__ import annotations

from glitches.sim.profiles import Timing


def gpu_reuse_tokens(held_tokens: int, prompt_tokens: int) -> int:
    """Prompt tokens a GPU takes from its cache: what it holds, but at least the last prompt token is computed
    (its logits give the first output token)."""
    return max(0, min(held_tokens, prompt_tokens - 1))


def cached_prefill_s(timing: Timing, new_tokens: int, cached_tokens: int) -> float:
    """Seconds for a batch-1 GPU to prefill `new_tokens` after `cached_tokens` already in its KV (docstring)."""
    step = getattr(timing, "step_s", None)
    if cached_tokens <= 0 or step is None:
        return timing.prefill_s(new_tokens)
    return step([(new_tokens, cached_tokens)], [])


def moved_kv_tokens(prompt_tokens: int, card_held_tokens: int) -> int:
    """Tokens whose KV streams GPU -> card: the prompt less the leading tokens the card already holds."""
    return prompt_tokens - card_held_tokens
