// ABI version 2 of the GLITCHES decode kernel (docs/fpga-kernel-abi.md): constants and byte offsets.
// The host's copy is glitches/fpga_worker/abi.py and glitches/fpga_worker/step_args.py; tests/test_kernel_csim.py checks
// that the two agree (glitches_csim_abi() reports these values).
#ifndef GLITCHES_ABI_H
#define GLITCHES_ABI_H

#include <stdint.h>

#define GL_ABI_VERSION 2u
#define GL_MAGIC 0x49574c47u            // "GLWI" read as a little-endian u32
#define GL_PCS 32                       // HBM pseudo-channels, one m_axi port each
#define GL_GROUP 32                     // weights (and activations) per quantization group
#define GL_KV_BLOCK_TOKENS 16           // tokens per KV block
#define GL_KV_PAGE_TOKENS 512           // tokens per block-table entry (32 blocks, one per PC)
#define GL_MAX_KV_PAGES 16              // block-table entries in the step arguments
#define GL_LANES 16                     // partial sums of every float reduction (sum16)
#define GL_ROW_ALIGN 64                 // every plane row is padded to 64 bytes

// Header (PC 0, offset 0): fixed part of 128 bytes, then 64-byte records at 128 + 64 i.
#define GL_HDR_FIXED_BYTES 128
#define GL_HDR_RECORD_BYTES 64
#define GL_HDR_MAGIC 0
#define GL_HDR_VERSION 4
#define GL_HDR_PCS 8
#define GL_HDR_GROUP 12
#define GL_HDR_BLOCK 16
#define GL_HDR_LAYERS 20
#define GL_HDR_HIDDEN 24
#define GL_HDR_HEADS 28
#define GL_HDR_KV_HEADS 32
#define GL_HDR_HEAD_DIM 36
#define GL_HDR_INTER 40
#define GL_HDR_VOCAB 44
#define GL_HDR_TIED 48
#define GL_HDR_MAX_POS 52
#define GL_HDR_RMS_EPS 56               // f32
#define GL_HDR_ROPE_THETA 60            // f32, informational (the kernel reads the RoPE table)
#define GL_HDR_KV_BASE 64               // u64
#define GL_HDR_COUNT 72
// Record fields (bytes from the record's start); name[32] first.
#define GL_REC_FMT 32
#define GL_REC_ROWS 36
#define GL_REC_COLS 40
#define GL_REC_ROWS_PER_PC 44
#define GL_REC_VALUE_STRIDE 48
#define GL_REC_SCALE_STRIDE 52
#define GL_REC_OFFSET 56
#define GL_REC_SCALE_OFFSET 60

// Tensor formats
#define GL_FMT_W4G32 1
#define GL_FMT_W8G32 2
#define GL_FMT_F32 3

// Image order: rope table, 9 tensors per layer, output_norm, token_embd, [output]
#define GL_T_ROPE 0
#define GL_T_LAYER(l, k) (1 + 9 * (l) + (k))
#define GL_K_ATTN_NORM 0
#define GL_K_Q 1
#define GL_K_K 2
#define GL_K_V 3
#define GL_K_O 4
#define GL_K_FFN_NORM 5
#define GL_K_GATE 6
#define GL_K_UP 7
#define GL_K_DOWN 8

// Step arguments (512 bytes, DDR)
#define GL_ARGS_BYTES 512
#define GL_ARG_VERSION 0
#define GL_ARG_TOKEN 4
#define GL_ARG_POSITION 8
#define GL_ARG_CAPACITY 12
#define GL_ARG_MODE 16
#define GL_ARG_LANE_STRIDE 20
#define GL_ARG_PAGES 24
#define GL_ARG_PC_BYTES 28
#define GL_ARG_BLOCK_TABLE 64

// Result (64 + 4 * vocab bytes, DDR)
#define GL_RES_STATUS 0
#define GL_RES_TOKEN 4
#define GL_RES_VOCAB 8
#define GL_RES_LOGITS 64

// Status codes
#define GL_OK 0
#define GL_BAD_IMAGE 1
#define GL_TOKEN_OUT_OF_RANGE 2
#define GL_POSITION_OUT_OF_RANGE 3
#define GL_KV_OUT_OF_BOUNDS 4
#define GL_BAD_MODE 5
#define GL_NON_FINITE 6

// Compile-time sizes of the on-chip buffers: the largest model this bitstream accepts (BAD_IMAGE above).
#ifndef GL_PREFETCH_RATIO
#define GL_PREFETCH_RATIO 4             // consecutive loads of one stream in one PC merged into one burst
#endif
#define GL_BUFFER_BYTES 32768           // per-PC prefetch buffer: the largest merged burst
#define GL_PC_BYTES_MAX (256u << 20)    // 256 MiB per pseudo-channel on a U280
#define GL_MAX_HIDDEN 4096
#define GL_MAX_INTER 14336
#define GL_MAX_HEADS 64
#define GL_MAX_KV_HEADS 64
#define GL_MAX_HEAD_DIM 128
#define GL_MAX_GQA 8                    // query heads per KV head
#define GL_MAX_LAYERS 80
#define GL_MAX_VOCAB 262144
#define GL_MAX_POSITIONS (GL_MAX_KV_PAGES * GL_KV_PAGE_TOKENS)

#endif
