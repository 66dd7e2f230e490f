"""Software decode kernel per docs/fpga-kernel-abi.md (v2): one Llama step from (token, position) to logits.

Two numerics:
- "w4a8": weights from the HBM weight image (W4G32 matrices, W8G32 embedding / tied
  LM head), INT8 activations with one scale per group of 32, INT32 group accumulation,
  FP16 KV, RoPE from the image's table, every float operation in the ABI's order
  (glitches/fpga_worker/w4a8_ops.py). This is the readable specification of what the kernel
  source (glitches/fpga_worker/kernel/) computes; its C simulation gives the same bits.
- "reference": float32 weights, float32 KV, no quantization (glitches/fpga_worker/reference_ops.py);
  checks the Llama math against transformers. Not an ABI mode.

Every step records the HBM load instructions it issues (`last_program`), which the
U280 timing model turns into modeled time.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import numpy as np
import torch
import torch.nn.functional as F

from glitches.fpga_worker import reference_ops as ref
from glitches.fpga_worker import w4a8_ops as ops
from glitches.fpga_worker.abi import GROUP_SIZE, KernelStatus, ModelDims
from glitches.fpga_worker.instruction_stream import StepProgram, step_program
from glitches.kv_plane.kv_layout import KvPlan, KvRegion
from glitches.fpga_worker.quant import unpack_scales, unpack_values
from glitches.fpga_worker.weight_image import _HF_LAYER_NAMES, WeightImage
from glitches.services.runtime.errors import GlitchesError, InvalidArgument


class KernelError(GlitchesError):
    """A step the kernel refused, with the ABI status it returned; a caller's mistake maps to INVALID_ARGUMENT."""

    def __init__(self, status: KernelStatus, message: str):
        super().__init__(f"decode kernel status {status.value} ({status.name}): {message}",
                         status_code=InvalidArgument.status_code if status != KernelStatus.NON_FINITE
                         else grpc.StatusCode.INTERNAL)
        self.status = status


@dataclass
class _Layer:
    attn_norm: torch.Tensor  # float32 [hidden] (numpy float32 under w4a8)
    qkv: object  # linear: hidden -> (heads + 2 * kv_heads) * head_dim
    attn_output: object  # linear: heads * head_dim -> hidden
    ffn_norm: torch.Tensor
    gate_up: object  # linear: hidden -> 2 * intermediate
    down: object  # linear: intermediate -> hidden


class DecodeKernel:
    """Holds one model's weights; steps any number of requests, each owning a KvRegion."""

    def __init__(self, dims: ModelDims, numerics: str, layers: list[_Layer], final_norm, embed_row, lm_head,
                 prefetch_ratio: int = 1, rope_table: np.ndarray | None = None):
        self.dims, self.numerics, self.layers = dims, numerics, layers
        self.final_norm, self._embed_row, self.lm_head = final_norm, embed_row, lm_head
        self.prefetch_ratio = prefetch_ratio
        self.inv_freq = ref.rope_inv_freq(dims.head_dim, dims.rope_theta)  # reference numerics only
        self.rope_table = rope_table  # w4a8: float32 [max_positions, head_dim] from the image (cos half, sin half)
        self.last_context: int | None = None  # tokens the latest step attended to

    @classmethod
    def from_image(cls, image: WeightImage, prefetch_ratio: int = 1, int8_activations: bool = True) -> "DecodeKernel":
        """W4A8 numerics, weights read from the image's bytes by the ABI offsets.

        int8_activations=False is a diagnostic (float activations on the same weights), not the kernel.
        """

        def linear(name, qmax=ops.INT8_MAX):
            values, scales = image.planes(name)
            fmt = image.entry(name).spec.fmt
            d, m = unpack_scales(scales, fmt)
            return ops.GroupQuantLinear(unpack_values(values, fmt), d, m, int8_activations, qmax)

        vec = lambda name: image.vector(name).numpy()  # float32 [hidden]
        layers = []
        for i in range(image.dims.num_layers):
            p = f"blk.{i}."
            layers.append(_Layer(
                attn_norm=vec(p + "attn_norm"),
                qkv=ops.GroupQuantLinear.concat([linear(p + n, ops.INT16_MAX) for n in ("attn_q", "attn_k", "attn_v")]),
                attn_output=linear(p + "attn_output"),
                ffn_norm=vec(p + "ffn_norm"),
                gate_up=ops.GroupQuantLinear.concat([linear(p + "ffn_gate"), linear(p + "ffn_up")]),
                down=linear(p + "ffn_down"),
            ))
        embed = linear("token_embd")
        head = embed if image.dims.tied_embeddings else linear("output")

        def embed_row(t: int) -> np.ndarray:  # float32 [hidden]: d * q (+ m) per group
            q = embed.q[t].numpy().astype(ops.F32).reshape(-1, GROUP_SIZE)
            row = embed.d[t][:, None] * q
            return (row if embed.m is None else row + embed.m[t][:, None]).reshape(-1)

        numerics = "w4a8" if int8_activations else "w4-float-activations"
        rope = image.vector("rope_cos_sin").numpy().reshape(image.dims.max_positions, image.dims.head_dim)
        return cls(image.dims, numerics, layers, vec("output_norm"), embed_row, head, prefetch_ratio, rope)

    @classmethod
    def from_state_dict(cls, config, state_dict: dict[str, torch.Tensor]) -> "DecodeKernel":
        """Reference numerics from float transformers weights (LlamaForCausalLM names)."""
        dims = ModelDims.from_config(config)
        w = lambda key: state_dict[key].detach().float()
        layers = []
        for i in range(dims.num_layers):
            p = f"model.layers.{i}."
            lin = lambda n: ref.FloatLinear(w(p + _HF_LAYER_NAMES[n] + ".weight"))
            layers.append(_Layer(
                attn_norm=w(p + "input_layernorm.weight"),
                qkv=ref.FloatLinear.concat([lin("attn_q"), lin("attn_k"), lin("attn_v")]),
                attn_output=lin("attn_output"),
                ffn_norm=w(p + "post_attention_layernorm.weight"),
                gate_up=ref.FloatLinear.concat([lin("ffn_gate"), lin("ffn_up")]),
                down=lin("ffn_down"),
            ))
        embed = w("model.embed_tokens.weight")
        head = ref.FloatLinear(embed if dims.tied_embeddings else w("lm_head.weight"))
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

    def check_step(self, kv: KvRegion, token_id: int, position: int) -> None:
        """The kernel's argument checks (ABI status codes 2 and 3)."""
        d = self.dims
        if not 0 <= token_id < d.vocab:
            raise KernelError(KernelStatus.TOKEN_OUT_OF_RANGE, f"token id {token_id} not in 0..{d.vocab - 1}")
        if not 0 <= position < kv.plan.capacity_tokens:
            raise KernelError(KernelStatus.POSITION_OUT_OF_RANGE,
                              f"position {position} outside the reserved {kv.plan.capacity_tokens} tokens")
        if self.rope_table is not None and position >= d.max_positions:
            raise KernelError(KernelStatus.POSITION_OUT_OF_RANGE,
                              f"position {position} past the image's RoPE table ({d.max_positions} positions)")

    @torch.inference_mode()
    def step(self, kv: KvRegion, token_id: int, position: int) -> torch.Tensor:
        """Feed token_id at position (KV for 0..position-1 already in `kv`); return logits float32 [vocab]."""
        self.check_step(kv, token_id, position)
        logits = self._step_reference(kv, token_id, position) if self.rope_table is None \
            else torch.from_numpy(self._step_w4a8(kv, token_id, position))
        self.last_context = position + 1
        if not torch.isfinite(logits).all():
            raise KernelError(KernelStatus.NON_FINITE, f"non-finite logits at position {position}")
        return logits

    def _step_w4a8(self, kv: KvRegion, token_id: int, position: int) -> np.ndarray:
        """ABI v2 numerics; the new token's K/V (float16) is written to the region and attended from chip."""
        d, eps = self.dims, ops.F32(self.dims.rms_eps)
        q_width, kv_width, half = d.num_heads * d.head_dim, d.kv_heads * d.head_dim, d.head_dim // 2
        x = self._embed_row(token_id)  # float32 [hidden]
        cos, sin = self.rope_table[position, :half], self.rope_table[position, half:]  # float32 [head_dim / 2]
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(ops.rms_norm(x, layer.attn_norm, eps))
            q = ops.apply_rope(qkv[:q_width].reshape(d.num_heads, d.head_dim), cos, sin)
            k = ops.apply_rope(qkv[q_width: q_width + kv_width].reshape(d.kv_heads, d.head_dim), cos, sin)
            k16, v16 = k.astype(np.float16), qkv[q_width + kv_width:].reshape(d.kv_heads, d.head_dim).astype(np.float16)
            kv.write_token(index, position, torch.from_numpy(k16), torch.from_numpy(v16))
            keys, values = k16.astype(ops.F32)[:, None, :], v16.astype(ops.F32)[:, None, :]  # [kv_heads, 1, D]
            if position:  # tokens 0 .. position-1 from HBM, the new one from chip, in position order
                old_k, old_v = kv.read(index, position)
                keys = np.concatenate([old_k.numpy(), keys], axis=1)
                values = np.concatenate([old_v.numpy(), values], axis=1)
            x = x + layer.attn_output(ops.attention(q, keys, values))
            gate_up = layer.gate_up(ops.rms_norm(x, layer.ffn_norm, eps))
            x = x + layer.down(ops.silu_mul(gate_up[: d.intermediate], gate_up[d.intermediate:]))
        return self.lm_head(ops.rms_norm(x, self.final_norm, eps))

    def _step_reference(self, kv: KvRegion, token_id: int, position: int) -> torch.Tensor:
        d = self.dims
        q_width, kv_width = d.num_heads * d.head_dim, d.kv_heads * d.head_dim
        x = self._embed_row(token_id)  # [hidden]
        cos, sin = ref.rope_cos_sin(position, self.inv_freq)  # [head_dim]
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(ref.rms_norm(x, layer.attn_norm, d.rms_eps))
            q = ref.apply_rope(qkv[:q_width].view(d.num_heads, d.head_dim), cos, sin)
            k = ref.apply_rope(qkv[q_width: q_width + kv_width].view(d.kv_heads, d.head_dim), cos, sin)
            kv.write_token(index, position, k, qkv[q_width + kv_width:].view(d.kv_heads, d.head_dim))
            keys, values = kv.read(index, position + 1)  # [kv_heads, position + 1, head_dim]
            x = x + layer.attn_output(ref.gqa_attention(q, keys, values))
            gate, up = layer.gate_up(ref.rms_norm(x, layer.ffn_norm, d.rms_eps)).split(d.intermediate)
            x = x + layer.down(F.silu(gate) * up)
        return self.lm_head(ref.rms_norm(x, self.final_norm, d.rms_eps))
