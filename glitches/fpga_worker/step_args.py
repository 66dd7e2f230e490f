"""Per-step kernel arguments and result, as the bytes docs/fpga-kernel-abi.md (v2, section 5) specifies.

Both buffers live in the card's DDR (never PLRAM: the result is 64 + 4 * vocab bytes).

Arguments, 512 bytes, little-endian, every field naturally aligned:
    0 u32 ABI version (2) | 4 u32 token_id | 8 u32 position | 12 u32 kv_capacity_tokens
    16 u32 mode (0 = LOGITS) | 20 u32 kv_lane_stride (bytes between lane u and u + 1 inside a page)
    24 u32 kv_pages (block-table entries in use) | 28 u32 pc_bytes (bytes of each PC buffer the host allocated)
    32..63 zero | 64 u32 block_table[16]: page c (tokens 512c .. 512c + 511 of every lane) starts at this
    byte offset in every PC
Result, 64 + 4 * vocab bytes:
    0 u32 status | 4 u32 argmax token (lowest index on a tie) | 8 u32 vocab | 12..63 zero | 64 f32 logits [vocab]

The emulator's regions (KvPlan, contiguous) are the block table of consecutive pages
`kv_offset + c * block_bytes` with lane stride `slots_per_lane * block_bytes`
(`StepArgs.for_region`); a paged allocator gives any pages and lane stride = block_bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from glitches.fpga_worker.abi import ABI_VERSION, KV_PAGE_TOKENS, MAX_KV_PAGES, KernelStatus, OutputMode
from glitches.services.runtime.errors import InvalidArgument

_ARGS = struct.Struct("<8I")  # version, token, position, capacity, mode, lane stride, pages, pc_bytes
_RESULT_HEAD = struct.Struct("<3I")  # status, token, vocab
STEP_ARGS_BYTES = 512  # the argument buffer
BLOCK_TABLE_OFFSET = 64  # bytes from the start of the arguments to block_table[0]
RESULT_HEAD_BYTES = 64  # logits start here in the result buffer


@dataclass(frozen=True)
class StepArgs:
    token_id: int
    position: int
    kv_capacity_tokens: int
    kv_lane_stride: int  # bytes between lane u and lane u + 1 of one page in a PC
    block_table: tuple[int, ...]  # per page of 512 tokens: its byte offset in every PC
    pc_bytes: int  # bytes of each pseudo-channel buffer (256 MiB on a U280; less in a small emulator)
    mode: OutputMode = OutputMode.LOGITS

    @classmethod
    def for_region(cls, token_id: int, position: int, plan, kv_offset: int, pc_bytes: int) -> "StepArgs":
        """Arguments for a contiguous KvPlan region at kv_offset: consecutive pages, lane stride slots * block."""
        pages = -(-plan.capacity_tokens // KV_PAGE_TOKENS)
        table = tuple(kv_offset + c * plan.block_bytes for c in range(pages))
        return cls(token_id, position, plan.capacity_tokens, plan.slots_per_lane * plan.block_bytes, table, pc_bytes)

    def pack(self) -> bytes:
        if len(self.block_table) > MAX_KV_PAGES:
            raise InvalidArgument(f"{len(self.block_table)} KV pages exceed the ABI's block table of {MAX_KV_PAGES}")
        body = _ARGS.pack(ABI_VERSION, self.token_id, self.position, self.kv_capacity_tokens, int(self.mode),
                          self.kv_lane_stride, len(self.block_table), self.pc_bytes)
        table = np.zeros(MAX_KV_PAGES, dtype="<u4")
        table[: len(self.block_table)] = self.block_table
        return (body.ljust(BLOCK_TABLE_OFFSET, b"\0") + table.tobytes()).ljust(STEP_ARGS_BYTES, b"\0")

    @classmethod
    def unpack(cls, blob: bytes) -> "StepArgs":
        version, token, position, capacity, mode, stride, pages, pc_bytes = _ARGS.unpack_from(blob)
        if version != ABI_VERSION:
            raise InvalidArgument(f"step arguments are ABI version {version}, expected {ABI_VERSION}")
        if pages > MAX_KV_PAGES:
            raise InvalidArgument(f"{pages} KV pages exceed the ABI's block table of {MAX_KV_PAGES}")
        table = tuple(int(v) for v in np.frombuffer(blob, "<u4", pages, BLOCK_TABLE_OFFSET))
        return cls(token, position, capacity, stride, table, pc_bytes, OutputMode(mode))


@dataclass(frozen=True)
class StepResult:
    status: KernelStatus
    token: int  # argmax of the logits (lowest index on a tie); 0 unless status is OK
    logits: np.ndarray | None  # float32 [vocab] when status is OK

    def pack(self, vocab: int) -> bytes:
        head = _RESULT_HEAD.pack(int(self.status), self.token, vocab).ljust(RESULT_HEAD_BYTES, b"\0")
        return head + (b"" if self.logits is None else np.asarray(self.logits, dtype="<f4").tobytes())

    @classmethod
    def unpack(cls, blob: bytes, mode: OutputMode = OutputMode.LOGITS) -> "StepResult":
        status, token, vocab = _RESULT_HEAD.unpack_from(blob)
        logits = None
        if mode == OutputMode.LOGITS and status == KernelStatus.OK:
            logits = np.frombuffer(blob, dtype="<f4", count=vocab, offset=RESULT_HEAD_BYTES).copy()
        return cls(KernelStatus(status), token, logits)


def result_bytes(vocab: int) -> int:
    """Size of the result buffer the host allocates (in DDR): 64-byte head plus the logits."""
    return RESULT_HEAD_BYTES + 4 * vocab
