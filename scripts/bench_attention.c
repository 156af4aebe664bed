// Usage: clang -O2 -I Sources/CKernels/include scripts/bench_attention.c Sources/CKernels/*.c -lm -o /tmp/ba && taskset -c 1 /tmp/ba [depth]
/* Single-thread timing of the tiled attention kernel in the two shapes that dominate long contexts, SmolLM2-135M's
   (head dim 64, 3 query heads per KV head, f16 KV in paged blocks of 16): one decoding row over `depth` keys, and a
   16-row prefill tile at that depth. Prints microseconds per call and GFLOP/s (2 flops per multiply-add of
   q·k and p·v). Build it with clang, as SwiftPM builds CKernels: gcc's code for these kernels is slower. Not part
   of the package. */
#define _GNU_SOURCE
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include "CKernels.h"
#include "tern_attention.h"

static uint64_t rs = 88172645463325252ull;
static float frand(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (float)(rs >> 40) / (float)(1 << 23) - 1.0f; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

int main(int argc, char **argv) {
    const int64_t depth = argc > 1 ? atoll(argv[1]) : 4096, hd = 64, kvh = 3, heads = 3, block = 16, layers = 30;
    const size_t row_bytes = (size_t)(kvh * hd * 2);
    const int64_t nseg = (depth + 16 + block - 1) / block;
    tern_kv_segment *segs = malloc(sizeof(tern_kv_segment) * nseg);
    /* One region, block after block, each block every layer's keys then values: the paged pool's layout. */
    const size_t layer_bytes = row_bytes * (size_t)block, block_bytes = layer_bytes * 2 * (size_t)layers;
    uint16_t *region = mmap(NULL, block_bytes * (size_t)nseg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (size_t i = 0; i < block_bytes * (size_t)nseg / 2; i++) {
        const float x = frand();
        tern_f32_to_f16(&x, &region[i], 1);
    }
    for (int64_t s = 0; s < nseg; s++) {
        const char *b = (const char *)region + (size_t)s * block_bytes;
        segs[s] = (tern_kv_segment){b, b + layer_bytes, s * block, block};
    }
    const size_t layer_offset = 2 * layer_bytes;
    float *q = malloc(sizeof(float) * 16 * heads * kvh * hd), *out = malloc(sizeof(float) * 16 * heads * kvh * hd);
    float lse[16 * 3];
    for (int64_t i = 0; i < 16 * heads * kvh * hd; i++) q[i] = frand();
    /* Each KV head's rows of a block together, as the pool keeps them; TERN_BENCH_ROW_MAJOR=1: whole rows together
       (the pool's layout before, 1.7x slower for one decoding row at depth 4096 on the AVX2 machine). */
    const int head_major = getenv("TERN_BENCH_ROW_MAJOR") == NULL;
    float *work = malloc(sizeof(float) * tern_attn_tiled_work_floats(hd, 16 * heads));
    const float scale = 1.0f / 8.0f;
    for (int rows = 1; rows <= 16; rows += 15) {
        const int64_t pos0 = depth;
        int iters = rows == 1 ? 200 : 20;
        double best = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            const double t0 = now();
            for (int it = 0; it < iters; it++)
                for (int64_t h = 0; h < kvh; h++)
                    tern_attn_tiled(TERN_F16, hd, scale, q + h * heads * hd, rows, heads, (size_t)(kvh * heads * hd), pos0, 0,
                                    segs, nseg, layer_offset * (size_t)(it % layers), head_major ? (size_t)(hd * 2) : row_bytes,
                                    head_major ? (size_t)(h * hd * 2 * block) : (size_t)(h * hd * 2), 0,
                                    pos0 + rows, work, out + h * heads * hd, (size_t)(kvh * heads * hd), lse);
            const double dt = (now() - t0) / (iters * kvh);
            if (dt < best) best = dt;
        }
        const double flops = 4.0 * rows * heads * hd * (depth + rows / 2.0);
        printf("rows %2d depth %lld: %8.1f us per KV head, %6.2f GFLOP/s, %.2f ms per token-step of %lld layers x %lld KV heads\n",
               rows, (long long)depth, best * 1e6, flops / best * 1e-9, best * 1e3 * layers * kvh / rows, (long long)layers, (long long)kvh);
    }
    return 0;
}
