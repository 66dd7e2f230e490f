// The kernel's only access to HBM: bursts from / to one of 32 pseudo-channel ports, chosen by a switch
// (HLS cannot index an array of m_axi pointers). In C simulation every burst is also counted per stream
// and PC, which is what the timing model (glitches/fpga_worker/instruction_stream.py) must reproduce.
#ifndef GLITCHES_HBM_H
#define GLITCHES_HBM_H

#include <stdint.h>
#include <string.h>

#include "glitches_abi.h"

// The 32 pseudo-channel ports as a parameter list and as arguments (generated once, kept verbatim).
#define GL_HBM_PARAMS uint8_t *hbm0, uint8_t *hbm1, uint8_t *hbm2, uint8_t *hbm3, uint8_t *hbm4, uint8_t *hbm5, uint8_t *hbm6, uint8_t *hbm7, uint8_t *hbm8, uint8_t *hbm9, uint8_t *hbm10, uint8_t *hbm11, uint8_t *hbm12, uint8_t *hbm13, uint8_t *hbm14, uint8_t *hbm15, uint8_t *hbm16, uint8_t *hbm17, uint8_t *hbm18, uint8_t *hbm19, uint8_t *hbm20, uint8_t *hbm21, uint8_t *hbm22, uint8_t *hbm23, uint8_t *hbm24, uint8_t *hbm25, uint8_t *hbm26, uint8_t *hbm27, uint8_t *hbm28, uint8_t *hbm29, uint8_t *hbm30, uint8_t *hbm31
#define GL_HBM_ARGS hbm0, hbm1, hbm2, hbm3, hbm4, hbm5, hbm6, hbm7, hbm8, hbm9, hbm10, hbm11, hbm12, hbm13, hbm14, hbm15, hbm16, hbm17, hbm18, hbm19, hbm20, hbm21, hbm22, hbm23, hbm24, hbm25, hbm26, hbm27, hbm28, hbm29, hbm30, hbm31
#define GL_FOR_PCS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) X(24) X(25) X(26) X(27) X(28) X(29) X(30) X(31)

// Streams a burst belongs to (the timing model's names): header, values, scales, vector, kv, kv_store.
enum { GL_S_HEADER, GL_S_VALUES, GL_S_SCALES, GL_S_VECTOR, GL_S_KV, GL_S_KV_STORE, GL_S_COUNT };

#ifndef __SYNTHESIS__
extern uint64_t gl_burst_count[GL_S_COUNT][GL_PCS];  // bursts issued since the last reset
extern uint64_t gl_burst_bytes[GL_S_COUNT][GL_PCS];  // their bytes
#define GL_COUNT_BURST(stream, pc, bytes) (gl_burst_count[stream][pc] += 1, gl_burst_bytes[stream][pc] += (bytes))
#else
#define GL_COUNT_BURST(stream, pc, bytes) ((void)0)
#endif

// dst <- PC pc bytes [offset, offset + bytes): one burst (HLS infers an AXI burst from memcpy).
static inline void gl_read(GL_HBM_PARAMS, int pc, uint32_t offset, uint8_t *dst, uint32_t bytes, int stream) {
    GL_COUNT_BURST(stream, pc, bytes);
    switch (pc) {
#define GL_READ_CASE(i) case i: memcpy(dst, hbm##i + offset, bytes); break;
        GL_FOR_PCS(GL_READ_CASE)
#undef GL_READ_CASE
    }
}

// The bytes of one burst, for reading only: in C simulation a pointer into the PC (the burst is counted, not
// copied: a speed measure of the simulation, same bytes); in synthesis a copy into `buffer` (on-chip).
static inline const uint8_t *gl_burst(GL_HBM_PARAMS, int pc, uint32_t offset, uint8_t *buffer, uint32_t bytes,
                                      int stream) {
#ifndef __SYNTHESIS__
    GL_COUNT_BURST(stream, pc, bytes);
    (void)buffer;
    switch (pc) {
#define GL_VIEW_CASE(i) case i: return hbm##i + offset;
        GL_FOR_PCS(GL_VIEW_CASE)
#undef GL_VIEW_CASE
    }
    return buffer;
#else
    gl_read(GL_HBM_ARGS, pc, offset, buffer, bytes, stream);
    return buffer;
#endif
}

// PC pc bytes [offset, offset + bytes) <- src: one burst.
static inline void gl_write(GL_HBM_PARAMS, int pc, uint32_t offset, const uint8_t *src, uint32_t bytes, int stream) {
    GL_COUNT_BURST(stream, pc, bytes);
    switch (pc) {
#define GL_WRITE_CASE(i) case i: memcpy(hbm##i + offset, src, bytes); break;
        GL_FOR_PCS(GL_WRITE_CASE)
#undef GL_WRITE_CASE
    }
}

#endif
