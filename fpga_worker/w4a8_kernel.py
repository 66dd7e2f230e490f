"""Software decode kernel per docs/fpga-kernel-abi.md: one Llama step from (token, position) to logits.

Two numerics:
- "w4a8": weights from the HBM weight image (W4G32 matrices, W8G32 embedding / tied
  LM head), per-token INT8 activations, INT32 group accumulation (fpga_worker/w4a8_ops.py),
  FP16 KV per the ABI. This is what the U280 bitstream computes.
- "reference": float32 weights, float32 KV, no quantization; checks the Llama math
  against transformers.
Norms, RoPE, softmax and attention run in float32 in both.

Every step records the HBM load instructions it issues (`last_program`), which the
U280 timing model turns into modeled time.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import torch
import torch.nn.functional as F

from fpga_worker.abi import KernelStatus, ModelDims, TensorFormat
from fpga_worker.instruction_stream import StepProgram, step_program
from fpga_worker.kv_layout import KvPlan, KvRegion
from fpga_worker.quant import unpack_scales, unpack_values
from fpga_worker.w4a8_ops import FloatLinear, GroupQuantLinear, apply_rope, gqa_attention, rms_norm, rope_cos_sin, rope_inv_freq
from fpga_worker.weight_image import _HF_LAYER_NAMES, WeightImage
from services.errors import GlitchesError, InvalidArgument


class KernelError(GlitchesError):
    """A step the kernel refused, with the ABI status it returned; a caller's mistake maps to INVALID_ARGUMENT."""

    def __init__(self, status: KernelStatus, message: str):
        super().__init__(f"decode kernel status {status.value} ({status.name}): {message}",
                         status_code=InvalidArgument.status_code if status != KernelStatus.NON_FINITE
                         else grpc.StatusCode.INTERNAL)
        self.status = status


@dataclass
class _Layer:
    attn_norm: torch.Tensor  # float32 [hidden]
    qkv: object  # linear: hidden -> (heads + 2 * kv_heads) * head_dim
    attn_output: object  # linear: heads * head_dim -> hidden
    ffn_norm: torch.Tensor
    gate_up: object  # linear: hidden -> 2 * intermediate
    down: object  # linear: intermediate -> hidden


class DecodeKernel:
    """Holds one model's weights; steps any number of requests, each owning a KvRegion."""

    def __init__(self, dims: ModelDims, numerics: str, layers: list[_Layer], final_norm: torch.Tensor,
                 embed_row, lm_head, prefetch_ratio: int = 1):
        self.dims, self.numerics, self.layers = dims, numerics, layers
        self.final_norm, self._embed_row, self.lm_head = final_norm, embed_row, lm_head
        self.prefetch_ratio = prefetch_ratio
        self.inv_freq = rope_inv_freq(dims.head_dim, dims.rope_theta)
        self.last_context: int | None = None  # tokens the latest step attended to

    @classmethod
    def from_image(cls, image: WeightImage, prefetch_ratio: int = 1, int8_activations: bool = True) -> "DecodeKernel":
        """W4A8 numerics, weights read from the image's bytes by the ABI offsets.

        int8_activations=False is a diagnostic (float activations on the same weights), not the kernel.
        """

        def linear(name):
            values, scales = image.planes(name)
            fmt = image.entry(name).spec.fmt
            d, m = unpack_scales(scales, fmt)
            return GroupQuantLinear(unpack_values(values, fmt), d, m, int8_activations)

        layers = []
        for i in range(image.dims.num_layers):
            p = f"blk.{i}."
            layers.append(_Layer(
                attn_norm=image.vector(p + "attn_norm"),
                qkv=GroupQuantLinear.concat([linear(p + n) for n in ("attn_q", "attn_k", "attn_v")]),
                attn_output=linear(p + "attn_output"),
                ffn_norm=image.vector(p + "ffn_norm"),
                gate_up=GroupQuantLinear.concat([linear(p + "ffn_gate"), linear(p + "ffn_up")]),
                down=linear(p + "ffn_down"),
            ))
        embed = linear("token_embd")
        head = embed if image.dims.tied_embeddings else linear("output")
        if image.entry("token_embd").spec.fmt == TensorFormat.W4G32:
            embed_row = lambda t: embed.d[t].repeat_interleave(32) * embed.q[t].float() + embed.m[t].repeat_interleave(32)
        else:
            embed_row = lambda t: embed.q[t].float() * embed.d[t].repeat_interleave(32)
        numerics = "w4a8" if int8_activations else "w4-float-activations"
        return cls(image.dims, numerics, layers, image.vector("output_norm"), embed_row, head, prefetch_ratio)

    @classmethod
    def from_state_dict(cls, config, state_dict: dict[str, torch.Tensor]) -> "DecodeKernel":
        """Reference numerics from float transformers weights (LlamaForCausalLM names)."""
        dims = ModelDims.from_config(config)
        w = lambda key: state_dict[key].detach().float()
        layers = []
        for i in range(dims.num_layers):
            p = f"model.layers.{i}."
            lin = lambda n: FloatLinear(w(p + _HF_LAYER_NAMES[n] + ".weight"))
            layers.append(_Layer(
                attn_norm=w(p + "input_layernorm.weight"),
                qkv=FloatLinear.concat([lin("attn_q"), lin("attn_k"), lin("attn_v")]),
                attn_output=lin("attn_output"),
                ffn_norm=w(p + "post_attention_layernorm.weight"),
                gate_up=FloatLinear.concat([lin("ffn_gate"), lin("ffn_up")]),
                down=lin("ffn_down"),
            ))
        embed = w("model.embed_tokens.weight")
        head = FloatLinear(embed if dims.tied_embeddings else w("lm_head.weight"))
        return cls(dims, "reference", layers, w("model.norm.weight"), lambda t: embed[t], head)

    @property
    def last_program(self) -> StepProgram | None:
        """The HBM load instructions the latest step issued (a pure function of dims, context and ratio)."""
        if self.last_context is None:
            return None
        return step_program(self.dims, self.last_context, self.prefetch_ratio)

    def new_region(self, capacity_tokens: int) -> KvRegion:
        """KV region for one request: FP16 per the ABI (float32 under reference numerics)."""
        dtype = torch.float32 if self.numerics == "reference" else torch.float16
        return KvRegion(KvPlan.for_model(self.dims, capacity_tokens), dtype)

    @torch.inference_mode()
    def step(self, kv: KvRegion, token_id: int, position: int) -> torch.Tensor:
        """Feed token_id at position (KV for 0..position-1 already in `kv`); return logits float32 [vocab]."""
        d = self.dims
        if not 0 <= token_id < d.vocab:
            raise KernelError(KernelStatus.TOKEN_OUT_OF_RANGE, f"token id {token_id} not in 0..{d.vocab - 1}")
        if not 0 <= position < kv.plan.capacity_tokens:
            raise KernelError(KernelStatus.POSITION_OUT_OF_RANGE,
                              f"position {position} outside the reserved {kv.plan.capacity_tokens} tokens")
        q_width, kv_width = d.num_heads * d.head_dim, d.kv_heads * d.head_dim
        x = self._embed_row(token_id)  # [hidden]
        cos, sin = rope_cos_sin(position, self.inv_freq)  # [head_dim]
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(rms_norm(x, layer.attn_norm, d.rms_eps))
            q = apply_rope(qkv[:q_width].view(d.num_heads, d.head_dim), cos, sin)
            k = apply_rope(qkv[q_width: q_width + kv_width].view(d.kv_heads, d.head_dim), cos, sin)
            kv.write_token(index, position, k, qkv[q_width + kv_width:].view(d.kv_heads, d.head_dim))
            keys, values = kv.read(index, position + 1)  # [kv_heads, position + 1, head_dim]
            x = x + layer.attn_output(gqa_attention(q, keys, values))
            gate, up = layer.gate_up(rms_norm(x, layer.ffn_norm, d.rms_eps)).split(d.intermediate)
            x = x + layer.down(F.silu(gate) * up)
        logits = self.lm_head(rms_norm(x, self.final_norm, d.rms_eps))
        self.last_context = position + 1
        if not torch.isfinite(logits).all():
            raise KernelError(KernelStatus.NON_FINITE, f"non-finite logits at position {position}")
        return logits
