"""The GPU worker's KV budget, counted in blocks of BLOCK_TOKENS tokens.

The budget is a number of blocks fixed at start-up (a fraction of the device memory left
after the weights, or an explicit size). A request takes ceil(tokens / BLOCK_TOKENS) blocks
up front for everything it may hold (prompt + max_new_tokens for GPU assist; the prompt
alone for a prefill whose KV streams to an FPGA) and gives them back when it is released,
so a request admitted never runs out of KV half-way and nothing needs preempting.
"""

from __future__ import annotations

import threading

BLOCK_TOKENS = 16  # tokens per KV block (all layers, K and V)


def blocks_for(tokens: int) -> int:
    """Blocks that `tokens` tokens of KV take (rounded up)."""
    return -(-tokens // BLOCK_TOKENS)


class KvBudget:
    """A thread-safe count of free KV blocks."""

    def __init__(self, total_blocks: int, block_bytes: int):
        if total_blocks < 1:
            raise ValueError(f"a KV budget needs at least one block, got {total_blocks}")
        self.total_blocks = total_blocks
        self.block_bytes = block_bytes  # bytes of one block: BLOCK_TOKENS x kv_bytes_per_token
        self._free = total_blocks
        self._lock = threading.Lock()

    @property
    def free_blocks(self) -> int:
        with self._lock:
            return self._free

    def try_take(self, blocks: int) -> bool:
        """Take `blocks` if that many are free; False (and nothing taken) otherwise."""
        with self._lock:
            if blocks > self._free:
                return False
            self._free -= blocks
            return True

    def give_back(self, blocks: int) -> None:
        with self._lock:
            self._free += blocks
            assert self._free <= self.total_blocks, "KV blocks given back twice"
