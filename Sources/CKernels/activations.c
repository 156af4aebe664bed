/* Element-wise FFN activations that run over every hidden value of a step, too many for a scalar libm call each
   (Gemma's FFN is 2048 wide per token): GeGLU with the tanh approximation of GELU, and SwiGLU (SiLU-gated, the
   Llama family's; a prompt pass spent 4% of its time in libm's expf for it). The scalar loop is the
   reference the tests hold the AVX2 path to; AVX-512 machines run the AVX2 path (the work is small next to the
   matrix products around it). */
#include <math.h>
#include "kernels_internal.h"

/* gelu_tanh(g) = 0.5 g (1 + tanh(u)) with u = √(2/π) (g + 0.044715 g³), written as g / (1 + exp(−2u)): the same
   function, one exp instead of a tanh, and no cancellation for large |g|. */
#define GELU_K 0.7978845608028654f
#define GELU_C 0.044715f

static void geglu_scalar(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        const float u = GELU_K * (g + GELU_C * g * g * g);
        gate[i] = g / (1.0f + expf(-2.0f * u)) * up[i];
    }
}

/* silu(g) · up = g / (1 + exp(−g)) · up. */
static void swiglu_scalar(float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

#ifdef TERN_X86
#include <immintrin.h>
#include "avx2_exp.h"

__attribute__((target("avx2,fma,f16c")))
static void swiglu_avx2(float *gate, const float *up, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 y = _mm256_div_ps(g, _mm256_add_ps(one, exp256(_mm256_sub_ps(zero, g))));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(y, _mm256_loadu_ps(up + i)));
    }
    if (i < n) swiglu_scalar(gate + i, up + i, n - i);
}

__attribute__((target("avx2,fma,f16c")))
static void geglu_avx2(float *gate, const float *up, int64_t n) {
    const __m256 k2 = _mm256_set1_ps(-2.0f * GELU_K), c = _mm256_set1_ps(GELU_C), one = _mm256_set1_ps(1.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 g3 = _mm256_mul_ps(_mm256_mul_ps(g, g), g);
        const __m256 e = exp256(_mm256_mul_ps(k2, _mm256_fmadd_ps(c, g3, g)));
        const __m256 y = _mm256_div_ps(g, _mm256_add_ps(one, e));
        _mm256_storeu_ps(gate + i, _mm256_mul_ps(y, _mm256_loadu_ps(up + i)));
    }
    if (i < n) geglu_scalar(gate + i, up + i, n - i);
}
#endif

void tern_swiglu(float *gate, const float *up, int64_t n) {
#ifdef TERN_X86
    if (tern_active_path() >= TERN_PATH_AVX2) { swiglu_avx2(gate, up, n); return; }
#endif
    swiglu_scalar(gate, up, n);
}

void tern_geglu_tanh(float *gate, const float *up, int64_t n) {
#ifdef TERN_X86
    if (tern_active_path() >= TERN_PATH_AVX2) { geglu_avx2(gate, up, n); return; }
#endif
    geglu_scalar(gate, up, n);
}
