"""Constants and byte layout of the host <-> decode-kernel ABI (docs/fpga-kernel-abi.md).

Everything here is pure arithmetic on model dimensions, so host code, the software
emulator, the timing model and tests all compute the same byte offsets.

HBM is seen as 32 pseudo-channels (PCs) of 256 MiB. Every PC holds the same
layout: a 64 KiB header area, then one row slice of every weight tensor (row r of a
tensor lives in PC r % 32, slot r // 32), then the KV region.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from services.errors import InvalidArgument

ABI_VERSION = 1
MAGIC = b"GLWI"  # "GLITCHES weight image"
HBM_CHANNELS = 32  # U280 HBM2 pseudo-channels
CHANNEL_BYTES = 256 * 1024 * 1024  # bytes per pseudo-channel (8 GiB / 32)
HBM_BYTES = HBM_CHANNELS * CHANNEL_BYTES
GROUP_SIZE = 32  # weights per quantization group (along the input dimension)
KV_BLOCK_TOKENS = 16  # tokens per KV block (the unit of one KV load)
KV_ELEMENT_BYTES = 2  # KV is IEEE float16, little-endian
HEADER_BYTES = 64 * 1024  # header area at the start of every PC (only PC 0's is written)
TENSOR_ALIGN = 256  # every tensor slice starts on a 256-byte boundary inside a PC
KV_ALIGN = 4096  # the KV region starts on a 4 KiB boundary inside a PC
PLANE_ALIGN = 64  # the scale plane starts on a 64-byte boundary after the nibble plane
NAME_BYTES = 32  # tensor name field in the header table, ASCII, NUL padded


class TensorFormat(IntEnum):
    W4G32 = 1  # uint4 q, per 32-group float16 scale d and float16 min m: w = d*q + m (GGUF Q4_1)
    W8G32 = 2  # int8 q, per 32-group float16 scale d: w = d*q (GGUF Q8_0)
    F32 = 3  # float32, one element per row (vectors such as RMSNorm weights)


class KernelStatus(IntEnum):
    OK = 0
    BAD_IMAGE = 1  # header magic or ABI version does not match the bitstream
    TOKEN_OUT_OF_RANGE = 2  # token_id >= vocab
    POSITION_OUT_OF_RANGE = 3  # position >= kv_capacity_tokens
    KV_OUT_OF_BOUNDS = 4  # kv_offset + region bytes runs past the end of a PC
    BAD_MODE = 5  # unknown output mode or top_p outside (0, 1]
    NON_FINITE = 6  # NaN or Inf appeared in the logits


class OutputMode(IntEnum):
    LOGITS = 0  # write float32 logits [vocab] to the output buffer
    GREEDY = 1  # write only the argmax token
    TOP_P = 2  # sample with temperature / top_p / seed, write only the token


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
            rope_theta=float(theta),
            rms_eps=float(get("rms_norm_eps") or 1e-6),
            tied_embeddings=bool(get("tie_word_embeddings", False)),
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
        if self.head_dim % 2:
            raise InvalidArgument(f"head_dim={self.head_dim} must be even for RoPE")


@dataclass(frozen=True)
class TensorSpec:
    name: str  # e.g. "blk.3.attn_q", GGUF names without ".weight"
    fmt: TensorFormat
    rows: int  # output features (or vector length for F32)
    cols: int  # input features (1 for F32 vectors)

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


@dataclass(frozen=True)
class TensorEntry:
    spec: TensorSpec
    offset: int  # bytes from the start of every PC to this tensor's slice
    scale_offset: int  # bytes from the start of every PC to the slice's scale plane

    @property
    def end(self) -> int:
        return self.scale_offset + self.spec.rows_per_channel * self.spec.scale_row_bytes


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def tensor_plan(dims: ModelDims, embed_format: TensorFormat = TensorFormat.W8G32) -> list[TensorSpec]:
    """Every tensor of the image, in image order."""
    h, q_rows, kv_rows = dims.hidden, dims.num_heads * dims.head_dim, dims.kv_heads * dims.head_dim
    w4, f32 = TensorFormat.W4G32, TensorFormat.F32
    specs: list[TensorSpec] = []
    for layer in range(dims.num_layers):
        p = f"blk.{layer}."
        specs += [
            TensorSpec(p + "attn_norm", f32, h, 1),
            TensorSpec(p + "attn_q", w4, q_rows, h),
            TensorSpec(p + "attn_k", w4, kv_rows, h),
            TensorSpec(p + "attn_v", w4, kv_rows, h),
            TensorSpec(p + "attn_output", w4, h, q_rows),
            TensorSpec(p + "ffn_norm", f32, h, 1),
            TensorSpec(p + "ffn_gate", w4, dims.intermediate, h),
            TensorSpec(p + "ffn_up", w4, dims.intermediate, h),
            TensorSpec(p + "ffn_down", w4, h, dims.intermediate),
        ]
    specs += [TensorSpec("output_norm", f32, h, 1), TensorSpec("token_embd", embed_format, dims.vocab, h)]
    if not dims.tied_embeddings:
        specs.append(TensorSpec("output", w4, dims.vocab, h))
    return specs


def place_tensors(specs: list[TensorSpec]) -> tuple[list[TensorEntry], int]:
    """Offsets of each tensor slice inside a PC; returns (entries, kv_base bytes)."""
    entries, cursor = [], HEADER_BYTES
    for spec in specs:
        offset = align_up(cursor, TENSOR_ALIGN)
        scale_offset = align_up(offset + spec.rows_per_channel * spec.qs_row_bytes, PLANE_ALIGN)
        entry = TensorEntry(spec, offset, scale_offset)
        entries.append(entry)
        cursor = entry.end
    return entries, align_up(cursor, KV_ALIGN)


# Header: fixed part then one 64-byte record per tensor, all little-endian.
_HEADER = struct.Struct("<4s12I2d2Q")  # magic, 12 u32, rope_theta f64, rms_eps f64, kv_base, tensor count
_RECORD = struct.Struct(f"<{NAME_BYTES}s4I2Q")  # name, fmt, rows, cols, rows_per_channel, offset, scale_offset


def pack_header(dims: ModelDims, entries: list[TensorEntry], kv_base: int) -> bytes:
    table = b"".join(
        _RECORD.pack(e.spec.name.encode("ascii"), e.spec.fmt, e.spec.rows, e.spec.cols,
                     e.spec.rows_per_channel, e.offset, e.scale_offset)
        for e in entries
    )
    head = _HEADER.pack(
        MAGIC, ABI_VERSION, HBM_CHANNELS, GROUP_SIZE, KV_BLOCK_TOKENS, dims.num_layers, dims.hidden,
        dims.num_heads, dims.kv_heads, dims.head_dim, dims.intermediate, dims.vocab, int(dims.tied_embeddings),
        dims.rope_theta, dims.rms_eps, kv_base, len(entries),
    )
    blob = head + table
    if len(blob) > HEADER_BYTES:
        raise InvalidArgument(f"{len(entries)} tensors do not fit the {HEADER_BYTES}-byte header area")
    return blob


def unpack_header(blob: bytes) -> tuple[ModelDims, list[TensorEntry], int]:
    """Parse PC 0's header area; raises InvalidArgument on a foreign or mismatched image."""
    fields = _HEADER.unpack_from(blob, 0)
    magic, version, channels, group, block = fields[:5]
    if magic != MAGIC or version != ABI_VERSION:
        raise InvalidArgument(f"not a GLITCHES weight image v{ABI_VERSION} (magic {magic!r}, version {version})")
    if (channels, group, block) != (HBM_CHANNELS, GROUP_SIZE, KV_BLOCK_TOKENS):
        raise InvalidArgument(f"image built for channels/group/block {channels}/{group}/{block}")
    layers, hidden, heads, kv_heads, head_dim, inter, vocab, tied = fields[5:13]
    theta, eps, kv_base, count = fields[13:17]
    dims = ModelDims(layers, hidden, heads, kv_heads, head_dim, inter, vocab, theta, eps, bool(tied))
    entries = []
    for i in range(count):
        name, fmt, rows, cols, _, offset, scale_offset = _RECORD.unpack_from(blob, _HEADER.size + i * _RECORD.size)
        spec = TensorSpec(name.rstrip(b"\0").decode("ascii"), TensorFormat(fmt), rows, cols)
        entries.append(TensorEntry(spec, offset, scale_offset))
    return dims, entries, kv_base
