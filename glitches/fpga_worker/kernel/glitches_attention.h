// Grouped-query attention of one layer over the request's paged KV (docs/fpga-kernel-abi.md section 4-5).
// Tokens 0 .. T-1 come from HBM through the block table; token T (the one being decoded) comes from chip,
// so the kernel never reads in one call what it wrote in that call. Blocks are visited in ascending order
// (the sum16 lanes are token index mod 16); each PC has a prefetch window that one merged burst fills
// with up to GL_PREFETCH_RATIO consecutive pages of a lane when their blocks are contiguous in that PC.
#ifndef GLITCHES_ATTENTION_H
#define GLITCHES_ATTENTION_H

#include "glitches_abi.h"
#include "glitches_hbm.h"
#include "glitches_numerics.h"

// Where a request's KV is: from the step arguments.
struct GlKv {
    uint32_t table[GL_MAX_KV_PAGES];  // page c: byte offset in every PC of lane 0's block of that page
    uint32_t lane_stride;             // bytes between lane u and u + 1 within a page
    uint32_t block_bytes;             // 16 * head_dim * 2
};

// Per-PC prefetch windows: pages [first, first + count) of the current lane.
struct GlWindows {
    uint8_t buf[GL_PCS][GL_BUFFER_BYTES];
    uint32_t first[GL_PCS], count[GL_PCS];
};

static void gl_windows_reset(GlWindows *w) {
    for (int pc = 0; pc < GL_PCS; pc++) w->count[pc] = 0;
}

// The bytes of block b of lane u (b < blocks), from its PC's window; a miss fills the window with one burst.
static const uint8_t *gl_kv_block(GL_HBM_PARAMS, const GlKv &kv, GlWindows *w, uint32_t u, uint32_t b,
                                  uint32_t blocks) {
    int pc = (int)((u + b) % GL_PCS);
    uint32_t page = b / GL_PCS;
    if (w->count[pc] == 0 || page < w->first[pc] || page >= w->first[pc] + w->count[pc]) {
        uint32_t per = GL_BUFFER_BYTES / kv.block_bytes < GL_PREFETCH_RATIO ? GL_BUFFER_BYTES / kv.block_bytes
                                                                          : GL_PREFETCH_RATIO;
        uint32_t n = 1;
        while (n < per && b + n * GL_PCS < blocks && kv.table[page + n] == kv.table[page] + n * kv.block_bytes) n++;
        gl_read(GL_HBM_ARGS, pc, kv.table[page] + u * kv.lane_stride, w->buf[pc], n * kv.block_bytes, GL_S_KV);
        w->first[pc] = page;
        w->count[pc] = n;
    }
    return w->buf[pc] + (page - w->first[pc]) * kv.block_bytes;
}

// out [G * D] for the G query heads q [G * D] sharing KV head h of layer l, with the new token's k, v [D]
// (float16 values widened) at position T:
//   score_t = sum16_e(q_e * k_te) * (1 / sqrt(D)); p_t = exp(score_t - max score); out_e = sum16_t(p_t v_te) / sum16_t(p_t)
static void gl_attend(GL_HBM_PARAMS, const GlKv &kv, uint32_t lane_k, uint32_t T, uint32_t D, uint32_t G,
                      const float *q, const float *k_new, const float *v_new, float *out) {
    static float scores[GL_MAX_GQA][GL_MAX_POSITIONS];
    static float acc[GL_MAX_GQA][GL_MAX_HEAD_DIM][GL_LANES];
    static GlWindows windows;
    static float row[GL_MAX_HEAD_DIM];
    const float scale = 1.0f / sqrtf((float)D);
    uint32_t blocks = (T + GL_KV_BLOCK_TOKENS - 1) / GL_KV_BLOCK_TOKENS;

    gl_windows_reset(&windows);
    for (uint32_t t = 0; t <= T; t++) {  // pass 1: scores, K lane
#pragma HLS LOOP_TRIPCOUNT min=1 max=8192
        const float *k = k_new;
        if (t < T) {
            const uint8_t *blk = gl_kv_block(GL_HBM_ARGS, kv, &windows, lane_k, t / GL_KV_BLOCK_TOKENS, blocks);
            for (uint32_t e = 0; e < D; e++) row[e] = gl_half_to_f32(gl_rd16(blk + ((t % GL_KV_BLOCK_TOKENS) * D + e) * 2));
            k = row;
        }
        for (uint32_t g = 0; g < G; g++) {
            float lanes[GL_LANES];
            for (int l = 0; l < GL_LANES; l++) lanes[l] = 0.0f;
            for (uint32_t e = 0; e < D; e++) lanes[e % GL_LANES] += q[g * D + e] * k[e];
            scores[g][t] = gl_fold16(lanes) * scale;
        }
    }
    float denom[GL_MAX_GQA];
    for (uint32_t g = 0; g < G; g++) {  // softmax numerators and their sum16
        float top = scores[g][0];
        for (uint32_t t = 1; t <= T; t++) if (scores[g][t] > top) top = scores[g][t];
        float lanes[GL_LANES];
        for (int l = 0; l < GL_LANES; l++) lanes[l] = 0.0f;
        for (uint32_t t = 0; t <= T; t++) {
            scores[g][t] = gl_exp(scores[g][t] - top);
            lanes[t % GL_LANES] += scores[g][t];
        }
        denom[g] = gl_fold16(lanes);
        for (uint32_t e = 0; e < D; e++)
            for (int l = 0; l < GL_LANES; l++) acc[g][e][l] = 0.0f;
    }
    gl_windows_reset(&windows);
    for (uint32_t t = 0; t <= T; t++) {  // pass 2: weighted values, V lane
#pragma HLS LOOP_TRIPCOUNT min=1 max=8192
        const float *v = v_new;
        if (t < T) {
            const uint8_t *blk = gl_kv_block(GL_HBM_ARGS, kv, &windows, lane_k + 1, t / GL_KV_BLOCK_TOKENS, blocks);
            for (uint32_t e = 0; e < D; e++) row[e] = gl_half_to_f32(gl_rd16(blk + ((t % GL_KV_BLOCK_TOKENS) * D + e) * 2));
            v = row;
        }
        for (uint32_t g = 0; g < G; g++)
            for (uint32_t e = 0; e < D; e++) acc[g][e][t % GL_LANES] += scores[g][t] * v[e];
    }
    for (uint32_t g = 0; g < G; g++)
        for (uint32_t e = 0; e < D; e++) out[g * D + e] = gl_fold16(acc[g][e]) / denom[g];
}

#endif
