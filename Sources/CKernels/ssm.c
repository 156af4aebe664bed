/* Mamba-1 selective-scan step (see tern_ssm.h). An AVX-512 version handles the common state size of 16 with
   one vector per channel and a polynomial exp; everything else takes the portable loop, which is also the
   reference the Mamba tests hold the model to. */
#include "tern_ssm.h"
#include "include/CKernels.h"
#include <math.h>

static void ssm1_scalar(int64_t c0, int64_t c1, int64_t ns, const float *dt, const float *x, const float *z,
                        const float *A, const float *B, const float *C, const float *D, float *s, float *y) {
    for (int64_t c = c0; c < c1; c++) {
        const float delta = dt[c], xv = x[c], dx = delta * xv;
        float *sc = s + c * ns;
        const float *ac = A + c * ns;
        float acc = 0;
        for (int64_t n = 0; n < ns; n++) {
            const float v = expf(delta * ac[n]) * sc[n] + dx * B[n];
            sc[n] = v;
            acc += v * C[n];
        }
        const float zv = z[c];
        y[c] = (acc + D[c] * xv) * (zv / (1.0f + expf(-zv)));
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#define TGT __attribute__((target("avx512f")))

/* exp(x) for x in float range: 2^k · e^r with |r| ≤ ln2/2, e^r by a degree-6 Taylor polynomial
   (relative error about 1e-7). */
TGT static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

TGT static void ssm1_avx512_16(int64_t c0, int64_t c1, const float *dt, const float *x, const float *z,
                               const float *A, const float *B, const float *C, const float *D, float *s, float *y) {
    const __m512 b = _mm512_loadu_ps(B), cv = _mm512_loadu_ps(C);
    for (int64_t c = c0; c < c1; c++) {
        const float delta = dt[c], xv = x[c];
        float *sc = s + c * 16;
        const __m512 decay = exp512(_mm512_mul_ps(_mm512_set1_ps(delta), _mm512_loadu_ps(A + c * 16)));
        const __m512 v = _mm512_fmadd_ps(decay, _mm512_loadu_ps(sc), _mm512_mul_ps(_mm512_set1_ps(delta * xv), b));
        _mm512_storeu_ps(sc, v);
        const float acc = _mm512_reduce_add_ps(_mm512_mul_ps(v, cv));
        const float zv = z[c];
        y[c] = (acc + D[c] * xv) * (zv / (1.0f + expf(-zv)));
    }
}
#endif

void tern_ssm1_step(int64_t c0, int64_t c1, int64_t nstate, const float *dt, const float *x, const float *z,
                    const float *A, const float *B, const float *C, const float *D, float *s, float *y) {
#if defined(__x86_64__)
    if (nstate == 16 && tern_active_path() == TERN_PATH_AVX512) {
        ssm1_avx512_16(c0, c1, dt, x, z, A, B, C, D, s, y);
        return;
    }
#endif
    ssm1_scalar(c0, c1, nstate, dt, x, z, A, B, C, D, s, y);
}
