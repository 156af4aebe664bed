// Usage: clang -O2 scripts/fma_peak.c -o /tmp/fma_peak && taskset -c 0 /tmp/fma_peak
/* One core's f32 FMA throughput: twelve independent 8-lane FMA chains (more than latency x units), counted as 16
   flops per instruction. The ceiling the attention kernels are measured against (scripts/shared_prompt_budget.py).
   Not part of the package. */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }

__attribute__((target("avx2,fma"))) int main(void) {
    __m256 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps(i * 0.001f);
    const __m256 b = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(0.0001f);
    const long n = 200000000;
    const double t0 = now();
    for (long i = 0; i < n; i++)
        for (int j = 0; j < 12; j++) a[j] = _mm256_fmadd_ps(a[j], b, c);
    const double dt = now() - t0;
    __m256 s = a[0];
    for (int j = 1; j < 12; j++) s = _mm256_add_ps(s, a[j]);
    float f[8];
    _mm256_storeu_ps(f, s);
    printf("%.1f GFLOP/s per core (checksum %g)\n", n * 12.0 * 16 / dt / 1e9, f[0]);
    return 0;
}
