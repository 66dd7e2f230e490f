"""The GPU worker's default number of GPU-assist slots, from its KV budget (used when --slots is 0).

Rule: slots = the requests of a typical context the KV budget holds at once,
          capped at half of --max-batch-tokens, and at least 1.

- Typical context: TYPICAL_CONTEXT_TOKENS = 2048 tokens (the paper's workload, 1536 prompt + 512 output
  tokens, which is also what admission reserves for such a request: prompt + max_new_tokens), or the
  model's whole context when that is shorter. A GPU-assist request holds KV for all of it from
  admission on (glitches/gpu_worker/request_table.py), so more slots than this could not be filled with
  typical requests anyway; fewer leaves KV idle while requests wait in the scheduler (issue #25:
  with 4 slots a GPU-only cluster served 8 concurrent requests in two waves although its KV had room).
- Cap: every GPU-assist decode is one row of every step's --max-batch-tokens; capping the slots at
  half of it keeps at least half of each step for prefill chunks, so a new prompt's prefill still
  advances at least half a step's tokens per step while every slot decodes (TTFT stays bounded).
- Shorter requests than typical still fit (admission checks the real KV need per request); longer ones
  are refused by the KV check, not the slot count.
"""

from __future__ import annotations

from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS

TYPICAL_CONTEXT_TOKENS = 2048  # tokens of KV one typical GPU-assist request holds (prompt + max_new_tokens)


def default_assist_slots(kv_blocks: int, max_context_tokens: int, max_batch_tokens: int) -> int:
    """GPU-assist slots for a KV budget of `kv_blocks` blocks of KV_BLOCK_TOKENS tokens (the module's rule)."""
    typical_tokens = min(TYPICAL_CONTEXT_TOKENS, max_context_tokens)
    blocks_per_request = -(-typical_tokens // KV_BLOCK_TOKENS)  # rounded up, as admission does
    return max(1, min(kv_blocks // blocks_per_request, max_batch_tokens // 2))
