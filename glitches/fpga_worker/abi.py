"""Constants and byte layout of the host <-> decode-kernel ABI, version 2 (docs/fpga-kernel-abi.md).

Everything here is pure arithmetic on model dimensions, so host code, the software
emulator, the C-simulated kernel's host wrapper, the timing model and tests all
compute the same byte offsets. The kernel source's own copy of these constants is
glitches/fpga_worker/kernel/glitches_abi.h; tests/test_kernel_csim.py checks the two agree.

HBM is seen as 32 pseudo-channels (PCs) of 256 MiB. Every PC holds the same
layout: a 64 KiB header area, then one row slice of every weight tensor (row r of a
tensor lives in PC r % 32, slot r // 32, every row padded to 64 bytes), then KV pages.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from glitches.kv_plane.kv_abi import HBM_CHANNELS, KV_ALIGN, KV_BLOCK_TOKENS, KV_ELEMENT_BYTES
from glitches.services.runtime.errors import InvalidArgument

ABI_VERSION = 2
MAGIC = b"GLWI"  # "GLITCHES weight image"
# HBM_CHANNELS (32 PCs), KV_BLOCK_TOKENS (16), KV_ELEMENT_BYTES (2, float16) and KV_ALIGN (4 KiB) come from
# kv_plane.kv_abi: the KV region is the part of this ABI that every sender and decode device shares.
CHANNEL_BYTES = 256 * 1024 * 1024  # bytes per pseudo-channel (8 GiB / 32)
HBM_BYTES = HBM_CHANNELS * CHANNEL_BYTES
GROUP_SIZE = 32  # weights per quantization group (along the input dimension)
HEADER_BYTES = 64 * 1024  # header area at the start of every PC (only PC 0's is written)
TENSOR_ALIGN = 256  # every tensor slice starts on a 256-byte boundary inside a PC
PLANE_ALIGN = 64  # the scale plane starts on a 64-byte boundary after the nibble plane
ROW_ALIGN = 64  # every row of every plane is padded to a multiple of 64 bytes (one AXI beat of 512 bits)
NAME_BYTES = 32  # tensor name field in the header table, ASCII, NUL padded
FIXED_HEADER_BYTES = 128  # the header's fixed part; tensor records follow at this offset
RECORD_BYTES = 64  # one tensor record
VECTOR_COLS = 16  # an F32 vector of n elements is stored as rows of 16 (64 bytes): [n / 16, 16]
KV_PAGE_TOKENS = HBM_CHANNELS * KV_BLOCK_TOKENS  # one block-table entry: 512 tokens of every lane
MAX_KV_PAGES = 16  # block-table entries in the step arguments: up to 8,192 tokens (the kernel's score buffer)


class TensorFormat(IntEnum):
    W4G32 = 1  # uint4 q, per 32-group float16 scale d and float16 min m: w = d*q + m (GGUF Q4_1)
    W8G32 = 2  # int8 q, per 32-group float16 scale d: w = d*q (GGUF Q8_0)
    F32 = 3  # float32, one element per row (vectors such as RMSNorm weights)


class KernelStatus(IntEnum):
    OK = 0
    BAD_IMAGE = 1  # header magic, ABI version or geometry does not match the bitstream
    TOKEN_OUT_OF_RANGE = 2  # token_id >= vocab
    POSITION_OUT_OF_RANGE = 3  # position >= kv_capacity_tokens, or past the RoPE table / block table
    KV_OUT_OF_BOUNDS = 4  # a KV page below kv_base or running past the end of a PC
    BAD_MODE = 5  # unknown output mode, or step arguments of another ABI version
    NON_FINITE = 6  # NaN or Inf appeared in the logits


class OutputMode(IntEnum):
    LOGITS = 0  # write float32 logits [vocab] and their argmax; the host samples (ABI v2 has no on-card sampling)


@dataclass(frozen=True)
class ModelDims:
    """The shape of a Llama-family decoder, all the kernel needs besides weights."""

    num_layers: int
    hidden: int
    num_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool
    max_positions: int = 4096  # rows of the image's RoPE table: positions the kernel can decode at

    @classmethod
    def from_config(cls, config, check_rope: bool = True) -> "ModelDims":
        """From a transformers LlamaConfig-like object or a config.json dict.

        check_rope=False accepts RoPE variants the kernel cannot run (enough for the timing model).
        """
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        rope = get("rope_parameters") or get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
        if check_rope and rope_type != "default":
            raise InvalidArgument(f"rope type {rope_type!r} is not supported by the decode kernel; only 'default'")
        theta = rope.get("rope_theta") if isinstance(rope, dict) else None
        theta = theta or get("rope_theta") or 10000.0
        missing = [k for k in ("num_attention_heads", "hidden_size", "num_hidden_layers", "intermediate_size",
                               "vocab_size") if get(k) is None]
        if missing:
            raise InvalidArgument(f"model config lacks {', '.join(missing)}: is it a Llama-family config?")
        heads = int(get("num_attention_heads"))
        hidden = int(get("hidden_size"))
        head_dim = int(get("head_dim") or hidden // heads)
        dims = cls(
            num_layers=int(get("num_hidden_layers")),
            hidden=hidden,
            num_heads=heads,
            kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=head_dim,
            intermediate=int(get("intermediate_size")),
            vocab=int(get("vocab_size")),
            rope_theta=as_f32(float(theta)),
            rms_eps=as_f32(float(get("rms_norm_eps") or 1e-6)),
            tied_embeddings=bool(get("tie_word_embeddings", False)),
            max_positions=min(int(get("max_position_embeddings") or 4096), MAX_KV_PAGES * KV_PAGE_TOKENS),
        )
        dims.check()
        return dims

    @classmethod
    def from_config_path(cls, path: str | Path, check_rope: bool = True) -> "ModelDims":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise InvalidArgument(f"no config.json at {path}: give a transformers model directory or its config.json")
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise InvalidArgument(f"cannot read {path} as JSON: {err}")
        return cls.from_config(config, check_rope)

    def check(self) -> None:
        for name in ("hidden", "intermediate"):
            if getattr(self, name) % GROUP_SIZE:
                raise InvalidArgument(f"{name}={getattr(self, name)} must be a multiple of the group size {GROUP_SIZE}")
        if self.num_heads * self.head_dim % GROUP_SIZE:
            raise InvalidArgument(f"num_heads*head_dim must be a multiple of {GROUP_SIZE}")
        if self.num_heads % self.kv_heads:
            raise InvalidArgument(f"num_heads={self.num_heads} must be a multiple of kv_heads={self.kv_heads}")
        if self.head_dim % 16:
            raise InvalidArgument(f"head_dim={self.head_dim} must be a multiple of 16 (RoPE halves of 8-float lanes)")
        if not 1 <= self.max_positions <= MAX_KV_PAGES * KV_PAGE_TOKENS:
            raise InvalidArgument(f"max_positions={self.max_positions} must be in 1..{MAX_KV_PAGES * KV_PAGE_TOKENS}")


@dataclass(frozen=True)
class TensorSpec:
    name: str  # e.g. "blk.3.attn_q", GGUF names without ".weight"
    fmt: TensorFormat
    rows: int  # output features; an F32 vector of n elements has n / 16 rows
    cols: int  # input features; 16 for F32 vectors, head_dim for the RoPE table

    @property
    def rows_per_channel(self) -> int:
        return math.ceil(self.rows / HBM_CHANNELS)

    @property
    def qs_row_bytes(self) -> int:
        """Bytes of one row in the value plane."""
        if self.fmt == TensorFormat.W4G32:
            return self.cols // 2
        if self.fmt == TensorFormat.W8G32:
            return self.cols
        return 4 * self.cols

    @property
    def scale_row_bytes(self) -> int:
        """Bytes of one row in the scale plane: per group (d, m) float16 for W4, d float16 for W8."""
        groups = self.cols // GROUP_SIZE
        return {TensorFormat.W4G32: 4 * groups, TensorFormat.W8G32: 2 * groups}.get(self.fmt, 0)

    @property
    def value_stride(self) -> int:
        """Bytes between consecutive slots of the value plane in a PC: the row padded to 64 bytes."""
        return align_up(self.qs_row_bytes, ROW_ALIGN)

    @property
    def scale_stride(self) -> int:
        """Bytes between consecutive slots of the scale plane in a PC (0 when there is no scale plane)."""
        return align_up(self.scale_row_bytes, ROW_ALIGN)


@dataclass(frozen=True)
class TensorEntry:
    spec: TensorSpec
    offset: int  # bytes from the start of every PC to this tensor's slice
    scale_offset: int  # bytes from the start of every PC to the slice's scale plane

    @property
    def end(self) -> int:
        return self.scale_offset + self.spec.rows_per_channel * self.spec.scale_stride


def as_f32(value: float) -> float:
    """value rounded to float32 (the header stores rms_eps and rope_theta as f32, the kernel computes in f32)."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def tensor_plan(dims: ModelDims, embed_format: TensorFormat = TensorFormat.W8G32) -> list[TensorSpec]:
    """Every tensor of the image, in image order."""
    h, q_rows, kv_rows = dims.hidden, dims.num_heads * dims.head_dim, dims.kv_heads * dims.head_dim
    w4, f32 = TensorFormat.W4G32, TensorFormat.F32
    # rope: row p = cos(p * inv_freq) [head_dim / 2] then sin(p * inv_freq) [head_dim / 2], float32
    specs: list[TensorSpec] = [TensorSpec("rope_cos_sin", f32, dims.max_positions, dims.head_dim)]
    for layer in range(dims.num_layers):
        p = f"blk.{layer}."
        specs += [
            TensorSpec(p + "attn_norm", f32, h // VECTOR_COLS, VECTOR_COLS),
            TensorSpec(p + "attn_q", w4, q_rows, h),
            TensorSpec(p + "attn_k", w4, kv_rows, h),
            TensorSpec(p + "attn_v", w4, kv_rows, h),
            TensorSpec(p + "attn_output", w4, h, q_rows),
            TensorSpec(p + "ffn_norm", f32, h // VECTOR_COLS, VECTOR_COLS),
            TensorSpec(p + "ffn_gate", w4, dims.intermediate, h),
            TensorSpec(p + "ffn_up", w4, dims.intermediate, h),
            TensorSpec(p + "ffn_down", w4, h, dims.intermediate),
        ]
    specs += [TensorSpec("output_norm", f32, h // VECTOR_COLS, VECTOR_COLS),
              TensorSpec("token_embd", embed_format, dims.vocab, h)]
    if not dims.tied_embeddings:
        specs.append(TensorSpec("output", w4, dims.vocab, h))
    return specs


def place_tensors(specs: list[TensorSpec]) -> tuple[list[TensorEntry], int]:
    """Offsets of each tensor slice inside a PC; returns (entries, kv_base bytes)."""
    entries, cursor = [], HEADER_BYTES
    for spec in specs:
        offset = align_up(cursor, TENSOR_ALIGN)
        scale_offset = align_up(offset + spec.rows_per_channel * spec.value_stride, PLANE_ALIGN)
        entry = TensorEntry(spec, offset, scale_offset)
        entries.append(entry)
        cursor = entry.end
    return entries, align_up(cursor, KV_ALIGN)


# Header (ABI v2): a 128-byte fixed part, every field at its natural alignment, then one 64-byte record per
# tensor at 128 + 64 i. Little-endian. Offsets of the fixed part:
#   0 magic "GLWI" | 4 version | 8 PCs | 12 group size | 16 KV block tokens | 20 layers | 24 hidden | 28 heads
#   32 KV heads | 36 head_dim | 40 intermediate | 44 vocab | 48 tied | 52 max_positions | 56 f32 rms_eps
#   60 f32 rope_theta (informational: the kernel reads the RoPE table) | 64 u64 kv_base | 72 tensor count
#   76 record bytes (64) | 80 records offset (128) | 84 row alignment (64) | 88..127 zero
_HEADER = struct.Struct("<4s13I2fQ4I")
# record: name[32], fmt, rows, cols, rows_per_pc, value_stride, scale_stride, offset, scale_offset (all u32)
_RECORD = struct.Struct(f"<{NAME_BYTES}s8I")
assert _HEADER.size == 88 and _RECORD.size == RECORD_BYTES


def pack_header(dims: ModelDims, entries: list[TensorEntry], kv_base: int) -> bytes:
    table = b"".join(
        _RECORD.pack(e.spec.name.encode("ascii"), e.spec.fmt, e.spec.rows, e.spec.cols, e.spec.rows_per_channel,
                     e.spec.value_stride, e.spec.scale_stride, e.offset, e.scale_offset)
        for e in entries
    )
    head = _HEADER.pack(
        MAGIC, ABI_VERSION, HBM_CHANNELS, GROUP_SIZE, KV_BLOCK_TOKENS, dims.num_layers, dims.hidden,
        dims.num_heads, dims.kv_heads, dims.head_dim, dims.intermediate, dims.vocab, int(dims.tied_embeddings),
        dims.max_positions, dims.rms_eps, dims.rope_theta, kv_base, len(entries), RECORD_BYTES,
        FIXED_HEADER_BYTES, ROW_ALIGN,
    )
    blob = head.ljust(FIXED_HEADER_BYTES, b"\0") + table
    if len(blob) > HEADER_BYTES:
        raise InvalidArgument(f"{len(entries)} tensors do not fit the {HEADER_BYTES}-byte header area")
    return blob


def unpack_header(blob: bytes) -> tuple[ModelDims, list[TensorEntry], int]:
    """Parse PC 0's header area; raises InvalidArgument on a foreign, older or mismatched image."""
    magic, version = struct.unpack_from("<4sI", blob, 0)
    if magic != MAGIC:
        raise InvalidArgument(f"not a GLITCHES weight image (magic {magic!r}, expected {MAGIC!r})")
    if version != ABI_VERSION:
        raise InvalidArgument(f"weight image is ABI version {version}; this host and kernel implement version "
                              f"{ABI_VERSION} only: rebuild the image (fpga_worker.weight_image)")
    fields = _HEADER.unpack_from(blob, 0)
    channels, group, block = fields[2:5]
    if (channels, group, block) != (HBM_CHANNELS, GROUP_SIZE, KV_BLOCK_TOKENS):
        raise InvalidArgument(f"image built for channels/group/block {channels}/{group}/{block}")
    layers, hidden, heads, kv_heads, head_dim, inter, vocab, tied, max_positions = fields[5:14]
    eps, theta, kv_base, count = fields[14:18]
    dims = ModelDims(layers, hidden, heads, kv_heads, head_dim, inter, vocab, theta, eps, bool(tied), max_positions)
    entries = []
    for i in range(count):
        name, fmt, rows, cols, *_, offset, scale_offset = _RECORD.unpack_from(blob, FIXED_HEADER_BYTES + i * RECORD_BYTES)
        spec = TensorSpec(name.rstrip(b"\0").decode("ascii"), TensorFormat(fmt), rows, cols)
        entries.append(TensorEntry(spec, offset, scale_offset))
    return dims, entries, kv_base
