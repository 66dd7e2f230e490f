"""The HBM bursts one decode step issues: the kernel source's own (glitches/fpga_worker/kernel/), derived from the ABI.

Pure function of (model dims, context length, prefetch ratio, on-chip buffer size).
The W4A8 kernel records this list for every step it runs, and the U280 timing model
turns it into time. Counts are for the busiest pseudo-channel (PC): all 32 PCs load
in parallel, so the busiest one sets the pace.

The bursts follow glitches_decode's loops (ABI v2, rows padded to 64 bytes):
- header: 2 bursts from PC 0 (the 128-byte fixed part, then the tensor records);
- a matrix: per PC, its slots `per` at a time, one value burst of per * value_stride bytes and
  one scale burst of per * scale_stride, per = min(ratio, buffer // value_stride);
- a norm vector: one burst of rows_per_pc * 64 bytes from every PC; the RoPE row and the
  embedding row: one burst each (plus the embedding's scale row) from one PC;
- attention: per lane and PC, its blocks `min(ratio, buffer // block_bytes)` pages at a time
  (the emulator's consecutive block table); one store of head_dim * 2 bytes per new K and V.
`kernel_bursts` gives the same per stream and PC; tests/test_kernel_csim.py checks it against
the bursts the C-simulated kernel counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np

from glitches.fpga_worker.abi import (
    FIXED_HEADER_BYTES, HBM_CHANNELS, KV_BLOCK_TOKENS, KV_ELEMENT_BYTES, RECORD_BYTES, ModelDims, TensorFormat, tensor_plan,
)
from glitches.services.runtime.errors import InvalidArgument

DEFAULT_BUFFER_BYTES = 32 * 1024  # per-PC prefetch buffer; the paper's largest merged load (assumption)


@dataclass(frozen=True)
class Load:
    stream: str  # "values", "scales", "vector", "kv", "kv_store"
    bytes_per_load: int
    count: int  # loads of this size in the busiest PC


@dataclass(frozen=True)
class Operator:
    name: str  # e.g. "blk.3.attn_q", "blk.3.attention", "lm_head"
    loads: tuple[Load, ...]
    int_ops: int  # multiply and add counted separately (2 per MAC)

    @property
    def load_count(self) -> int:
        return sum(ld.count for ld in self.loads)

    @property
    def load_bytes(self) -> int:
        return sum(ld.bytes_per_load * ld.count for ld in self.loads)


@dataclass(frozen=True)
class StepProgram:
    context: int  # tokens attended this step (prompt + generated, including the new one)
    prefetch_ratio: int
    operators: tuple[Operator, ...] = field(repr=False)

    @property
    def load_count(self) -> int:
        return sum(op.load_count for op in self.operators)

    @property
    def load_bytes(self) -> int:
        return sum(op.load_bytes for op in self.operators)

    def histogram(self) -> dict[int, int]:
        """bytes per load -> loads per step in the busiest PC."""
        hist: dict[int, int] = {}
        for op in self.operators:
            for ld in op.loads:
                hist[ld.bytes_per_load] = hist.get(ld.bytes_per_load, 0) + ld.count
        return dict(sorted(hist.items()))


def merge(units: int, unit_bytes: int, ratio: int, buffer_bytes: int, stream: str,
          fixed_length: bool = False) -> list[Load]:
    """`units` consecutive loads of `unit_bytes`, merged `ratio` at a time within the buffer.

    fixed_length: a what-if where every merged load moves `ratio` units, so a run's tail over-fetches.
    """
    if units <= 0 or unit_bytes <= 0:
        return []
    if unit_bytes > buffer_bytes:
        pieces = math.ceil(unit_bytes / buffer_bytes)
        return [Load(stream, math.ceil(unit_bytes / pieces), units * pieces)]
    per = max(1, min(ratio, buffer_bytes // unit_bytes))
    full, rest = divmod(units, per)
    if fixed_length and rest:
        full, rest = full + 1, 0
    loads = [Load(stream, per * unit_bytes, full)] if full else []
    return loads + ([Load(stream, rest * unit_bytes, 1)] if rest else [])


def matrix_per(spec, ratio: int, buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> int:
    """Slots per merged burst of a matrix (values and scales alike), as the kernel's gl_merge computes it."""
    return max(1, min(ratio, buffer_bytes // spec.value_stride))


def _matrix(name: str, spec, ratio: int, buffer_bytes: int, fixed: bool) -> Operator:
    rows, per = spec.rows_per_channel, matrix_per(spec, ratio, buffer_bytes)
    loads = merge(rows, spec.value_stride, per, buffer_bytes, "values", fixed)
    loads += merge(rows, spec.scale_stride, per, per * spec.scale_stride, "scales", fixed)
    return Operator(name, tuple(loads), 2 * spec.rows * spec.cols)


def _vector(name: str, spec) -> Operator:
    # a norm vector [n] is stored as [n / 16, 16]: one burst of the PC's rows from every PC
    return Operator(name, (Load("vector", spec.rows_per_channel * spec.value_stride, 1),), 4 * spec.rows * spec.cols)


def _attention(name: str, dims: ModelDims, context: int, ratio: int, buffer_bytes: int, fixed: bool) -> Operator:
    lanes = 2 * dims.kv_heads  # this layer's K and V lanes; lane u starts at PC u % 32 (layer offset cancels out below)
    blocks = math.ceil((context - 1) / KV_BLOCK_TOKENS)  # the new token's K/V comes from chip, not HBM
    block_bytes = KV_BLOCK_TOKENS * dims.head_dim * KV_ELEMENT_BYTES
    # blocks of lane u held by PC c: block b sits in PC (u + b) % 32, so b = first, first + 32, ...
    first = (np.arange(HBM_CHANNELS)[None, :] - np.arange(lanes)[:, None]) % HBM_CHANNELS  # [lanes, 32]
    per_lane_pc = np.where(first < blocks, (blocks - 1 - first) // HBM_CHANNELS + 1, 0)
    busiest = int(per_lane_pc.sum(axis=0).argmax())
    loads: list[Load] = []
    for lane_blocks in per_lane_pc[:, busiest]:
        loads += merge(int(lane_blocks), block_bytes, ratio, buffer_bytes, "kv", fixed)
    store_bytes = dims.head_dim * KV_ELEMENT_BYTES
    loads.append(Load("kv_store", store_bytes, math.ceil(lanes / HBM_CHANNELS)))
    int_ops = 4 * dims.num_heads * context * dims.head_dim  # q.K and p.V
    return Operator(name, tuple(_combine(loads)), int_ops)


def _combine(loads: list[Load]) -> list[Load]:
    merged: dict[tuple[str, int], int] = {}
    for ld in loads:
        merged[(ld.stream, ld.bytes_per_load)] = merged.get((ld.stream, ld.bytes_per_load), 0) + ld.count
    return [Load(s, b, c) for (s, b), c in merged.items()]


def step_program(dims: ModelDims, context: int, prefetch_ratio: int = 1,
                 buffer_bytes: int = DEFAULT_BUFFER_BYTES, fixed_length: bool = False) -> StepProgram:
    """Every operator of one decode step with the loads it issues in the busiest PC."""
    if context < 1:
        raise InvalidArgument(f"context must be at least 1 token, got {context}")
    if prefetch_ratio < 1:
        raise InvalidArgument(f"prefetch ratio must be a positive integer, got {prefetch_ratio}")
    attention = _attention("attention", dims, context, prefetch_ratio, buffer_bytes, fixed_length)
    ops = []
    for op in _weight_operators(dims, prefetch_ratio, buffer_bytes, fixed_length):
        ops.append(replace(attention, name=op.name) if op.name.endswith(".attention") else op)
    return StepProgram(context, prefetch_ratio, tuple(ops))


@lru_cache(maxsize=16)
def _weight_operators(dims: ModelDims, ratio: int, buffer_bytes: int, fixed: bool) -> tuple[Operator, ...]:
    """The context-independent operators, with a placeholder for each layer's attention."""
    specs = {s.name: s for s in tensor_plan(dims)}
    embed, rope = specs["token_embd"], specs["rope_cos_sin"]
    ops = [Operator("header", (Load("header", FIXED_HEADER_BYTES, 1), Load("header", RECORD_BYTES * len(specs), 1)), 0),
           Operator("embedding", (Load("values", embed.value_stride, 1), Load("scales", embed.scale_stride, 1),
                                  Load("vector", rope.value_stride, 1)), 0)]
    for layer in range(dims.num_layers):
        p = f"blk.{layer}."
        ops.append(_vector(p + "attn_norm", specs[p + "attn_norm"]))
        ops += [_matrix(p + n, specs[p + n], ratio, buffer_bytes, fixed) for n in ("attn_q", "attn_k", "attn_v")]
        ops.append(Operator(p + "attention", (), 0))
        ops.append(_matrix(p + "attn_output", specs[p + "attn_output"], ratio, buffer_bytes, fixed))
        ops.append(_vector(p + "ffn_norm", specs[p + "ffn_norm"]))
        ops += [_matrix(p + n, specs[p + n], ratio, buffer_bytes, fixed) for n in ("ffn_gate", "ffn_up", "ffn_down")]
    ops.append(_vector("output_norm", specs["output_norm"]))
    head = specs["token_embd"] if dims.tied_embeddings else specs["output"]
    ops.append(_matrix("lm_head", head, ratio, buffer_bytes, fixed))
    return tuple(ops)


STREAMS = ("header", "values", "scales", "vector", "kv", "kv_store")  # the kernel's burst counters, in order


def kernel_bursts(dims: ModelDims, context: int, token_id: int, prefetch_ratio: int,
                  buffer_bytes: int = DEFAULT_BUFFER_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """(counts, bytes) int64 [6 streams, 32 PCs] of every burst one step issues: token_id at position
    context - 1, KV of a contiguous region (consecutive block table). Mirrors glitches_decode's loops."""
    counts = np.zeros((len(STREAMS), HBM_CHANNELS), dtype=np.int64)
    sizes = np.zeros_like(counts)
    every = np.arange(HBM_CHANNELS)

    def add(stream: str, pcs, n: int, nbytes: int) -> None:
        row = STREAMS.index(stream)
        counts[row, pcs] += n
        sizes[row, pcs] += n * nbytes

    specs = {s.name: s for s in tensor_plan(dims)}
    position = context - 1
    add("header", 0, 1, FIXED_HEADER_BYTES)
    add("header", 0, 1, RECORD_BYTES * len(specs))
    embed, rope = specs["token_embd"], specs["rope_cos_sin"]
    add("values", token_id % HBM_CHANNELS, 1, embed.value_stride)
    add("scales", token_id % HBM_CHANNELS, 1, embed.scale_stride)
    add("vector", position % HBM_CHANNELS, 1, rope.value_stride)
    block_bytes = KV_BLOCK_TOKENS * dims.head_dim * KV_ELEMENT_BYTES
    kv_per = max(1, min(prefetch_ratio, buffer_bytes // block_bytes))
    blocks = math.ceil(position / KV_BLOCK_TOKENS)  # blocks read from HBM: tokens 0 .. position - 1
    for name, spec in specs.items():
        if spec.name == "rope_cos_sin" or spec.name == "token_embd" and not dims.tied_embeddings:
            continue
        if spec.fmt == TensorFormat.F32:  # a norm vector
            add("vector", every, 1, spec.rows_per_channel * spec.value_stride)
            continue
        per = matrix_per(spec, prefetch_ratio, buffer_bytes)
        full, rest = divmod(spec.rows_per_channel, per)
        for n, times in ((per, full), (rest, 1 if rest else 0)):
            add("values", every, times, n * spec.value_stride)
            add("scales", every, times, n * spec.scale_stride)
    for lane in range(2 * dims.num_layers * dims.kv_heads):
        first = (every - lane) % HBM_CHANNELS  # block index of this lane's first block in each PC
        in_pc = np.where(first < blocks, (blocks - 1 - first) // HBM_CHANNELS + 1, 0)
        for pc in range(HBM_CHANNELS):
            full, rest = divmod(int(in_pc[pc]), kv_per)
            add("kv", pc, full, kv_per * block_bytes)
            if rest:
                add("kv", pc, 1, rest * block_bytes)
        add("kv_store", (lane + position // KV_BLOCK_TOKENS) % HBM_CHANNELS, 1, dims.head_dim * KV_ELEMENT_BYTES)
    return counts, sizes
