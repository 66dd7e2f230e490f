// Weight-image access of the kernel: header records, the W4A8 group matrix-vector product with merged
// loads, embedding rows, norm vectors and RoPE rows. Layouts: docs/fpga-kernel-abi.md sections 2-3.
#ifndef GLITCHES_TENSORS_H
#define GLITCHES_TENSORS_H

#include "glitches_abi.h"
#include "glitches_hbm.h"
#include "glitches_numerics.h"

// One header record (all fields u32; offsets are bytes from the start of every PC).
struct GlTensor {
    uint32_t fmt, rows, cols, rows_per_pc, value_stride, scale_stride, offset, scale_offset;
};

// Integer activations of one vector x [n]: one scale per group of 32 (ABI "Numerics"). INT8 (qmax 127) for
// every matrix input but Q/K/V's, which is INT16 (qmax 32767, in q16; `wide` set).
#define GL_INT8_MAX 127
#define GL_INT16_MAX 32767
struct GlActs {
    int8_t q[GL_MAX_INTER];                // x_q [n], -127..127 (INT8)
    int16_t q16[GL_MAX_HIDDEN];            // x_q [n], -32767..32767 (INT16, the Q/K/V input)
    float scale[GL_MAX_INTER / GL_GROUP];  // s_g = max |x| / qmax over group g
    int32_t xsum[GL_MAX_INTER / GL_GROUP]; // sum of the group's x_q
    uint32_t n;
    bool wide;                             // q16 holds the values (qmax 32767)
};

// Consecutive slots of one stream merged into one burst: the prefetch ratio, capped by the buffer.
static inline uint32_t gl_merge(uint32_t unit_bytes) {
    uint32_t fit = GL_BUFFER_BYTES / unit_bytes;
    uint32_t per = fit < GL_PREFETCH_RATIO ? fit : GL_PREFETCH_RATIO;
    return per ? per : 1;
}

// s_g = max|x|/qmax, x_q = rint(x / s_g) (0 where s_g == 0), xsum_g = sum of x_q; qmax 127 or 32767 (n <= hidden).
static void gl_quantize(const float *x, uint32_t n, GlActs *a, int32_t qmax) {
    a->n = n;
    a->wide = qmax == GL_INT16_MAX;
    const float limit = (float)qmax;
    for (uint32_t g = 0; g < n / GL_GROUP; g++) {
#pragma HLS LOOP_TRIPCOUNT min=2 max=448
        float amax = 0.0f;
        for (int j = 0; j < GL_GROUP; j++) {
            float v = fabsf(x[g * GL_GROUP + j]);
            if (v > amax) amax = v;
        }
        float s = amax / limit;
        int32_t sum = 0;
        for (int j = 0; j < GL_GROUP; j++) {
#pragma HLS PIPELINE II=1
            int32_t q = 0;
            if (s > 0.0f) {
                float r = gl_rint(x[g * GL_GROUP + j] / s);
                q = r > limit ? qmax : (r < -limit ? -qmax : (int32_t)r);
            }
            if (a->wide) a->q16[g * GL_GROUP + j] = (int16_t)q;
            else a->q[g * GL_GROUP + j] = (int8_t)q;
            sum += q;
        }
        a->scale[g] = s;
        a->xsum[g] = sum;
    }
}

// One output row: sum16 over groups of ((d * acc) + (m * xsum)) * s  (W8G32: (d * acc) * s).
static float gl_row(uint32_t fmt, uint32_t groups, const uint8_t *values, const uint8_t *scales, const GlActs *a) {
    float lanes[GL_LANES];
    for (int l = 0; l < GL_LANES; l++) lanes[l] = 0.0f;
    for (uint32_t g = 0; g < groups; g++) {
#pragma HLS LOOP_TRIPCOUNT min=2 max=448
        const int8_t *xq = a->q + g * GL_GROUP;
        int32_t acc = 0;
        float term;
        if (fmt == GL_FMT_W4G32 && a->wide) {  // INT16 activations: |acc| <= 15 * 32767 * 32 < 2^24
            const uint8_t *qb = values + g * (GL_GROUP / 2);
            const int16_t *xw = a->q16 + g * GL_GROUP;
            for (int j = 0; j < GL_GROUP / 2; j++) {
#pragma HLS UNROLL
                acc += (int32_t)(qb[j] & 15) * xw[j] + (int32_t)(qb[j] >> 4) * xw[j + GL_GROUP / 2];
            }
            float d = gl_half_to_f32(gl_rd16(scales + 4 * g)), m = gl_half_to_f32(gl_rd16(scales + 4 * g + 2));
            term = d * (float)acc;
            term = term + m * (float)a->xsum[g];
        } else if (fmt == GL_FMT_W4G32) {
            const uint8_t *qb = values + g * (GL_GROUP / 2);
            for (int j = 0; j < GL_GROUP / 2; j++) {
#pragma HLS UNROLL
                acc += (int32_t)(qb[j] & 15) * xq[j] + (int32_t)(qb[j] >> 4) * xq[j + GL_GROUP / 2];
            }
            float d = gl_half_to_f32(gl_rd16(scales + 4 * g)), m = gl_half_to_f32(gl_rd16(scales + 4 * g + 2));
            term = d * (float)acc;
            term = term + m * (float)a->xsum[g];
        } else {
            const int8_t *qb = (const int8_t *)values + g * GL_GROUP;
            for (int j = 0; j < GL_GROUP; j++) {
#pragma HLS UNROLL
                acc += (int32_t)qb[j] * xq[j];
            }
            term = gl_half_to_f32(gl_rd16(scales + 2 * g)) * (float)acc;
        }
        lanes[g % GL_LANES] += term * a->scale[g];
    }
    return gl_fold16(lanes);
}

// y = W x for the slots [slot0, slot0 + n) of every PC: one value burst and one scale burst of n * stride
// bytes per PC (the merged loads); row r = slot * 32 + pc lands in y[r - slot0 * 32].
static void gl_matvec_chunk(GL_HBM_PARAMS, const GlTensor &t, const GlActs *a, uint32_t slot0, uint32_t n, float *y) {
    static uint8_t values[GL_BUFFER_BYTES], scales[GL_BUFFER_BYTES];
    uint32_t groups = t.cols / GL_GROUP;
    for (int pc = 0; pc < GL_PCS; pc++) {
        const uint8_t *v = gl_burst(GL_HBM_ARGS, pc, t.offset + slot0 * t.value_stride, values, n * t.value_stride,
                                    GL_S_VALUES);
        const uint8_t *s = gl_burst(GL_HBM_ARGS, pc, t.scale_offset + slot0 * t.scale_stride, scales,
                                    n * t.scale_stride, GL_S_SCALES);
        for (uint32_t i = 0; i < n; i++) {
            uint32_t r = (slot0 + i) * GL_PCS + pc;
            if (r < t.rows) y[i * GL_PCS + pc] = gl_row(t.fmt, groups, v + i * t.value_stride, s + i * t.scale_stride, a);
        }
    }
}

// y [rows] = W x: rows_per_pc slots per PC, `per` at a time (the prefetch ratio, capped by the buffer).
static void gl_matvec(GL_HBM_PARAMS, const GlTensor &t, const GlActs *a, float *y) {
    uint32_t per = gl_merge(t.value_stride);
    for (uint32_t slot0 = 0; slot0 < t.rows_per_pc; slot0 += per) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=2048
        uint32_t n = t.rows_per_pc - slot0 < per ? t.rows_per_pc - slot0 : per;
        gl_matvec_chunk(GL_HBM_ARGS, t, a, slot0, n, y + slot0 * GL_PCS);
    }
}

// An F32 vector [n] stored as [n / 16, 16]: one burst of rows_per_pc * 64 bytes from every PC.
static void gl_vector(GL_HBM_PARAMS, const GlTensor &t, float *out) {
    static uint8_t buf[GL_BUFFER_BYTES];
    for (int pc = 0; pc < GL_PCS; pc++) {
        gl_read(GL_HBM_ARGS, pc, t.offset, buf, t.rows_per_pc * t.value_stride, GL_S_VECTOR);
        for (uint32_t slot = 0; slot < t.rows_per_pc; slot++) {
            uint32_t r = slot * GL_PCS + pc;
            if (r >= t.rows) break;
            for (uint32_t c = 0; c < t.cols; c++) out[r * t.cols + c] = gl_rdf32(buf + slot * t.value_stride + 4 * c);
        }
    }
}

// Row `row` of a tensor (value and scale bytes) into buffers: one burst each.
static void gl_load_row(GL_HBM_PARAMS, const GlTensor &t, uint32_t row, uint8_t *values, uint8_t *scales, int stream) {
    int pc = (int)(row % GL_PCS);
    uint32_t slot = row / GL_PCS;
    gl_read(GL_HBM_ARGS, pc, t.offset + slot * t.value_stride, values, t.value_stride, stream);
    if (t.scale_stride)
        gl_read(GL_HBM_ARGS, pc, t.scale_offset + slot * t.scale_stride, scales, t.scale_stride, GL_S_SCALES);
}

// x [hidden] = row `token` of the embedding: d * q (+ m) per group.
static void gl_embed(GL_HBM_PARAMS, const GlTensor &t, uint32_t token, float *x) {
    static uint8_t values[GL_BUFFER_BYTES], scales[GL_BUFFER_BYTES];
    gl_load_row(GL_HBM_ARGS, t, token, values, scales, GL_S_VALUES);
    for (uint32_t i = 0; i < t.cols; i++) {
        uint32_t g = i / GL_GROUP, j = i % GL_GROUP;
        if (t.fmt == GL_FMT_W4G32) {
            uint8_t byte = values[g * 16 + (j % 16)];
            float q = (float)(j < 16 ? (byte & 15) : (byte >> 4));
            float d = gl_half_to_f32(gl_rd16(scales + 4 * g)), m = gl_half_to_f32(gl_rd16(scales + 4 * g + 2));
            x[i] = d * q + m;
        } else {
            x[i] = gl_half_to_f32(gl_rd16(scales + 2 * g)) * (float)(int8_t)values[i];
        }
    }
}

#endif
