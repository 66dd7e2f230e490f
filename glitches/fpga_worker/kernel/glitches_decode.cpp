// The GLITCHES decode kernel: one call = one token (docs/fpga-kernel-abi.md, ABI version 2).
// Vitis HLS C++ in the synthesisable subset (static loop bounds with trip counts, no dynamic memory,
// no recursion, fixed-width integers). It also compiles with g++ as the emulator's C simulation
// (glitches_csim.cpp, built by `make setup`). It was never synthesised: see docs/fpga-kernel-build.md.
//
// Ports: args (512 bytes, DDR), hbm0..hbm31 (one m_axi port per HBM pseudo-channel: the weight image and
// the KV pages), result (64 + 4 * vocab bytes, DDR); s_axilite control.
#include "glitches_abi.h"
#include "glitches_attention.h"
#include "glitches_hbm.h"
#include "glitches_numerics.h"
#include "glitches_tensors.h"

struct GlModel {
    uint32_t layers, hidden, heads, kv_heads, head_dim, inter, vocab, tied, max_positions, count;
    float rms_eps;
    uint32_t kv_base;
    GlTensor tensors[4 + 9 * GL_MAX_LAYERS];  // rope, 9 per layer, output_norm, token_embd, output
};

static GlTensor gl_record(const uint8_t *rec) {
    GlTensor t;
    t.fmt = gl_rd32(rec + GL_REC_FMT);
    t.rows = gl_rd32(rec + GL_REC_ROWS);
    t.cols = gl_rd32(rec + GL_REC_COLS);
    t.rows_per_pc = gl_rd32(rec + GL_REC_ROWS_PER_PC);
    t.value_stride = gl_rd32(rec + GL_REC_VALUE_STRIDE);
    t.scale_stride = gl_rd32(rec + GL_REC_SCALE_STRIDE);
    t.offset = gl_rd32(rec + GL_REC_OFFSET);
    t.scale_offset = gl_rd32(rec + GL_REC_SCALE_OFFSET);
    return t;
}

static uint32_t gl_align64(uint32_t v) { return (v + GL_ROW_ALIGN - 1) / GL_ROW_ALIGN * GL_ROW_ALIGN; }

// A record is what the image order says it is and lies inside [64 KiB, kv_base) of every PC.
static bool gl_tensor_ok(const GlTensor &t, uint32_t fmt, uint32_t rows, uint32_t cols, uint32_t kv_base) {
    if (t.fmt != fmt || t.rows != rows || t.cols != cols || t.rows_per_pc != (rows + GL_PCS - 1) / GL_PCS) return false;
    uint32_t value_bytes = fmt == GL_FMT_W4G32 ? cols / 2 : (fmt == GL_FMT_W8G32 ? cols : 4 * cols);
    uint32_t scale_bytes = fmt == GL_FMT_W4G32 ? cols / 8 : (fmt == GL_FMT_W8G32 ? cols / 16 : 0);
    if (t.value_stride != gl_align64(value_bytes) || t.scale_stride != gl_align64(scale_bytes)) return false;
    if (t.value_stride > GL_BUFFER_BYTES) return false;  // one row must fit a burst buffer
    if (fmt == GL_FMT_F32 && cols == 16 && t.rows_per_pc * t.value_stride > GL_BUFFER_BYTES) return false;  // norms: one burst
    return t.offset >= 65536 && t.offset + (uint64_t)t.rows_per_pc * t.value_stride <= kv_base &&
           t.scale_offset + (uint64_t)t.rows_per_pc * t.scale_stride <= kv_base;
}

// Reads PC 0's header; false (BAD_IMAGE) unless it is a v2 image this bitstream can run.
static bool gl_read_model(GL_HBM_PARAMS, GlModel *m, uint32_t pc_bytes) {
    static uint8_t head[GL_HDR_FIXED_BYTES + GL_HDR_RECORD_BYTES * (4 + 9 * GL_MAX_LAYERS)];
    gl_read(GL_HBM_ARGS, 0, 0, head, GL_HDR_FIXED_BYTES, GL_S_HEADER);
    if (gl_rd32(head + GL_HDR_MAGIC) != GL_MAGIC || gl_rd32(head + GL_HDR_VERSION) != GL_ABI_VERSION ||
        gl_rd32(head + GL_HDR_PCS) != GL_PCS || gl_rd32(head + GL_HDR_GROUP) != GL_GROUP ||
        gl_rd32(head + GL_HDR_BLOCK) != GL_KV_BLOCK_TOKENS)
        return false;
    m->layers = gl_rd32(head + GL_HDR_LAYERS);
    m->hidden = gl_rd32(head + GL_HDR_HIDDEN);
    m->heads = gl_rd32(head + GL_HDR_HEADS);
    m->kv_heads = gl_rd32(head + GL_HDR_KV_HEADS);
    m->head_dim = gl_rd32(head + GL_HDR_HEAD_DIM);
    m->inter = gl_rd32(head + GL_HDR_INTER);
    m->vocab = gl_rd32(head + GL_HDR_VOCAB);
    m->tied = gl_rd32(head + GL_HDR_TIED);
    m->max_positions = gl_rd32(head + GL_HDR_MAX_POS);
    m->rms_eps = gl_rdf32(head + GL_HDR_RMS_EPS);
    uint64_t kv_base;
    memcpy(&kv_base, head + GL_HDR_KV_BASE, 8);
    m->count = gl_rd32(head + GL_HDR_COUNT);
    uint32_t D = m->head_dim, q_rows = m->heads * D, kv_rows = m->kv_heads * D;
    if (m->layers < 1 || m->layers > GL_MAX_LAYERS || m->hidden > GL_MAX_HIDDEN || m->hidden % GL_GROUP ||
        m->inter > GL_MAX_INTER || m->inter % GL_GROUP || m->heads > GL_MAX_HEADS || m->kv_heads < 1 ||
        m->heads % m->kv_heads || m->heads / m->kv_heads > GL_MAX_GQA || m->kv_heads > GL_MAX_KV_HEADS ||
        D > GL_MAX_HEAD_DIM || D % 16 || D == 0 || q_rows > GL_MAX_HIDDEN || q_rows % GL_GROUP ||
        m->vocab < 1 || m->vocab > GL_MAX_VOCAB || m->max_positions < 1 || m->max_positions > GL_MAX_POSITIONS ||
        m->count != 4 + 9 * m->layers - (m->tied ? 1 : 0) || kv_base > pc_bytes)
        return false;
    m->kv_base = (uint32_t)kv_base;
    gl_read(GL_HBM_ARGS, 0, GL_HDR_FIXED_BYTES, head + GL_HDR_FIXED_BYTES, m->count * GL_HDR_RECORD_BYTES, GL_S_HEADER);
    for (uint32_t i = 0; i < m->count; i++) {
#pragma HLS LOOP_TRIPCOUNT min=12 max=723
        m->tensors[i] = gl_record(head + GL_HDR_FIXED_BYTES + i * GL_HDR_RECORD_BYTES);
    }
    const uint32_t H = m->hidden, F32 = GL_FMT_F32, W4 = GL_FMT_W4G32;
    bool ok = gl_tensor_ok(m->tensors[GL_T_ROPE], F32, m->max_positions, D, m->kv_base);
    for (uint32_t l = 0; l < m->layers; l++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=80
        const GlTensor *t = &m->tensors[GL_T_LAYER(l, 0)];
        ok = ok && gl_tensor_ok(t[GL_K_ATTN_NORM], F32, H / 16, 16, m->kv_base) &&
             gl_tensor_ok(t[GL_K_Q], W4, q_rows, H, m->kv_base) && gl_tensor_ok(t[GL_K_K], W4, kv_rows, H, m->kv_base) &&
             gl_tensor_ok(t[GL_K_V], W4, kv_rows, H, m->kv_base) && gl_tensor_ok(t[GL_K_O], W4, H, q_rows, m->kv_base) &&
             gl_tensor_ok(t[GL_K_FFN_NORM], F32, H / 16, 16, m->kv_base) &&
             gl_tensor_ok(t[GL_K_GATE], W4, m->inter, H, m->kv_base) && gl_tensor_ok(t[GL_K_UP], W4, m->inter, H, m->kv_base) &&
             gl_tensor_ok(t[GL_K_DOWN], W4, H, m->inter, m->kv_base);
    }
    const GlTensor &embd = m->tensors[GL_T_LAYER(m->layers, 1)];
    ok = ok && gl_tensor_ok(m->tensors[GL_T_LAYER(m->layers, 0)], F32, H / 16, 16, m->kv_base) &&
         (gl_tensor_ok(embd, GL_FMT_W8G32, m->vocab, H, m->kv_base) || gl_tensor_ok(embd, W4, m->vocab, H, m->kv_base));
    if (!m->tied) ok = ok && gl_tensor_ok(m->tensors[GL_T_LAYER(m->layers, 2)], W4, m->vocab, H, m->kv_base);
    return ok;
}

// x := weight * (x * (1 / sqrt(sum16(x * x) / n + eps)))
static void gl_rms_norm(const float *x, const float *weight, uint32_t n, float eps, float *out) {
    float lanes[GL_LANES];
    for (int l = 0; l < GL_LANES; l++) lanes[l] = 0.0f;
    for (uint32_t i = 0; i < n; i++) lanes[i % GL_LANES] += x[i] * x[i];
    float inv = 1.0f / sqrtf(gl_fold16(lanes) / (float)n + eps);
    for (uint32_t i = 0; i < n; i++) out[i] = weight[i] * (x[i] * inv);
}

// Rotate-half RoPE of `heads` vectors [D] in place with cos, sin [D / 2] from the image's table.
static void gl_rope(float *x, uint32_t heads, uint32_t D, const float *cos_sin) {
    uint32_t half = D / 2;
    for (uint32_t h = 0; h < heads; h++)
        for (uint32_t i = 0; i < half; i++) {
            float a = x[h * D + i], b = x[h * D + half + i], c = cos_sin[i], s = cos_sin[half + i];
            x[h * D + i] = a * c - b * s;
            x[h * D + half + i] = b * c + a * s;
        }
}

static void gl_put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

// Checks the step arguments against the model; GL_OK or the status to return.
static uint32_t gl_check_args(const uint8_t *args, const GlModel &m, GlKv *kv, uint32_t *token, uint32_t *position) {
    if (gl_rd32(args + GL_ARG_VERSION) != GL_ABI_VERSION || gl_rd32(args + GL_ARG_MODE) != 0) return GL_BAD_MODE;
    *token = gl_rd32(args + GL_ARG_TOKEN);
    *position = gl_rd32(args + GL_ARG_POSITION);
    uint32_t capacity = gl_rd32(args + GL_ARG_CAPACITY), pages = gl_rd32(args + GL_ARG_PAGES);
    uint32_t pc_bytes = gl_rd32(args + GL_ARG_PC_BYTES);
    if (*token >= m.vocab) return GL_TOKEN_OUT_OF_RANGE;
    if (*position >= capacity || *position >= m.max_positions) return GL_POSITION_OUT_OF_RANGE;
    kv->lane_stride = gl_rd32(args + GL_ARG_LANE_STRIDE);
    kv->block_bytes = GL_KV_BLOCK_TOKENS * m.head_dim * 2;
    uint64_t lanes = 2ull * m.layers * m.kv_heads;
    if (pages > GL_MAX_KV_PAGES || (uint64_t)pages * GL_KV_PAGE_TOKENS < capacity || pc_bytes > GL_PC_BYTES_MAX ||
        kv->lane_stride < kv->block_bytes)
        return GL_KV_OUT_OF_BOUNDS;
    for (uint32_t c = 0; c < GL_MAX_KV_PAGES; c++) {
        kv->table[c] = gl_rd32(args + GL_ARG_BLOCK_TABLE + 4 * c);
        if (c < pages && (kv->table[c] < m.kv_base ||
                          kv->table[c] + (lanes - 1) * kv->lane_stride + kv->block_bytes > pc_bytes))
            return GL_KV_OUT_OF_BOUNDS;
    }
    return GL_OK;
}

extern "C" void glitches_decode(const uint8_t *args, GL_HBM_PARAMS, uint8_t *result) {
#pragma HLS INTERFACE m_axi port=args bundle=ddr offset=slave
#pragma HLS INTERFACE m_axi port=result bundle=ddr offset=slave
#pragma HLS INTERFACE m_axi port=hbm0 bundle=hbm0 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm1 bundle=hbm1 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm2 bundle=hbm2 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm3 bundle=hbm3 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm4 bundle=hbm4 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm5 bundle=hbm5 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm6 bundle=hbm6 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm7 bundle=hbm7 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm8 bundle=hbm8 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm9 bundle=hbm9 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm10 bundle=hbm10 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm11 bundle=hbm11 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm12 bundle=hbm12 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm13 bundle=hbm13 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm14 bundle=hbm14 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm15 bundle=hbm15 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm16 bundle=hbm16 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm17 bundle=hbm17 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm18 bundle=hbm18 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm19 bundle=hbm19 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm20 bundle=hbm20 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm21 bundle=hbm21 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm22 bundle=hbm22 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm23 bundle=hbm23 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm24 bundle=hbm24 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm25 bundle=hbm25 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm26 bundle=hbm26 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm27 bundle=hbm27 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm28 bundle=hbm28 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm29 bundle=hbm29 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm30 bundle=hbm30 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE m_axi port=hbm31 bundle=hbm31 offset=slave max_read_burst_length=256 max_write_burst_length=256
#pragma HLS INTERFACE s_axilite port=return
    static GlModel m;
    static GlKv kv;
    static GlActs acts;
    static float x[GL_MAX_HIDDEN], h[GL_MAX_HIDDEN], norm[GL_MAX_HIDDEN], cos_sin[GL_MAX_HEAD_DIM];
    static float q[GL_MAX_HIDDEN], k[GL_MAX_KV_HEADS * GL_MAX_HEAD_DIM], v[GL_MAX_KV_HEADS * GL_MAX_HEAD_DIM];
    static float attn[GL_MAX_HIDDEN], gate[GL_MAX_INTER], up[GL_MAX_INTER];
    static float logits[GL_PREFETCH_RATIO * GL_PCS];
    static uint8_t arg_bytes[GL_ARGS_BYTES], head[GL_RES_LOGITS];
    static uint16_t kv16[GL_MAX_HEAD_DIM];

    memcpy(arg_bytes, args, GL_ARGS_BYTES);
    for (int i = 0; i < GL_RES_LOGITS; i++) head[i] = 0;
    uint32_t token = 0, position = 0, status = GL_OK;
    if (!gl_read_model(GL_HBM_ARGS, &m, gl_rd32(arg_bytes + GL_ARG_PC_BYTES))) status = GL_BAD_IMAGE;
    if (status == GL_OK) status = gl_check_args(arg_bytes, m, &kv, &token, &position);
    gl_put32(head + GL_RES_VOCAB, m.vocab);
    if (status != GL_OK) {
        gl_put32(head + GL_RES_STATUS, status);
        memcpy(result, head, GL_RES_LOGITS);
        return;
    }
    const uint32_t H = m.hidden, D = m.head_dim, G = m.heads / m.kv_heads, L = m.layers;
    const GlTensor &embd = m.tensors[GL_T_LAYER(L, 1)];
    gl_embed(GL_HBM_ARGS, embd, token, x);
    {  // RoPE row `position`: cos [D/2] then sin [D/2]
        static uint8_t row[GL_MAX_HEAD_DIM * 4], unused[GL_ROW_ALIGN];
        gl_load_row(GL_HBM_ARGS, m.tensors[GL_T_ROPE], position, row, unused, GL_S_VECTOR);
        for (uint32_t i = 0; i < D; i++) cos_sin[i] = gl_rdf32(row + 4 * i);
    }
    for (uint32_t l = 0; l < L; l++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=80
        const GlTensor *t = &m.tensors[GL_T_LAYER(l, 0)];
        gl_vector(GL_HBM_ARGS, t[GL_K_ATTN_NORM], norm);
        gl_rms_norm(x, norm, H, m.rms_eps, h);
        gl_quantize(h, H, &acts, GL_INT16_MAX);  // the Q/K/V input: 16 bits (its outliers cost 8 bits most)
        gl_matvec(GL_HBM_ARGS, t[GL_K_Q], &acts, q);
        gl_matvec(GL_HBM_ARGS, t[GL_K_K], &acts, k);
        gl_matvec(GL_HBM_ARGS, t[GL_K_V], &acts, v);
        gl_rope(q, m.heads, D, cos_sin);
        gl_rope(k, m.kv_heads, D, cos_sin);
        for (uint32_t i = 0; i < m.kv_heads * D; i++) {  // the new token's K/V as the cache holds them: float16
            k[i] = gl_half_to_f32(gl_f32_to_half(k[i]));
            v[i] = gl_half_to_f32(gl_f32_to_half(v[i]));
        }
        for (uint32_t kvh = 0; kvh < m.kv_heads; kvh++) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=64
            uint32_t lane_k = (l * m.kv_heads + kvh) * 2;
            gl_attend(GL_HBM_ARGS, kv, lane_k, position, D, G, q + kvh * G * D, k + kvh * D, v + kvh * D,
                      attn + kvh * G * D);
            for (uint32_t kind = 0; kind < 2; kind++) {  // store the new K and V after attending (no RAW in a call)
                const float *src = (kind == 0 ? k : v) + kvh * D;
                for (uint32_t e = 0; e < D; e++) kv16[e] = gl_f32_to_half(src[e]);
                uint32_t lane = lane_k + kind, b = position / GL_KV_BLOCK_TOKENS;
                uint32_t offset = kv.table[position / GL_KV_PAGE_TOKENS] + lane * kv.lane_stride +
                                  (position % GL_KV_BLOCK_TOKENS) * D * 2;
                gl_write(GL_HBM_ARGS, (int)((lane + b) % GL_PCS), offset, (const uint8_t *)kv16, D * 2, GL_S_KV_STORE);
            }
        }
        gl_quantize(attn, m.heads * D, &acts, GL_INT8_MAX);
        gl_matvec(GL_HBM_ARGS, t[GL_K_O], &acts, h);
        for (uint32_t i = 0; i < H; i++) x[i] = x[i] + h[i];
        gl_vector(GL_HBM_ARGS, t[GL_K_FFN_NORM], norm);
        gl_rms_norm(x, norm, H, m.rms_eps, h);
        gl_quantize(h, H, &acts, GL_INT8_MAX);
        gl_matvec(GL_HBM_ARGS, t[GL_K_GATE], &acts, gate);
        gl_matvec(GL_HBM_ARGS, t[GL_K_UP], &acts, up);
        for (uint32_t i = 0; i < m.inter; i++) gate[i] = (gate[i] / (1.0f + gl_exp(-gate[i]))) * up[i];
        gl_quantize(gate, m.inter, &acts, GL_INT8_MAX);
        gl_matvec(GL_HBM_ARGS, t[GL_K_DOWN], &acts, h);
        for (uint32_t i = 0; i < H; i++) x[i] = x[i] + h[i];
    }
    gl_vector(GL_HBM_ARGS, m.tensors[GL_T_LAYER(L, 0)], norm);
    gl_rms_norm(x, norm, H, m.rms_eps, h);
    gl_quantize(h, H, &acts, GL_INT8_MAX);
    // LM head: chunks of per * 32 rows, each stored to the result with one burst; argmax lowest index on ties.
    const GlTensor &lm = m.tied ? embd : m.tensors[GL_T_LAYER(L, 2)];
    uint32_t per = gl_merge(lm.value_stride), best = 0;
    float best_logit = 0.0f;
    bool finite = true;
    for (uint32_t slot0 = 0; slot0 < lm.rows_per_pc; slot0 += per) {
#pragma HLS LOOP_TRIPCOUNT min=1 max=8192
        uint32_t n = lm.rows_per_pc - slot0 < per ? lm.rows_per_pc - slot0 : per;
        gl_matvec_chunk(GL_HBM_ARGS, lm, &acts, slot0, n, logits);
        uint32_t first = slot0 * GL_PCS, rows = n * GL_PCS;
        if (first + rows > m.vocab) rows = m.vocab - first;
        for (uint32_t i = 0; i < rows; i++) {
            float z = logits[i];
            if (!(z - z == 0.0f)) finite = false;  // NaN or infinity
            if (first + i == 0 || z > best_logit) { best = first + i; best_logit = z; }
        }
        memcpy(result + GL_RES_LOGITS + 4 * first, logits, 4 * rows);
    }
    gl_put32(head + GL_RES_STATUS, finite ? GL_OK : GL_NON_FINITE);
    gl_put32(head + GL_RES_TOKEN, best);
    memcpy(result, head, GL_RES_LOGITS);
}
