// The kernel's float arithmetic, bit for bit as docs/fpga-kernel-abi.md "Numerics" specifies and
// glitches/fpga_worker/w4a8_ops.py implements: IEEE float32, round-to-nearest-even, one rounding per operation.
// Build with -ffp-contract=off and without -ffast-math: a fused multiply-add or a reassociated sum
// would change bits. sqrtf is correctly rounded in IEEE 754 (so in glibc); in HLS, hls::sqrt's rounding
// is an unverified assumption (docs/fpga-kernel-build.md).
#ifndef GLITCHES_NUMERICS_H
#define GLITCHES_NUMERICS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "glitches_abi.h"

static inline float gl_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t gl_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
// Little-endian fields from on-chip bytes (the host and the U280's AXI are little-endian).
static inline uint32_t gl_rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t gl_rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline float gl_rdf32(const uint8_t *p) { float v; memcpy(&v, p, 4); return v; }

// Round to the nearest integer, ties to even, for |v| < 2^22 (all the kernel needs: |v| <= 128).
// Adding and subtracting 1.5 * 2^23 leaves exactly one rounding, done in round-to-nearest-even.
// The sign of a zero result may differ from rintf's; no result of the kernel depends on it.
static inline float gl_rint(float v) {
    const float big = 12582912.0f;  // 1.5 * 2^23
    float t = v + big;  // without -ffast-math the compiler may not fold (v + big) - big into v
    return t - big;
}

// Fold 16 partial sums by halves: lane l += lane l + w for w = 8, 4, 2, 1; returns lane 0.
static inline float gl_fold16(float lanes[GL_LANES]) {
    for (int w = GL_LANES / 2; w >= 1; w /= 2) {
#pragma HLS UNROLL
        for (int l = 0; l < w; l++) lanes[l] = lanes[l] + lanes[l + w];
    }
    return lanes[0];
}

// exp by a fixed polynomial (no libm): clamp to [-86, 88], k = rint(x log2 e), r = (x - k ln2_hi) - k ln2_lo,
// Horner over 1/720, 1/120, 1/24, 1/6, 1/2, 1, 1, times 2^k built from its bits.
static inline float gl_exp(float x) {
    const float log2e = gl_bits_f32(0x3fb8aa3bu), ln2_hi = gl_bits_f32(0x3f317200u), ln2_lo = gl_bits_f32(0x35bfbe8eu);
    if (x < -86.0f) x = -86.0f;
    if (x > 88.0f) x = 88.0f;
    float k = gl_rint(x * log2e);
    float r = (x - k * ln2_hi) - k * ln2_lo;
    float p = (float)(1.0 / 720.0);
    p = p * r + (float)(1.0 / 120.0);
    p = p * r + (float)(1.0 / 24.0);
    p = p * r + (float)(1.0 / 6.0);
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    return p * gl_bits_f32((uint32_t)((int32_t)k + 127) << 23);
}

// IEEE binary16 <-> float32. half -> float is exact; float -> half rounds to nearest even.
static inline float gl_half_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ffu;
    if (exp == 0) {  // zero or subnormal: man * 2^-24, exact in float32
        float v = (float)man * gl_bits_f32(0x33800000u);
        return gl_bits_f32(gl_f32_bits(v) | sign);
    }
    if (exp == 31) return gl_bits_f32(sign | 0x7f800000u | (man << 13));
    return gl_bits_f32(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t gl_f32_to_half(float f) {
    uint32_t x = gl_f32_bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));  // NaN stays NaN
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);                         // >= 65520: infinity
    if (ax < 0x38800000u) {  // below 2^-14: a subnormal half, round(|f| * 2^24) to even (exact scaling)
        float v = gl_bits_f32(ax) * 16777216.0f;
        return (uint16_t)(sign | (uint32_t)gl_rint(v));
    }
    uint32_t rounded = ax + 0x0fffu + ((ax >> 13) & 1u);  // round to nearest even at bit 13
    return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
}

#endif
