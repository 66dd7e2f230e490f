"""The W4A8 kernel's arithmetic, ABI v2 (docs/fpga-kernel-abi.md, "Numerics"): the readable specification.

Every float operation is IEEE float32 with round-to-nearest-even, one rounding per + - * /
and sqrt (numpy's elementwise float32 ops: no fused multiply-add, no reassociation), in an
order the C++ kernel (glitches/fpga_worker/kernel/glitches_numerics.h) repeats exactly, so the two
produce the same bits:

- sum16: every float sum. Lane l = i mod 16 accumulates elements i in index order starting
  from +0.0; then lanes are folded by halves: l += l + 8, then l += l + 4, + 2, + 1; lane 0.
- exp_f32: a fixed polynomial (no libm): x clamped to [-86, 88], k = rint(x * log2 e),
  r = (x - k ln2_hi) - k ln2_lo, p = Horner over 1/720 .. 1 (degree 6), times 2^k built from bits.
- W4A8 group matmul with one activation scale per group of 32 (llama.cpp's Q8 blocks, in float32);
  qmax = 127 (INT8), except the Q/K/V projection's input: qmax = 32767 (INT16):
    s_g    = max_j |x[32g+j]| / qmax                     float32 division
    x_q    = rint(x / s_g), 0 where s_g == 0             -qmax..qmax
    acc    = sum_j q[r, 32g+j] * x_q[32g+j]              int32, exact
    xsum_g = sum_j x_q[32g+j]                            int32, exact
    term   = ((d[r,g] * acc) + (m[r,g] * xsum_g)) * s_g  float32, W8G32 has no m term
    y[r]   = sum16 over g of term
"""

from __future__ import annotations

import numpy as np
import torch

from glitches.fpga_worker.abi import GROUP_SIZE

F32 = np.float32
LANES = 16  # partial sums per float reduction
_INT_MM_COLS = 8  # torch._int_mm wants the output width to be a multiple of 8

# exp_f32 constants (float32 values; bit patterns in the ABI doc)
_LOG2E = F32(1.44269502)  # 0x3fb8aa3b
_LN2_HI = F32(0.693145751953125)  # 0x3f317200: few mantissa bits, so k * _LN2_HI is exact for |k| < 256
_LN2_LO = F32(1.42860677e-06)  # 0x35bfbe8e
_EXP_POLY = tuple(F32(c) for c in (1 / 720, 1 / 120, 1 / 24, 1 / 6, 0.5, 1.0, 1.0))  # Horner, highest degree first
_EXP_MIN, _EXP_MAX = F32(-86.0), F32(88.0)  # 2^k stays a normal float32 and the result finite


def sum16(a: np.ndarray) -> np.ndarray:
    """float32 [n, ...] -> [...]: the kernel's one float reduction order (see module doc)."""
    n = a.shape[0]
    lanes = np.zeros((LANES,) + a.shape[1:], F32)
    full = n - n % LANES
    for i in range(0, full, LANES):
        lanes += a[i: i + LANES]
    if n > full:
        lanes[: n - full] += a[full:]
    width = LANES // 2
    while width:
        lanes[:width] += lanes[width: 2 * width]
        width //= 2
    return lanes[0]


def exp_f32(x: np.ndarray) -> np.ndarray:
    """float32 exp by the ABI's polynomial (about 2 ulp from the true value; bit-equal to the kernel's)."""
    x = np.where(x < _EXP_MIN, _EXP_MIN, np.where(x > _EXP_MAX, _EXP_MAX, x)).astype(F32)
    k = np.rint(x * _LOG2E)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = np.full_like(r, _EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + c
    two_k = ((k.astype(np.int32) + 127) << 23).astype(np.int32).view(F32)
    return p * two_k


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: F32) -> np.ndarray:
    """x, weight float32 [n] -> weight * (x * (1 / sqrt(sum16(x * x) / n + eps)))."""
    mean = sum16(x * x) / F32(x.shape[0])
    inv = F32(1.0) / np.sqrt(mean + eps)
    return weight * (x * inv)


INT8_MAX, INT16_MAX = 127, 32767  # activation ranges: 8 bits everywhere but the Q/K/V input (16 bits)


def quantize_groups(x: np.ndarray, qmax: int = INT8_MAX) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [cols] -> (x_q [cols], s float32 [cols / 32]), symmetric, one scale per 32 values:
    s = max|x| / qmax, x_q = rint(x / s) in -qmax..qmax (int8 for 127, int16 for 32767)."""
    groups = x.reshape(-1, GROUP_SIZE)
    scale = np.abs(groups).max(axis=1) / F32(qmax)
    safe = np.where(scale > 0, scale, F32(1.0))
    q = np.where(scale[:, None] > 0, np.rint(groups / safe[:, None]), F32(0.0))
    dtype = np.int8 if qmax == INT8_MAX else np.int16
    return np.clip(q, -qmax, qmax).astype(dtype).reshape(-1), scale.astype(F32)


def silu_mul(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(gate / (1 + exp_f32(-gate))) * up, float32."""
    return (gate / (F32(1.0) + exp_f32(-gate))) * up


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x float32 [heads, head_dim]; cos, sin [head_dim / 2] from the image's table; rotate-half:
    out[i] = x[i] cos[i] - x[i+h] sin[i], out[i+h] = x[i+h] cos[i] + x[i] sin[i]."""
    half = x.shape[-1] // 2
    a, b = x[:, :half], x[:, half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=1)


def attention(q: np.ndarray, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
    """q float32 [heads, D]; keys, values float32 [kv_heads, tokens, D] (float16 values widened) -> [heads * D].

    score = sum16_e(q[e] * k[t, e]) * (1 / sqrt(D)); p = exp_f32(score - max_t score);
    out[e] = sum16_t(p[t] * v[t, e]) / sum16_t(p[t]), tokens in position order.
    """
    kv_heads, _, dim = keys.shape
    grouped = q.reshape(kv_heads, -1, dim)  # [kv_heads, G, D]
    dots = sum16(np.moveaxis(grouped[:, :, None, :] * keys[:, None, :, :], -1, 0))  # [kv_heads, G, tokens]
    scores = dots * (F32(1.0) / np.sqrt(F32(dim)))
    p = exp_f32(scores - scores.max(axis=-1, keepdims=True))
    denom = sum16(np.moveaxis(p, -1, 0))  # [kv_heads, G]
    out = sum16(np.moveaxis(p[..., None] * values[:, None, :, :], 2, 0))  # [kv_heads, G, D]
    return (out / denom[..., None]).reshape(-1)


class GroupQuantLinear:
    """y = W x with group-quantized W (W4G32 with min, or W8G32 without) and per-group integer activations:
    INT8 (qmax 127), or INT16 (qmax 32767) for the Q/K/V projection, whose input has the worst outliers."""

    def __init__(self, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, int8_activations: bool = True,
                 qmax: int = INT8_MAX):
        # q: int8 [rows, cols]; d, m: float32 [rows, groups]
        self.q = q.contiguous()
        self.d = d.float().numpy().astype(F32)
        self.m = None if m is None else m.float().numpy().astype(F32)
        # False only for diagnosis: float activations times the dequantized weights (not the kernel)
        self.int8_activations = int8_activations
        self.qmax = qmax
        self._float_weight: np.ndarray | None = None
        self.rows, self.cols = q.shape
        self.groups = self.cols // GROUP_SIZE
        padded = -(-self.groups // _INT_MM_COLS) * _INT_MM_COLS
        self._blockdiag = torch.zeros(self.cols, padded, dtype=torch.int8)  # reused buffer [cols, groups padded]
        # view of the block diagonal: [32, groups], element (j, g) is row g*32+j, column g
        self._diagonal = self._blockdiag.view(self.groups, GROUP_SIZE, padded).diagonal(dim1=0, dim2=2)

    @classmethod
    def concat(cls, parts: list["GroupQuantLinear"]) -> "GroupQuantLinear":
        """Stack row-wise the linears that read the same input (Q/K/V, gate/up): rows are independent."""
        m = None if parts[0].m is None else torch.from_numpy(np.concatenate([p.m for p in parts]))
        return cls(torch.cat([p.q for p in parts]), torch.from_numpy(np.concatenate([p.d for p in parts])), m,
                   parts[0].int8_activations, parts[0].qmax)

    def integer_parts(self, x_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(acc int32 [rows, groups], xsum int32 [groups]): the exact integer work (one int8 GEMM; for 16-bit
        activations a numpy int32 product, |acc| <= 15 * 32767 * 32 < 2^24)."""
        if x_q.dtype == np.int16:
            groups = x_q.reshape(self.groups, GROUP_SIZE).astype(np.int32)
            weights = self.q.numpy().reshape(self.rows, self.groups, GROUP_SIZE).astype(np.int32)
            return (weights * groups).sum(axis=2, dtype=np.int32), groups.sum(axis=1, dtype=np.int32)
        xq = torch.from_numpy(x_q)
        self._diagonal.copy_(xq.view(self.groups, GROUP_SIZE).t())
        acc = torch._int_mm(self.q, self._blockdiag)[:, : self.groups]
        return acc.numpy(), xq.view(self.groups, GROUP_SIZE).sum(dim=1, dtype=torch.int32).numpy()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """x float32 [cols] -> y float32 [rows]."""
        if not self.int8_activations:
            if self._float_weight is None:
                self._float_weight = self.dequantized()
            return self._float_weight @ x
        x_q, scale = quantize_groups(x, self.qmax)
        acc, xsum = self.integer_parts(x_q)
        terms = self.d * acc.astype(F32)  # [rows, groups]
        if self.m is not None:
            terms = terms + self.m * xsum.astype(F32)
        terms = terms * scale
        return sum16(np.ascontiguousarray(terms.T))

    def dequantized(self) -> np.ndarray:
        """float32 [rows, cols]: d*q (+ m) per group."""
        w = self.q.numpy().astype(F32).reshape(self.rows, self.groups, GROUP_SIZE) * self.d[:, :, None]
        if self.m is not None:
            w = w + self.m[:, :, None]
        return w.reshape(self.rows, self.cols)
