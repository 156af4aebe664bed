/* Scans over one row of logits, which with Gemma 3's 262 144-token vocabulary cost the engine thread 0.18 ms a
   row in a scalar Swift loop while the worker threads waited: the greedy choice (argmax). The scalar loop is
   the reference the tests hold the AVX2 path to. */
#include <math.h>
#include "kernels_internal.h"

/* The first index of the largest value; NaN never wins; 0 when no value exceeds -inf. */
static int64_t argmax_scalar(const float *x, int64_t n) {
    int64_t best = 0;
    float value = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        if (x[i] > value) { value = x[i]; best = i; }
    return best;
}

#ifdef TERN_X86
#include "avx2_inline.h"

/* Two passes: the maximum (vmaxps returns its second operand when the first is NaN, so NaN is skipped), then
   the first index that equals it. Equal to argmax_scalar: both pick the first position holding the largest
   non-NaN value (+0 and -0 compare equal in both). */
TGT static int64_t argmax_avx2(const float *x, int64_t n) {
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
        m1 = _mm256_max_ps(_mm256_loadu_ps(x + i + 8), m1);
        m2 = _mm256_max_ps(_mm256_loadu_ps(x + i + 16), m2);
        m3 = _mm256_max_ps(_mm256_loadu_ps(x + i + 24), m3);
    }
    for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(_mm256_loadu_ps(x + i), m0);
    __m256 m = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float best = _mm_cvtss_f32(h);
    for (; i < n; i++) if (x[i] > best) best = x[i];
    if (!(best > -INFINITY)) return 0;
    const __m256 b = _mm256_set1_ps(best);
    for (i = 0; i + 8 <= n; i += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), b, _CMP_EQ_OQ));
        if (mask) return i + __builtin_ctz((unsigned)mask);
    }
    for (; i < n; i++) if (x[i] == best) return i;
    return 0;
}
#endif

int64_t tern_argmax_f32(const float *x, int64_t n) {
#ifdef TERN_X86
    if (tern_active_path() >= TERN_PATH_AVX2) return argmax_avx2(x, n);
#endif
    return argmax_scalar(x, n);
}
