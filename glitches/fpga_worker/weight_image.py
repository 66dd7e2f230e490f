"""Build the HBM weight image (docs/fpga-kernel-abi.md) for a Llama-family model.

From a GGUF file, Q4_1 and Q8_0 tensors are copied block for block (exact); F32
tensors (norms) are kept as float32; any other type is dequantized with gguf and
re-quantized round-to-nearest into the planned format. From float weights (a
transformers state dict), every matrix is quantized round-to-nearest.

The image is held as `channels`: uint8 [32, kv_base], the bytes [0, kv_base) of each
HBM pseudo-channel; the KV region that follows is not part of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, quants

from glitches.fpga_worker.abi import (
    HBM_CHANNELS, HEADER_BYTES, KV_PAGE_TOKENS, MAX_KV_PAGES, ModelDims, TensorEntry, TensorFormat, as_f32,
    pack_header, place_tensors, tensor_plan, unpack_header,
)
from glitches.fpga_worker.quant import dequantize, quantize_rtn, split_gguf_blocks
from glitches.services.runtime.errors import InvalidArgument

_EXACT_GGUF = {GGMLQuantizationType.Q4_1: TensorFormat.W4G32, GGMLQuantizationType.Q8_0: TensorFormat.W8G32}

# transformers state-dict names for the image's per-layer tensor names
_HF_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


@dataclass
class WeightImage:
    dims: ModelDims
    entries: dict[str, TensorEntry]
    kv_base: int  # bytes from the start of every PC to the KV region
    channels: np.ndarray  # uint8 [32, kv_base]
    provenance: dict[str, str] = field(default_factory=dict)  # tensor name -> "exact Q4_1", "rtn from F16", ...

    @property
    def weight_bytes(self) -> int:
        """Bytes the image occupies in HBM, all PCs together (including alignment padding)."""
        return HBM_CHANNELS * self.kv_base

    def entry(self, name: str) -> TensorEntry:
        if name not in self.entries:
            raise InvalidArgument(f"tensor {name!r} is not in the weight image")
        return self.entries[name]

    def planes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(value plane, scale plane) of one tensor, uint8 [rows, row bytes] without the 64-byte row padding,
        gathered from the 32 PCs."""
        e = self.entry(name)
        s = e.spec
        values = _gather(self.channels, e.offset, s.rows_per_channel, s.value_stride, s.qs_row_bytes, s.rows)
        scales = _gather(self.channels, e.scale_offset, s.rows_per_channel, s.scale_stride, s.scale_row_bytes, s.rows)
        return values, scales

    def vector(self, name: str) -> torch.Tensor:
        """An F32 tensor flattened: float32 [rows * cols] (a norm vector [hidden], the RoPE table row-major)."""
        values, _ = self.planes(name)
        return torch.from_numpy(values.copy()).view(torch.float32).reshape(-1)

    def dequantized(self, name: str) -> torch.Tensor:
        """A quantized tensor as float32 [rows, cols]."""
        e = self.entry(name)
        values, scales = self.planes(name)
        return dequantize(values, scales, e.spec.fmt)


def _gather(channels: np.ndarray, offset: int, rows_per_channel: int, stride: int, row_bytes: int,
            rows: int) -> np.ndarray:
    # row r lives in PC r % 32 at slot r // 32, slots `stride` bytes apart (the row padded to 64 bytes)
    if row_bytes == 0:
        return np.zeros((rows, 0), dtype=np.uint8)
    block = channels[:, offset: offset + rows_per_channel * stride].reshape(HBM_CHANNELS, rows_per_channel, stride)
    return block[:, :, :row_bytes].transpose(1, 0, 2).reshape(-1, row_bytes)[:rows]


def _scatter(channels: np.ndarray, offset: int, rows_per_channel: int, stride: int, plane: np.ndarray) -> None:
    rows, row_bytes = plane.shape
    padded = np.zeros((rows_per_channel * HBM_CHANNELS, stride), dtype=np.uint8)  # padding bytes are zero
    padded[:rows, :row_bytes] = plane
    block = padded.reshape(rows_per_channel, HBM_CHANNELS, stride).transpose(1, 0, 2)
    channels[:, offset: offset + rows_per_channel * stride] = block.reshape(HBM_CHANNELS, -1)


def rope_table(dims: ModelDims) -> np.ndarray:
    """float32 [max_positions, head_dim]: row p = cos(p * inv_freq) then sin(p * inv_freq), computed as
    transformers' default RoPE does (inv_freq and the products in float32, torch's float32 cos / sin)."""
    inv_freq = 1.0 / (dims.rope_theta ** (torch.arange(0, dims.head_dim, 2, dtype=torch.int64).float() / dims.head_dim))
    freqs = torch.arange(dims.max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :]  # [positions, D/2]
    return torch.cat([freqs.cos(), freqs.sin()], dim=1).numpy()


def _assemble(dims: ModelDims, embed_format: TensorFormat, planes_for) -> WeightImage:
    """planes_for(spec) -> (value plane, scale plane, provenance) for every tensor of the plan."""
    entries, kv_base = place_tensors(tensor_plan(dims, embed_format))
    channels = np.zeros((HBM_CHANNELS, kv_base), dtype=np.uint8)
    header = pack_header(dims, entries, kv_base)
    channels[0, : len(header)] = np.frombuffer(header, dtype=np.uint8)
    provenance = {}
    for e in entries:
        values, scales, provenance[e.spec.name] = planes_for(e.spec)
        if values.shape != (e.spec.rows, e.spec.qs_row_bytes):
            raise InvalidArgument(f"tensor {e.spec.name}: value plane {values.shape}, ABI wants "
                                  f"{(e.spec.rows, e.spec.qs_row_bytes)}")
        _scatter(channels, e.offset, e.spec.rows_per_channel, e.spec.value_stride, values)
        if e.spec.scale_row_bytes:
            _scatter(channels, e.scale_offset, e.spec.rows_per_channel, e.spec.scale_stride, scales)
    return WeightImage(dims, {e.spec.name: e for e in entries}, kv_base, channels, provenance)


def _float_planes(weight: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    if spec.fmt == TensorFormat.F32:  # [rows, cols] float32 (a vector of n as [n / 16, 16])
        plane = np.ascontiguousarray(weight, dtype=np.float32).reshape(spec.rows, spec.cols).view(np.uint8)
        return plane, np.zeros((spec.rows, 0), np.uint8)
    return quantize_rtn(weight.reshape(spec.rows, spec.cols), spec.fmt)


def q_k_row_order(rows: int, heads: int) -> np.ndarray:
    """For each transformers row of attn_q / attn_k, the GGUF row it comes from.

    llama.cpp's converter interleaves the two RoPE halves of every head; transformers
    undoes it on load. Reordering whole rows keeps the Q4_1 blocks intact.
    """
    half = rows // heads // 2
    return np.arange(rows).reshape(heads, half, 2).swapaxes(1, 2).reshape(-1)


def dims_from_gguf(reader: GGUFReader) -> ModelDims:
    def field(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            if default is None:
                raise InvalidArgument(f"GGUF file lacks {key}: only llama-architecture files are supported")
            return default
        return f.parts[f.data[0]][0].item()

    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    if arch != "llama":
        raise InvalidArgument(f"GGUF architecture {arch!r} is not supported; the decode kernel runs llama models")
    names = {t.name for t in reader.tensors}
    heads = int(field("llama.attention.head_count"))
    hidden = int(field("llama.embedding_length"))
    vocab = int(field("llama.vocab_size", 0)) or int(next(t for t in reader.tensors if t.name == "token_embd.weight").shape[1])
    dims = ModelDims(
        num_layers=int(field("llama.block_count")), hidden=hidden, num_heads=heads,
        kv_heads=int(field("llama.attention.head_count_kv", heads)),
        head_dim=int(field("llama.rope.dimension_count", hidden // heads)),
        intermediate=int(field("llama.feed_forward_length")), vocab=vocab,
        rope_theta=as_f32(float(field("llama.rope.freq_base", 10000.0))),
        rms_eps=as_f32(float(field("llama.attention.layer_norm_rms_epsilon"))),
        tied_embeddings="output.weight" not in names,
        max_positions=min(int(field("llama.context_length", 4096)), MAX_KV_PAGES * KV_PAGE_TOKENS),
    )
    dims.check()
    return dims


def build_from_gguf(path: str | Path, embed_format: TensorFormat = TensorFormat.W8G32) -> WeightImage:
    """The image of a llama GGUF file, keeping Q4_1 / Q8_0 blocks bit for bit."""
    reader = GGUFReader(str(path))
    dims = dims_from_gguf(reader)
    tensors = {t.name.removesuffix(".weight"): t for t in reader.tensors}

    def planes_for(spec):
        if spec.name == "rope_cos_sin":
            return *_float_planes(rope_table(dims), spec), "computed (float32, transformers' default RoPE)"
        if spec.name not in tensors:
            raise InvalidArgument(f"GGUF file {path} has no tensor {spec.name}.weight")
        t = tensors[spec.name]
        heads = {"attn_q": dims.num_heads, "attn_k": dims.kv_heads}.get(spec.name.split(".")[-1])
        if _EXACT_GGUF.get(t.tensor_type) == spec.fmt:
            values, scales = split_gguf_blocks(t.data, spec.fmt, spec.rows, spec.cols)
            how = f"exact {t.tensor_type.name}"
        else:
            weight = quants.dequantize(t.data, t.tensor_type).reshape(spec.rows, spec.cols)
            values, scales = _float_planes(weight, spec)
            how = "exact F32" if t.tensor_type == GGMLQuantizationType.F32 and spec.fmt == TensorFormat.F32 \
                else f"round-to-nearest from {t.tensor_type.name}"
        if heads is not None:
            order = q_k_row_order(spec.rows, heads)
            values, scales = values[order], scales[order]
        return values, scales, how

    return _assemble(dims, embed_format, planes_for)


def build_from_state_dict(config, state_dict: dict[str, torch.Tensor],
                          embed_format: TensorFormat = TensorFormat.W8G32) -> WeightImage:
    """The image of float transformers weights (LlamaForCausalLM names), quantized round-to-nearest."""
    dims = ModelDims.from_config(config)

    def planes_for(spec):
        if spec.name == "rope_cos_sin":
            return *_float_planes(rope_table(dims), spec), "computed (float32, transformers' default RoPE)"
        parts = spec.name.split(".")
        if parts[0] == "blk":
            key = f"model.layers.{parts[1]}.{_HF_LAYER_NAMES[parts[2]]}.weight"
        else:
            key = {"output_norm": "model.norm.weight", "token_embd": "model.embed_tokens.weight",
                   "output": "lm_head.weight"}[spec.name]
        if key not in state_dict:
            raise InvalidArgument(f"state dict has no {key} (needed for {spec.name})")
        weight = state_dict[key].detach().float().cpu().numpy()
        values, scales = _float_planes(weight, spec)
        return values, scales, "exact F32" if spec.fmt == TensorFormat.F32 else "round-to-nearest from float"

    return _assemble(dims, embed_format, planes_for)


def load_image(channels: np.ndarray) -> WeightImage:
    """Re-open an image from its PC bytes (what the kernel does at start)."""
    dims, entries, kv_base = unpack_header(channels[0, :HEADER_BYTES].tobytes())
    return WeightImage(dims, {e.spec.name: e for e in entries}, kv_base, channels)
