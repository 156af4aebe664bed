// Usage: cc -O2 -I Sources/CKernels/include scripts/bench_kernels.c Sources/CKernels/*.c -lm -o /tmp/bk && taskset -c 1 /tmp/bk [check|time [type]|decode|f16check|f16time|f16decode]
/* Standalone check and timing of the packed products on the active path against tern_matmul_q, the portable
   packed reader (bit for bit), and a dense double product of the dequantized operands; then single-thread
   GFLOP/s of packed vs unpacked for SmolLM2-135M shapes. Not part of the package. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "CKernels.h"

static uint64_t rs = 88172645463325252ull;
static float frand(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return (float)(rs >> 40) / (float)(1 << 23) - 1.0f; }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

typedef struct { const char *name; int id; } ty;
static const ty TYPES[] = {{"q4_1", TERN_Q4_1}, {"q4_0", TERN_Q4_0}, {"q4_k", TERN_Q4_K}, {"q6_k", TERN_Q6_K},
                           {"q8_0", TERN_Q8_0}, {"q5_0", TERN_Q5_0}, {"q5_1", TERN_Q5_1}, {"q5_k", TERN_Q5_K}};

static uint8_t *make_weights(int type, int64_t rows, int64_t n, size_t *rb) {
    *rb = (size_t)(n / tern_type_block_elements(type) * tern_type_block_bytes(type));
    uint8_t *w = malloc(*rb * rows);
    float *x = malloc(sizeof(float) * n);
    for (int64_t r = 0; r < rows; r++) {
        float sc = 0.2f + 2.0f * fabsf(frand()), off = 0.3f * frand();
        for (int64_t j = 0; j < n; j++) x[j] = sc * frand() + off;
        tern_quantize_row(type, x, w + r * *rb, n);
    }
    free(x);
    return w;
}

static tern_q8_block *make_acts(int64_t m, int64_t n) {
    float *x = malloc(sizeof(float) * m * n);
    for (int64_t i = 0; i < m * n; i++) x[i] = frand() * (1.0f + (i % 97 == 0 ? 20.0f : 0.0f));
    tern_q8_block *a = aligned_alloc(64, sizeof(tern_q8_block) * m * n / 32 + 64);
    for (int64_t i = 0; i < m; i++) tern_quantize_activations(x + i * n, a + i * n / 32, n);
    free(x);
    return a;
}

static void *make_packed(int type, const uint8_t *w, size_t rb, int64_t rows, int64_t n) {
    size_t sz = tern_packed_size(type, rows, n);
    if (!sz) return NULL;
    void *p = aligned_alloc(64, (sz + 63) & ~(size_t)63);
    if (tern_pack_weights(type, w, rb, rows, n, p)) { free(p); return NULL; }
    return p;
}

static long fails, checks;

static void check(const ty *t, int64_t rows, int64_t n, const int64_t *ms, int nm) {
    size_t rb;
    const int type = t->id;
    if (n % tern_type_block_elements(type)) return;
    uint8_t *w = make_weights(type, rows, n, &rb);
    void *pk = make_packed(type, w, rb, rows, n);
    if (!pk) { printf("%s: not packed on this path\n", t->name); free(w); return; }
    int64_t mmax = ms[nm - 1], ldo = rows + 5;
    tern_q8_block *a = make_acts(mmax, n);
    float *deq = malloc(sizeof(float) * rows * n), *xa = malloc(sizeof(float) * mmax * n);
    for (int64_t r = 0; r < rows; r++) tern_dequantize_row(type, w + r * rb, deq + r * n, n);
    for (int64_t i = 0; i < mmax * n; i++) xa[i] = a[i / 32].d * a[i / 32].q[i % 32];
    float *got = malloc(sizeof(float) * mmax * ldo), *ref = malloc(sizeof(float) * mmax * ldo),
          *uq = malloc(sizeof(float) * mmax * ldo), *one = malloc(sizeof(float) * ldo);
    double worst_q = 0, worst_d = 0;
    long bad_bits = 0, bad_m = 0, bad_nan = 0;
    for (int im = 0; im < nm; im++) {
        int64_t m = ms[im];
        /* row ranges as threads split them: whole, a panel-aligned middle, the tail */
        int64_t rr[3][2] = {{0, rows}, {16, rows < 48 ? rows : 48}, {rows > 32 ? (rows / 2) & ~15 : 0, rows}};
        for (int k = 0; k < 3; k++) {
            int64_t r0 = rr[k][0], r1 = rr[k][1];
            if (r0 >= r1) continue;
            for (int64_t i = 0; i < m * ldo; i++) got[i] = ref[i] = uq[i] = NAN;
            tern_force_path(TERN_PATH_AVX2);
            tern_matmul_packed(type, pk, rows, n, a, m, got, ldo, r0, r1);
            tern_matmul_q(type, w, rb, n, a, m, uq, ldo, r0, r1);
            tern_force_path(TERN_PATH_SCALAR);
            tern_matmul_packed(type, pk, rows, n, a, m, ref, ldo, r0, r1);
            tern_force_path(TERN_PATH_AVX2);
            for (int64_t i = 0; i < m; i++)
                for (int64_t r = 0; r < ldo; r++) {
                    float g = got[i * ldo + r];
                    if (r < r0 || r >= r1) { bad_nan += !isnan(g); continue; }
                    checks++;
                    uint32_t gb, eb;
                    memcpy(&gb, &g, 4); memcpy(&eb, &ref[i * ldo + r], 4);
                    bad_bits += gb != eb;
                    if (k) continue;
                    double dense = 0, mag = 0;
                    for (int64_t j = 0; j < n; j++) {
                        double p = (double)deq[r * n + j] * xa[i * n + j];
                        dense += p; mag += fabs(p);
                    }
                    double eq = fabs(g - uq[i * ldo + r]) / (mag + 1e-30), ed = fabs(g - dense) / (mag + 1e-30);
                    if (eq > worst_q) worst_q = eq;
                    if (ed > worst_d) worst_d = ed;
                }
        }
        /* every activation row alone (m = 1) gives the same bits as inside the batch */
        for (int64_t i = 0; i < m; i += (m > 8 ? 7 : 1)) {
            for (int64_t r = 0; r < ldo; r++) one[r] = NAN;
            tern_matmul_packed(type, pk, rows, n, a + i * (n / 32), 1, one, ldo, 0, rows);
            tern_matmul_packed(type, pk, rows, n, a, m, got, ldo, 0, rows);
            bad_m += memcmp(one, got + i * ldo, sizeof(float) * rows) != 0;
        }
    }
    int ok = !bad_bits && !bad_m && !bad_nan && worst_q <= 1e-4 && worst_d <= 1e-4;
    fails += !ok;
    printf("%-5s rows=%5lld n=%5lld m<=%3lld  bits!=scalar-packed:%ld  m-variant:%ld  outside:%ld  "
           "max rel err vs matmul_q %.2e, vs dense %.2e  %s\n", t->name, (long long)rows, (long long)n,
           (long long)mmax, bad_bits, bad_m, bad_nan, worst_q, worst_d, ok ? "ok" : "FAIL");
    free(w); free(pk); free(a); free(deq); free(xa); free(got); free(ref); free(uq); free(one);
}

/* Quants at their extremes (every nibble 15, 5-bit 31, 6-bit 63, int8 127 or -128) against activations of
   +-127: any int16 saturation in a kernel shows as a mismatch with the portable reader. */
static void check_extreme(const ty *t, int64_t n) {
    const int type = t->id;
    size_t rb;
    int64_t rows = 40, m = 6, ldo = rows;
    if (n % tern_type_block_elements(type)) return;
    uint8_t *w = make_weights(type, rows, n, &rb);
    size_t bb = (size_t)tern_type_block_bytes(type), q0, q1;
    switch (type) {
    case TERN_Q4_0: q0 = 2; q1 = 18; break;
    case TERN_Q4_1: q0 = 4; q1 = 20; break;
    case TERN_Q5_0: q0 = 2; q1 = 22; break;
    case TERN_Q5_1: q0 = 4; q1 = 24; break;
    case TERN_Q8_0: q0 = 2; q1 = 34; break;
    case TERN_Q4_K: q0 = 16; q1 = 144; break;
    case TERN_Q5_K: q0 = 16; q1 = 176; break;
    default: q0 = 0; q1 = 192; break; /* Q6_K */
    }
    for (int64_t r = 0; r < rows; r++)
        for (size_t b = 0; b < rb / bb; b++) {
            uint8_t *blk = w + r * rb + b * bb;
            memset(blk + q0, type == TERN_Q8_0 ? (r % 2 ? 0x80 : 0x7f) : r % 4 == 3 ? 0x00 : 0xff, q1 - q0);
            if (type == TERN_Q4_K || type == TERN_Q5_K) memset(blk + 4, 0xff, 12); /* scale / min 63 */
            if (type == TERN_Q6_K) memset(blk + 192, r % 3 ? 0x7f : 0x80, 16);
        }
    tern_force_path(TERN_PATH_AVX2);
    void *pk = make_packed(type, w, rb, rows, n);
    float *x = malloc(sizeof(float) * m * n);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) x[i * n + j] = i == 0 ? 1.0f : i == 1 ? -1.0f : i == 2 ? (j % 2 ? 1.0f : -1.0f) : frand() > 0 ? 1.0f : -1.0f;
    tern_q8_block *a = aligned_alloc(64, sizeof(tern_q8_block) * m * n / 32 + 64);
    for (int64_t i = 0; i < m; i++) tern_quantize_activations(x + i * n, a + i * n / 32, n);
    float *got = malloc(sizeof(float) * m * ldo), *ref = malloc(sizeof(float) * m * ldo), *uq = malloc(sizeof(float) * m * ldo);
    tern_matmul_packed(type, pk, rows, n, a, m, got, ldo, 0, rows);
    tern_matmul_q(type, w, rb, n, a, m, uq, ldo, 0, rows);
    tern_force_path(TERN_PATH_SCALAR);
    tern_matmul_packed(type, pk, rows, n, a, m, ref, ldo, 0, rows);
    tern_force_path(TERN_PATH_AVX2);
    long bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < m * ldo; i++) {
        bad += memcmp(&got[i], &ref[i], 4) != 0;
        double e = fabs(got[i] - uq[i]) / (fabs(uq[i]) + 1e-30);
        if (e > worst) worst = e;
    }
    fails += bad != 0;
    printf("%-5s extreme quants n=%lld: bits!=scalar-packed:%ld  max rel diff vs matmul_q %.2e  %s\n", t->name,
           (long long)n, bad, worst, bad ? "FAIL" : "ok");
    free(w); free(pk); free(x); free(a); free(got); free(ref); free(uq);
}

static double best_time(int packed, int type, const void *w, size_t rb, const void *pk, int64_t rows, int64_t n,
                        const tern_q8_block *a, int64_t m, float *out, int reps) {
    double best = 1e30;
    for (int k = 0; k < reps; k++) {
        double t0 = now();
        if (packed) tern_matmul_packed(type, pk, rows, n, a, m, out, rows, 0, rows);
        else tern_matmul_q(type, w, rb, n, a, m, out, rows, 0, rows);
        double t = now() - t0;
        if (t < best) best = t;
    }
    return best;
}

static void timing(const ty *t, int64_t n, int64_t rows) {
    size_t rb;
    if (n % tern_type_block_elements(t->id)) return;
    uint8_t *w = make_weights(t->id, rows, n, &rb);
    tern_force_path(TERN_PATH_AVX2);
    void *pk = make_packed(t->id, w, rb, rows, n);
    if (!pk) { printf("%s not packed\n", t->name); free(w); return; }
    const int64_t ms[] = {1, 4, 16, 64, 256};
    tern_q8_block *a = make_acts(256, n);
    float *out = malloc(sizeof(float) * 256 * rows);
    for (int k = 0; k < 5; k++) {
        int64_t m = ms[k];
        double flop = 2.0 * rows * n * m;
        int reps = (int)(2e9 / flop) + 5;
        if (reps > 400) reps = 400;
        double to = best_time(0, t->id, w, rb, pk, rows, n, a, m, out, reps);
        double tn = best_time(1, t->id, w, rb, pk, rows, n, a, m, out, reps);
        printf("%-5s n=%5lld rows=%6lld m=%4lld  old %8.1f us %6.1f GF/s   new %8.1f us %6.1f GF/s   x%.2f\n",
               t->name, (long long)n, (long long)rows, (long long)m, to * 1e6, flop / to * 1e-9, tn * 1e6,
               flop / tn * 1e-9, to / tn);
    }
    free(w); free(pk); free(a); free(out);
}

/* Decode as the model sees it: m = 1 over a weight set larger than L3 (120 matrices 1536 x 576 Q4_1, 66 MB),
   so each product streams its weights from DRAM. */
static void decode_sweep(void) {
    enum { NM = 120 };
    const int type = TERN_Q4_1;
    const int64_t rows = 1536, n = 576;
    size_t rb;
    uint8_t *w[NM];
    void *pk[NM];
    tern_force_path(TERN_PATH_AVX2);
    for (int k = 0; k < NM; k++) { w[k] = make_weights(type, rows, n, &rb); pk[k] = make_packed(type, w[k], rb, rows, n); }
    tern_q8_block *a = make_acts(1, n);
    float *out = malloc(sizeof(float) * rows);
    for (int packed = 0; packed < 2; packed++) {
        double best = 1e30;
        for (int rep = 0; rep < 7; rep++) {
            double t0 = now();
            for (int k = 0; k < NM; k++) {
                if (packed) tern_matmul_packed(type, pk[k], rows, n, a, 1, out, rows, 0, rows);
                else tern_matmul_q(type, w[k], rb, n, a, 1, out, rows, 0, rows);
            }
            double t = now() - t0;
            if (t < best) best = t;
        }
        printf("decode sweep m=1, %d x (n=%lld rows=%lld) q4_1, %.0f MB: %s %.2f ms (%.1f GB/s, %.1f GF/s)\n", NM,
               (long long)n, (long long)rows, NM * rb * rows / 1e6, packed ? "new packed" : "old tern_matmul_q",
               best * 1e3, NM * rb * rows / best * 1e-9, 2.0 * NM * rows * n / best * 1e-9);
    }
    for (int k = 0; k < NM; k++) { free(w[k]); free(pk[k]); }
    free(a); free(out);
}

/* ---------- float weights (tern_matmul_f): F16 ---------- */

static uint16_t *make_f16(int64_t rows, int64_t n) {
    uint16_t *w = malloc(2 * rows * n + 64);
    float *x = malloc(sizeof(float) * n);
    for (int64_t r = 0; r < rows; r++) {
        float sc = 0.05f + 0.2f * fabsf(frand()), off = 0.02f * frand();
        for (int64_t j = 0; j < n; j++) x[j] = sc * frand() + off;
        tern_quantize_row(TERN_F16, x, w + r * n, n);
    }
    free(x);
    return w;
}

/* Active path (AVX2) against a dense double product of the dequantized weights, and against the scalar path. */
static void check_f16(int64_t rows, int64_t n, const int64_t *ms, int nm) {
    uint16_t *w = make_f16(rows, n);
    int64_t mmax = ms[nm - 1], ldo = rows + 3;
    float *x = malloc(sizeof(float) * mmax * n), *deq = malloc(sizeof(float) * rows * n);
    for (int64_t i = 0; i < mmax * n; i++) x[i] = frand() * (1.0f + (i % 97 == 0 ? 20.0f : 0.0f));
    for (int64_t r = 0; r < rows; r++) tern_dequantize_row(TERN_F16, w + r * n, deq + r * n, n);
    float *got = malloc(sizeof(float) * mmax * ldo), *ref = malloc(sizeof(float) * mmax * ldo);
    double worst_d = 0, worst_s = 0;
    long bad_nan = 0;
    for (int im = 0; im < nm; im++) {
        int64_t m = ms[im];
        int64_t rr[3][2] = {{0, rows}, {1, rows < 38 ? rows : 38}, {rows / 2 + 1, rows}};
        for (int k = 0; k < 3; k++) {
            int64_t r0 = rr[k][0], r1 = rr[k][1];
            if (r0 >= r1) continue;
            for (int64_t i = 0; i < m * ldo; i++) got[i] = ref[i] = NAN;
            tern_force_path(TERN_PATH_AVX2);
            tern_matmul_f(TERN_F16, w, 2 * n, n, x, m, got, ldo, r0, r1);
            tern_force_path(TERN_PATH_SCALAR);
            tern_matmul_f(TERN_F16, w, 2 * n, n, x, m, ref, ldo, r0, r1);
            tern_force_path(TERN_PATH_AVX2);
            for (int64_t i = 0; i < m; i++)
                for (int64_t r = 0; r < ldo; r++) {
                    float g = got[i * ldo + r];
                    if (r < r0 || r >= r1) { bad_nan += !isnan(g); continue; }
                    checks++;
                    double dense = 0, mag = 0;
                    for (int64_t j = 0; j < n; j++) {
                        double p = (double)deq[r * n + j] * x[i * n + j];
                        dense += p; mag += fabs(p);
                    }
                    double ed = fabs(g - dense) / (mag + 1e-30), es = fabs(g - ref[i * ldo + r]) / (mag + 1e-30);
                    if (!(ed <= worst_d)) worst_d = ed;
                    if (!(es <= worst_s)) worst_s = es;
                }
        }
    }
    int ok = !bad_nan && worst_d <= 1e-5 && worst_s <= 1e-5;
    fails += !ok;
    printf("f16   rows=%5lld n=%5lld m<=%3lld  outside:%ld  max rel err vs dense %.2e, vs scalar %.2e  %s\n",
           (long long)rows, (long long)n, (long long)mmax, bad_nan, worst_d, worst_s, ok ? "ok" : "FAIL");
    free(w); free(x); free(deq); free(got); free(ref);
}

static void time_f16(int64_t n, int64_t rows) {
    uint16_t *w = make_f16(rows, n);
    const int64_t ms[] = {1, 2, 3, 4, 5, 8, 16, 128};
    float *x = malloc(sizeof(float) * 128 * n), *out = malloc(sizeof(float) * 128 * rows);
    for (int64_t i = 0; i < 128 * n; i++) x[i] = frand();
    tern_force_path(TERN_PATH_AVX2);
    for (int k = 0; k < 8; k++) {
        int64_t m = ms[k];
        double flop = 2.0 * rows * n * m, best = 1e30;
        int reps = (int)(2e9 / flop) + 5;
        if (reps > 400) reps = 400;
        for (int rep = 0; rep < reps; rep++) {
            double t0 = now();
            tern_matmul_f(TERN_F16, w, 2 * n, n, x, m, out, rows, 0, rows);
            double t = now() - t0;
            if (t < best) best = t;
        }
        printf("f16   n=%5lld rows=%6lld m=%4lld  %9.1f us %6.1f GF/s %6.1f GB/s\n", (long long)n, (long long)rows,
               (long long)m, best * 1e6, flop / best * 1e-9, 2.0 * rows * n / best * 1e-9);
    }
    free(w); free(x); free(out);
}

/* Decode as the model sees it: m = 1 over 60 F16 matrices 1536 x 576 (106 MB, beyond L3). */
static void decode_f16(void) {
    enum { NM = 60 };
    const int64_t rows = 1536, n = 576;
    uint16_t *w[NM];
    for (int k = 0; k < NM; k++) w[k] = make_f16(rows, n);
    float *x = malloc(sizeof(float) * n), *out = malloc(sizeof(float) * rows);
    for (int64_t i = 0; i < n; i++) x[i] = frand();
    tern_force_path(TERN_PATH_AVX2);
    double best = 1e30;
    for (int rep = 0; rep < 25; rep++) {
        double t0 = now();
        for (int k = 0; k < NM; k++) tern_matmul_f(TERN_F16, w[k], 2 * n, n, x, 1, out, rows, 0, rows);
        double t = now() - t0;
        if (t < best) best = t;
    }
    printf("f16 decode sweep m=1, %d x (n=%lld rows=%lld), %.0f MB: %.2f ms (%.1f GB/s)\n", NM, (long long)n,
           (long long)rows, NM * 2.0 * rows * n / 1e6, best * 1e3, NM * 2.0 * rows * n / best * 1e-9);
    for (int k = 0; k < NM; k++) free(w[k]);
    free(x); free(out);
}

/* Small batches (decoding streams) over one matrix: `batch TYPE ROWS N`, e.g. `batch q8_0 262144 640` for
   Gemma 3's output projection. Single thread, best of several runs. */
static void time_batch(const ty *t, int64_t rows, int64_t n) {
    size_t rb;
    uint8_t *w = make_weights(t->id, rows, n, &rb);
    void *pk = make_packed(t->id, w, rb, rows, n);
    free(w);
    if (!pk) { printf("%s not packed\n", t->name); return; }
    const int64_t ms[] = {1, 2, 3, 4, 5, 6, 8, 12, 16};
    tern_q8_block *a = make_acts(16, n);
    float *out = malloc(sizeof(float) * 16 * rows);
    for (int k = 0; k < 9; k++) {
        int64_t m = ms[k];
        double flop = 2.0 * rows * n * m, best = 1e30;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = now();
            tern_matmul_packed(t->id, pk, rows, n, a, m, out, rows, 0, rows);
            double e = now() - t0;
            if (e < best) best = e;
        }
        printf("%-5s rows=%6lld n=%5lld m=%3lld  %9.1f us  %6.1f GF/s  %6.2f us per row\n", t->name, (long long)rows,
               (long long)n, (long long)m, best * 1e6, flop / best * 1e-9, best * 1e6 / m);
    }
    free(pk); free(a); free(out);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "all";
    tern_force_path(TERN_PATH_AVX2);
    if (!strcmp(mode, "batch") && argc > 4) {
        for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++)
            if (!strcmp(TYPES[ti].name, argv[2])) time_batch(&TYPES[ti], atoll(argv[3]), atoll(argv[4]));
        return 0;
    }
    if (!strcmp(mode, "decode")) { decode_sweep(); return 0; }
    if (!strcmp(mode, "f16check")) {
        const int64_t msmall[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17, 33, 128}, mbig[] = {1, 2, 5, 17, 128};
        const int64_t ns[] = {576, 1536, 8, 24, 40, 13, 3, 100};
        for (int in = 0; in < 8; in++) {
            check_f16(1, ns[in], msmall, 13);
            check_f16(7, ns[in], msmall, 13);
            check_f16(13, ns[in], msmall, 13);
            check_f16(45, ns[in], msmall, 13);
        }
        check_f16(576, 576, mbig, 5);
        check_f16(1000, 1536, mbig, 5);
        printf("%ld configurations failed, %ld outputs checked\n", fails, checks);
        return fails != 0;
    }
    if (!strcmp(mode, "f16time")) {
        time_f16(576, 1536); time_f16(1536, 576); time_f16(576, 576); time_f16(576, 192); time_f16(576, 49152);
        return 0;
    }
    if (!strcmp(mode, "f16decode")) { decode_f16(); return 0; }
    if (!strcmp(mode, "f16head")) { time_f16(576, 49152); return 0; }
    if (strcmp(mode, "time")) {
        const int64_t msmall[] = {1, 2, 3, 4, 5, 8, 16, 33, 64, 128}, mbig[] = {1, 2, 3, 5, 17, 33};
        for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
            const int64_t ns[] = {576, 1536, 2048};
            check_extreme(&TYPES[ti], 512);
            for (int in = 0; in < 3; in++) {
                check(&TYPES[ti], 16, ns[in], msmall, 10);
                check(&TYPES[ti], 13, ns[in], msmall, 10);
                check(&TYPES[ti], 45, ns[in], msmall, 10);
                check(&TYPES[ti], 1000, ns[in], mbig, 6);
                if (ti == 0) {
                    check(&TYPES[ti], 576, ns[in], msmall, 10);
                    check(&TYPES[ti], 1536, ns[in], mbig, 6);
                }
            }
        }
        printf("%ld configurations failed, %ld outputs checked\n", fails, checks);
    }
    if (strcmp(mode, "check")) {
        const char *only = argc > 2 ? argv[2] : "q4_1";
        for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
            if (strcmp(TYPES[ti].name, only)) continue;
            timing(&TYPES[ti], 576, 1536);
            timing(&TYPES[ti], 1536, 576);
            timing(&TYPES[ti], 576, 49152);
            timing(&TYPES[ti], 2048, 2048);
        }
    }
    return fails != 0;
}
