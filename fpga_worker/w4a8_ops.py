"""Numerics of one decode step: W4A8 / W8A8 group matmul, RMSNorm, RoPE, GQA attention.

W4A8 matmul of x [cols] with q [rows, cols] (uint4 stored as int8 0..15), scale d and
min m [rows, groups]:
    x_q = round(x / s) in -127..127, s = max|x| / 127           (per token, symmetric)
    acc[r, g] = sum_j q[r, g*32+j] * x_q[g*32+j]                 (int32, exact)
    xsum[g]   = sum_j x_q[g*32+j]                                (int32, exact)
    y[r]      = s * sum_g (d[r, g] * acc[r, g] + m[r, g] * xsum[g])   (float32)
The per-group integer dot products run as one int8 GEMM against a block-diagonal
matrix holding x_q (column g holds group g's 32 values), so there is no Python loop.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fpga_worker.abi import GROUP_SIZE

_INT_MM_COLS = 8  # torch._int_mm wants the output width to be a multiple of 8


_TINY = 1e-30  # keeps an all-zero activation from dividing by zero (it quantizes to zeros)


def quantize_activation(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x float32 [cols] -> (x_q int8 [cols], scale float32 []), symmetric per token."""
    scale = x.abs().amax().clamp_(min=_TINY) / 127.0
    # |x / scale| <= 127 up to one rounding step, so round() never leaves -127..127
    return torch.round(x / scale).to(torch.int8), scale


class GroupQuantLinear:
    """y = W x with group-quantized W (W4G32 with min, or W8G32 without) and INT8 activations."""

    def __init__(self, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, int8_activations: bool = True):
        # q: int8 [rows, cols]; d, m: float32 [rows, groups]
        self.q, self.d, self.m = q.contiguous(), d.contiguous(), None if m is None else m.contiguous()
        # False only for diagnosis: float activations times the dequantized weights (slow, not the kernel)
        self.int8_activations = int8_activations
        self._float_weight: torch.Tensor | None = None  # diagnostic path's cached dequantized weight
        self.rows, self.cols = q.shape
        self.groups = self.cols // GROUP_SIZE
        padded = -(-self.groups // _INT_MM_COLS) * _INT_MM_COLS
        self._blockdiag = torch.zeros(self.cols, padded, dtype=torch.int8)  # reused buffer [cols, groups padded]
        # view of the block diagonal: [32, groups], element (j, g) is row g*32+j, column g
        self._diagonal = self._blockdiag.view(self.groups, GROUP_SIZE, padded).diagonal(dim1=0, dim2=2)
        # d with zero columns for the padding: [rows, groups padded, 1]
        self._d_padded = torch.zeros(self.rows, padded, 1)
        self._d_padded[:, : self.groups, 0] = self.d

    @classmethod
    def concat(cls, parts: list["GroupQuantLinear"]) -> "GroupQuantLinear":
        """Stack row-wise the linears that read the same input (Q/K/V, gate/up): one GEMM instead of several."""
        m = None if parts[0].m is None else torch.cat([p.m for p in parts])
        return cls(torch.cat([p.q for p in parts]), torch.cat([p.d for p in parts]), m, parts[0].int8_activations)

    def _integer_parts(self, x_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # acc int32 [rows, groups padded] (padding columns are 0), xsum int32 [groups]
        self._diagonal.copy_(x_q.view(self.groups, GROUP_SIZE).t())
        acc = torch._int_mm(self.q, self._blockdiag)
        return acc, x_q.view(self.groups, GROUP_SIZE).sum(dim=1, dtype=torch.int32)

    def integer_parts(self, x_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(acc int32 [rows, groups], xsum int32 [groups]): the exact integer work of the kernel."""
        acc, xsum = self._integer_parts(x_q)
        return acc[:, : self.groups], xsum

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 [cols] -> y float32 [rows]."""
        if not self.int8_activations:
            if self._float_weight is None:
                self._float_weight = self.dequantized()
            return self._float_weight @ x
        x_q, scale = quantize_activation(x)
        acc, xsum = self._integer_parts(x_q)
        y = torch.bmm(acc.float().unsqueeze(1), self._d_padded).view(-1)  # sum_g d * acc, per row
        if self.m is not None:
            y.addmv_(self.m, xsum.float())  # + sum_g m * xsum
        return y.mul_(scale)


    def dequantized(self) -> torch.Tensor:
        """float32 [rows, cols]: d*q (+ m) per group."""
        w = self.q.float().view(self.rows, self.groups, GROUP_SIZE) * self.d.unsqueeze(-1)
        if self.m is not None:
            w = w + self.m.unsqueeze(-1)
        return w.view(self.rows, self.cols)


class FloatLinear:
    """Reference numerics: float32 y = W x."""

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
