"""Per-step kernel arguments and result, as the bytes docs/fpga-kernel-abi.md specifies.

The emulator calls DecodeKernel.step directly; an xrt backend writes these bytes to
the argument buffer and reads the result buffer after each kernel call.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from fpga_worker.abi import ABI_VERSION, KernelStatus, OutputMode
from services.errors import InvalidArgument

# version, token_id, position, kv_capacity_tokens, kv_offset, mode, temperature, top_p, reserved, seed; 48 bytes
_ARGS = struct.Struct("<4IQIffIQ")
_RESULT_HEAD = struct.Struct("<4I")  # status, token, vocab, reserved; float32 logits [vocab] follow in LOGITS mode
STEP_ARGS_BYTES = 64  # the argument buffer, zero padded


@dataclass(frozen=True)
class StepArgs:
    token_id: int
    position: int
    kv_capacity_tokens: int
    kv_offset: int  # bytes from the start of every PC to the request's KV region
    mode: OutputMode = OutputMode.LOGITS
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def pack(self) -> bytes:
        if self.mode == OutputMode.TOP_P and not (0.0 < self.top_p <= 1.0 and self.temperature > 0.0):
            raise InvalidArgument(f"top-p sampling needs 0 < top_p <= 1 and temperature > 0, "
                                  f"got top_p={self.top_p}, temperature={self.temperature}")
        body = _ARGS.pack(ABI_VERSION, self.token_id, self.position, self.kv_capacity_tokens, self.kv_offset,
                          int(self.mode), self.temperature, self.top_p, 0, self.seed)
        return body.ljust(STEP_ARGS_BYTES, b"\0")

    @classmethod
    def unpack(cls, blob: bytes) -> "StepArgs":
        version, token, position, capacity, offset, mode, temperature, top_p, _, seed = _ARGS.unpack_from(blob)
        if version != ABI_VERSION:
            raise InvalidArgument(f"step arguments are ABI version {version}, expected {ABI_VERSION}")
        return cls(token, position, capacity, offset, OutputMode(mode), temperature, top_p, seed)


@dataclass(frozen=True)
class StepResult:
    status: KernelStatus
    token: int  # the chosen token in GREEDY / TOP_P modes; 0 in LOGITS mode
    logits: np.ndarray | None  # float32 [vocab] in LOGITS mode

    def pack(self, vocab: int) -> bytes:
        head = _RESULT_HEAD.pack(int(self.status), self.token, vocab, 0)
        return head + (b"" if self.logits is None else np.asarray(self.logits, dtype="<f4").tobytes())

    @classmethod
    def unpack(cls, blob: bytes, mode: OutputMode) -> "StepResult":
        status, token, vocab, _ = _RESULT_HEAD.unpack_from(blob)
        logits = None
        if mode == OutputMode.LOGITS and status == KernelStatus.OK:
            logits = np.frombuffer(blob, dtype="<f4", count=vocab, offset=_RESULT_HEAD.size).copy()
        return cls(KernelStatus(status), token, logits)


def result_bytes(vocab: int) -> int:
    """Size of the result buffer the host allocates: header plus room for LOGITS mode."""
    return _RESULT_HEAD.size + 4 * vocab
