// C++ testbench of glitches_decode, as Vitis csim would run it: golden vectors written by the Python kernel
// (tests/test_kernel_csim.py::test_cpp_testbench_matches_golden_vectors writes them; nothing is committed).
//
//   testbench DIR      DIR/hbm.bin: 32 PCs back to back, each pc_bytes long (image + prefill KV)
//                      DIR/steps.txt: "pc_bytes steps vocab"
//                      DIR/args_<i>.bin (512 bytes), DIR/expected_<i>.bin (64 + 4 * vocab bytes), i = 0 .. steps-1
// Steps run in order on the same HBM (each appends its K/V). Every result byte must equal the golden one.
// Exit status 0 and "PASS" on success; 1 and the first differing step and byte otherwise.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <vector>

#include "glitches_abi.h"
#include "glitches_hbm.h"

extern "C" void glitches_decode(const uint8_t *args, GL_HBM_PARAMS, uint8_t *result);

static std::vector<uint8_t> read_file(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(2); }
    std::vector<uint8_t> bytes;
    uint8_t chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) bytes.insert(bytes.end(), chunk, chunk + n);
    fclose(f);
    return bytes;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s GOLDEN_DIR\n", argv[0]); return 2; }
    const char *dir = argv[1];
    unsigned long pc_bytes = 0, steps = 0, vocab = 0;
    std::vector<uint8_t> meta = read_file(dir, "steps.txt");
    meta.push_back(0);
    if (sscanf((const char *)meta.data(), "%lu %lu %lu", &pc_bytes, &steps, &vocab) != 3) return 2;
    std::vector<uint8_t> hbm = read_file(dir, "hbm.bin");
    if (hbm.size() != GL_PCS * pc_bytes) { fprintf(stderr, "hbm.bin is %zu bytes\n", hbm.size()); return 2; }
#define GL_PTR(i) uint8_t *hbm##i = hbm.data() + (size_t)(i) * pc_bytes;
    GL_FOR_PCS(GL_PTR)
#undef GL_PTR
    std::vector<uint8_t> result(GL_RES_LOGITS + 4 * vocab);
    for (unsigned long s = 0; s < steps; s++) {
        char name[64];
        snprintf(name, sizeof name, "args_%lu.bin", s);
        std::vector<uint8_t> args = read_file(dir, name);
        snprintf(name, sizeof name, "expected_%lu.bin", s);
        std::vector<uint8_t> expected = read_file(dir, name);
        if (args.size() != GL_ARGS_BYTES || expected.size() != result.size()) return 2;
        glitches_decode(args.data(), GL_HBM_ARGS, result.data());
        for (size_t i = 0; i < result.size(); i++)
            if (result[i] != expected[i]) {
                printf("FAIL step %lu: byte %zu is %u, golden %u\n", s, i, result[i], expected[i]);
                return 1;
            }
    }
    printf("PASS %lu steps, %lu logits each, bit for bit\n", steps, vocab);
    return 0;
}
