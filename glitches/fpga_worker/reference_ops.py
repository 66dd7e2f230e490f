"""Float32 reference numerics of one decode step (the emulator's `reference` kernel): not an ABI mode.

It checks the Llama math against transformers; summation orders are torch's, so it is close to,
not bit-equal with, the W4A8 kernel's exactly specified arithmetic (glitches/fpga_worker/w4a8_ops.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class FloatLinear:
    """float32 y = W x."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight.float().contiguous()  # [rows, cols]
        self.rows, self.cols = self.weight.shape

    @classmethod
    def concat(cls, parts: list["FloatLinear"]) -> "FloatLinear":
        return cls(torch.cat([p.weight for p in parts]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x, weight float32 [hidden] -> float32 [hidden], in transformers' LlamaRMSNorm order."""
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """float32 [head_dim / 2], as transformers' default RoPE computes it."""
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))


def rope_cos_sin(position: int, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin float32 [head_dim] for one position."""
    freqs = float(position) * inv_freq
    emb = torch.cat([freqs, freqs])
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x float32 [heads, head_dim] at one position; rotate-half convention (transformers order)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [heads, head_dim]; k, v [kv_heads, tokens, head_dim] -> float32 [heads * head_dim]."""
    kv_heads, _, head_dim = k.shape
    grouped = q.view(kv_heads, -1, head_dim)  # [kv_heads, heads per kv head, head_dim]
    scores = grouped @ k.transpose(1, 2) * head_dim**-0.5  # [kv_heads, group, tokens]
    return (scores.softmax(dim=-1) @ v).reshape(-1)
