"""Group quantization formats of the ABI, as byte planes.

A quantized tensor [rows, cols] is two planes of bytes, one row per tensor row:
- value plane: W4G32 packs group g's 32 values in 16 bytes, byte j holding value j in
  its low nibble and value j+16 in its high nibble (GGUF Q4_1 order); W8G32 is one
  int8 per value.
- scale plane: per group, float16 d then float16 m (W4G32), or float16 d (W8G32).
These are GGUF's Q4_1 / Q8_0 blocks with the block header moved to its own plane,
so GGUF blocks are split, never re-rounded.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType, quants

from glitches.fpga_worker.abi import GROUP_SIZE, TensorFormat
from glitches.services.runtime.errors import InvalidArgument

_GGUF_TYPE = {TensorFormat.W4G32: GGMLQuantizationType.Q4_1, TensorFormat.W8G32: GGMLQuantizationType.Q8_0}
_HEADER_BYTES = {TensorFormat.W4G32: 4, TensorFormat.W8G32: 2}  # d (+ m) float16 at the start of a GGUF block


def split_gguf_blocks(raw: np.ndarray, fmt: TensorFormat, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """GGUF Q4_1 / Q8_0 bytes [rows, groups*block_bytes] -> (value plane, scale plane), both uint8 [rows, *]."""
    groups = cols // GROUP_SIZE
    blocks = np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, groups, -1)
    head = _HEADER_BYTES[fmt]
    return blocks[:, :, head:].reshape(rows, -1).copy(), blocks[:, :, :head].reshape(rows, -1).copy()


def quantize_rtn(weight: np.ndarray, fmt: TensorFormat) -> tuple[np.ndarray, np.ndarray]:
    """Float [rows, cols] -> planes, round-to-nearest with GGUF's own Q4_1 / Q8_0 quantizer."""
    rows, cols = weight.shape
    if cols % GROUP_SIZE:
        raise InvalidArgument(f"cannot group-quantize {cols} columns: not a multiple of {GROUP_SIZE}")
    raw = quants.quantize(np.ascontiguousarray(weight, dtype=np.float32), _GGUF_TYPE[fmt])
    return split_gguf_blocks(raw, fmt, rows, cols)


def unpack_values(values: np.ndarray, fmt: TensorFormat) -> torch.Tensor:
    """Value plane uint8 [rows, *] -> int8 q [rows, cols] in natural column order (W4: 0..15)."""
    plane = torch.from_numpy(np.ascontiguousarray(values))
    if fmt == TensorFormat.W8G32:
        return plane.view(torch.int8).clone()
    rows = plane.shape[0]
    nibbles = plane.view(rows, -1, GROUP_SIZE // 2)  # [rows, groups, 16]
    low, high = nibbles & 0x0F, nibbles >> 4  # values j and j+16 of each group
    return torch.cat([low, high], dim=-1).reshape(rows, -1).to(torch.int8)


def unpack_scales(scales: np.ndarray, fmt: TensorFormat) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale plane uint8 [rows, *] -> (d, m) float32 [rows, groups]; m is None for W8G32."""
    half = torch.from_numpy(np.ascontiguousarray(scales)).view(torch.float16).float()
    if fmt == TensorFormat.W8G32:
        return half, None
    return half[:, 0::2].contiguous(), half[:, 1::2].contiguous()


def dequantize(values: np.ndarray, scales: np.ndarray, fmt: TensorFormat) -> torch.Tensor:
    """Planes -> float32 [rows, cols], computed as GGUF does: d*q (+ m) in float32."""
    q = unpack_values(values, fmt).float()
    d, m = unpack_scales(scales, fmt)
    rows, cols = q.shape
    w = q.view(rows, -1, GROUP_SIZE) * d.unsqueeze(-1)
    if m is not None:
        w = w + m.unsqueeze(-1)
    return w.reshape(rows, cols)
