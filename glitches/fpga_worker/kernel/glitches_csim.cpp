// C-simulation entry points of the decode kernel for the host (glitches/fpga_worker/kernel_csim.py, ctypes) and for
// the XRT host's tests: the top function over plain pointers, the burst counters, the compiled constants.
// Not part of the bitstream. Calls must not overlap (the kernel keeps its buffers in static storage, as
// on-chip memory): the Python wrapper holds a lock.
#include "glitches_abi.h"
#include "glitches_hbm.h"

extern "C" void glitches_decode(const uint8_t *args, GL_HBM_PARAMS, uint8_t *result);

uint64_t gl_burst_count[GL_S_COUNT][GL_PCS];
uint64_t gl_burst_bytes[GL_S_COUNT][GL_PCS];

// One kernel call. args: 512 bytes; hbm: 32 pointers, PC i's bytes (the image at [0, kv_base), KV pages
// above); result: 64 + 4 * vocab bytes. Returns the status the kernel wrote (result bytes 0..3).
extern "C" uint32_t glitches_csim_step(const uint8_t *args, uint8_t *const *hbm, uint8_t *result) {
#define GL_PTR(i) uint8_t *hbm##i = hbm[i];
    GL_FOR_PCS(GL_PTR)
#undef GL_PTR
    glitches_decode(args, GL_HBM_ARGS, result);
    uint32_t status;
    memcpy(&status, result, 4);
    return status;
}

// Copies the burst counters ([6 streams][32 PCs] each, streams in glitches_hbm.h's order) and zeroes them.
extern "C" void glitches_csim_bursts(uint64_t *counts, uint64_t *bytes) {
    memcpy(counts, gl_burst_count, sizeof gl_burst_count);
    memcpy(bytes, gl_burst_bytes, sizeof gl_burst_bytes);
    memset(gl_burst_count, 0, sizeof gl_burst_count);
    memset(gl_burst_bytes, 0, sizeof gl_burst_bytes);
}

// The constants this library was compiled with, for the host to check against glitches/fpga_worker/abi.py.
extern "C" uint32_t glitches_csim_constant(uint32_t which) {
    const uint32_t values[] = {GL_ABI_VERSION, GL_PCS, GL_GROUP, GL_KV_BLOCK_TOKENS, GL_KV_PAGE_TOKENS,
                               GL_MAX_KV_PAGES, GL_ARGS_BYTES, GL_RES_LOGITS, GL_PREFETCH_RATIO, GL_BUFFER_BYTES};
    return which < sizeof values / sizeof values[0] ? values[which] : 0;
}
