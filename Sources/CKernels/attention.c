/* Attention kernels over a run of cached positions for one KV head (see tern_attention.h). The AVX-512 path holds
   the query (scores) or the output (accumulate) in registers for up to 128 dimensions at a time and streams the
   rows past them; scores are produced 16 positions at a time so sixteen per-row horizontal sums collapse into one
   transposing reduction. Q8_0 rows are decoded in registers (int8 -> float, times the block scale), never into
   scratch memory. The scalar loops are the reference the tests hold the SIMD paths to. */
#include "tern_attention.h"
#include "kernels_internal.h"
#include <math.h>

/* Byte distance from the start of a head slice to its element `i` (i a multiple of 32 for Q8_0). */
static inline size_t slice_bytes(int t, int64_t i) {
    return t == TERN_F32 ? (size_t)i * 4 : t == TERN_F16 ? (size_t)i * 2 : (size_t)(i / TERN_QK) * Q8_0_BYTES;
}

static int kv_ok(int t, int64_t hd) {
    if (hd <= 0) return 0;
    if (t == TERN_F32 || t == TERN_F16) return 1;
    return t == TERN_Q8_0 && hd % TERN_QK == 0;
}

/* ---------- scalar reference ---------- */

static float dot_scalar(int t, const float *q, const uint8_t *r, int64_t hd) {
    float s = 0.0f;
    if (t == TERN_F32) {
        for (int64_t i = 0; i < hd; i++) { float v; memcpy(&v, r + 4 * i, 4); s += q[i] * v; }
    } else if (t == TERN_F16) {
        for (int64_t i = 0; i < hd; i++) s += q[i] * tern_h2f(tern_rd16(r + 2 * i));
    } else {
        for (int64_t b = 0; b < hd / TERN_QK; b++) {
            const uint8_t *blk = r + b * Q8_0_BYTES;
            const float d = tern_h2f(tern_rd16(blk));
            const int8_t *qs = (const int8_t *)(blk + 2);
            for (int k = 0; k < TERN_QK; k++) s += q[b * TERN_QK + k] * (d * (float)qs[k]);
        }
    }
    return s;
}

static float scores_scalar(int t, const float *q, const uint8_t *base, size_t stride, int64_t hd, int64_t n,
                           float scale, float *scores) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        const float s = scale * dot_scalar(t, q, base + (size_t)j * stride, hd);
        scores[j] = s;
        if (s > mx) mx = s;
    }
    return mx;
}

static void accumulate_scalar(int t, const float *w, const uint8_t *base, size_t stride, int64_t hd, int64_t n,
                              float *out) {
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *r = base + (size_t)j * stride;
        const float wj = w[j];
        if (t == TERN_F32) {
            for (int64_t i = 0; i < hd; i++) { float v; memcpy(&v, r + 4 * i, 4); out[i] += wj * v; }
        } else if (t == TERN_F16) {
            for (int64_t i = 0; i < hd; i++) out[i] += wj * tern_h2f(tern_rd16(r + 2 * i));
        } else {
            for (int64_t b = 0; b < hd / TERN_QK; b++) {
                const uint8_t *blk = r + b * Q8_0_BYTES;
                const float d = tern_h2f(tern_rd16(blk));
                const int8_t *qs = (const int8_t *)(blk + 2);
                for (int k = 0; k < TERN_QK; k++) out[b * TERN_QK + k] += wj * (d * (float)qs[k]);
            }
        }
    }
}

#ifdef TERN_X86
#include <immintrin.h>

/* ---------- AVX-512 ---------- */

#define TGT5 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c,avx2")))
#define INL5 static inline __attribute__((always_inline)) TGT5

/* Values [16v, 16v+16) of a slice; Q8_0 without its block scale. Only the last vector of a chunk is masked. */
INL5 __m512 ld5(int T, int NV, const uint8_t *r, int v, __mmask16 k) {
    if (T == TERN_F32)
        return v == NV - 1 ? _mm512_maskz_loadu_ps(k, r + 64 * v) : _mm512_loadu_ps(r + 64 * v);
    if (T == TERN_F16)
        return _mm512_cvtph_ps(v == NV - 1 ? _mm256_maskz_loadu_epi16(k, r + 32 * v)
                                           : _mm256_loadu_si256((const __m256i *)(r + 32 * v)));
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
        _mm_loadu_si128((const __m128i *)(r + Q8_0_BYTES * (v >> 1) + 2 + 16 * (v & 1)))));
}

/* Rows are strided by the whole KV row (every head), so the hardware prefetcher sees a sparse stream; when the
   cache comes from L3 or memory, asking for rows 16 ahead saves about a fifth of the time. */
#define PF_ROWS 16
INL5 void prefetch_slice(int T, int NV, const uint8_t *p) {
    const int bytes = T == TERN_F32 ? 64 * NV : T == TERN_F16 ? 32 * NV : (NV / 2) * Q8_0_BYTES;
    for (int o = 0; o < bytes; o += 64) _mm_prefetch((const char *)p + o, _MM_HINT_T0);
    _mm_prefetch((const char *)p + bytes - 1, _MM_HINT_T0);
}

INL5 float q8_scale(const uint8_t *blk) { return _cvtsh_ss(tern_rd16(blk)); }

/* Lane-wise partial products of q with one row; their horizontal sum is the dot product. */
INL5 __m512 row_part5(int T, int NV, const __m512 *qv, const uint8_t *r, __mmask16 k) {
    if (T == TERN_Q8_0) {
        __m512 acc = _mm512_setzero_ps();
        for (int b = 0; b < NV / 2; b++) {
            __m512 t = _mm512_mul_ps(qv[2 * b], ld5(T, NV, r, 2 * b, k));
            t = _mm512_fmadd_ps(qv[2 * b + 1], ld5(T, NV, r, 2 * b + 1, k), t);
            acc = _mm512_fmadd_ps(_mm512_set1_ps(q8_scale(r + b * Q8_0_BYTES)), t, acc);
        }
        return acc;
    }
    __m512 a0 = _mm512_mul_ps(qv[0], ld5(T, NV, r, 0, k));
    __m512 a1 = _mm512_setzero_ps();
    for (int v = 1; v < NV; v++) {
        if (v & 1) a1 = _mm512_fmadd_ps(qv[v], ld5(T, NV, r, v, k), a1);
        else a0 = _mm512_fmadd_ps(qv[v], ld5(T, NV, r, v, k), a0);
    }
    return _mm512_add_ps(a0, a1);
}

/* Lane i of the result = sum of the 16 lanes of a[i]: pairs are interleaved and added inside 128-bit lanes, then
   the 128-bit lanes are folded, so 16 sums cost about 45 shuffles and adds instead of 16 full reductions. */
INL5 __m512 hsum16(const __m512 *a) {
    __m512 u[4];
    for (int g = 0; g < 4; g++) {
        const __m512 *x = a + 4 * g;
        __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps(x[0], x[1]), _mm512_unpackhi_ps(x[0], x[1]));
        __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps(x[2], x[3]), _mm512_unpackhi_ps(x[2], x[3]));
        u[g] = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(t0, t1, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    __m512 w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(u[0], u[1], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(u[2], u[3], _MM_SHUFFLE(3, 2, 3, 2)));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(w0, w1, _MM_SHUFFLE(3, 1, 3, 1)));
}

/* Raw dot products of one chunk of up to 128 dimensions (NV vectors, last masked by k) into scores, added to
   what is there unless `first`. */
INL5 void scores_chunk5(int T, int NV, __mmask16 k, const float *q, const uint8_t *base, size_t stride, int64_t n,
                        float *scores, int first) {
    __m512 qv[8];
    for (int v = 0; v < NV; v++) qv[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(k, q + 16 * v) : _mm512_loadu_ps(q + 16 * v);
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        const uint8_t *r = base + (size_t)j * stride;
        __m512 a[16];
        const int pf = j + 16 + PF_ROWS <= n;
        for (int i = 0; i < 16; i++) {
            if (pf) prefetch_slice(T, NV, r + (size_t)(i + PF_ROWS) * stride);
            a[i] = row_part5(T, NV, qv, r + (size_t)i * stride, k);
        }
        __m512 s = hsum16(a);
        if (!first) s = _mm512_add_ps(s, _mm512_loadu_ps(scores + j));
        _mm512_storeu_ps(scores + j, s);
    }
    if (j < n) {
        const int m = (int)(n - j);
        const uint8_t *r = base + (size_t)j * stride;
        __m512 a[16];
        for (int i = 0; i < 16; i++) a[i] = i < m ? row_part5(T, NV, qv, r + (size_t)i * stride, k) : _mm512_setzero_ps();
        const __mmask16 km = (__mmask16)((1u << m) - 1);
        __m512 s = hsum16(a);
        if (!first) s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(km, scores + j));
        _mm512_mask_storeu_ps(scores + j, km, s);
    }
}

/* out chunk (NV vectors, last masked) += sum_j w[j] * row j, one fused multiply-add per row in row order, so
   the result does not depend on how the rows were split into segments (paged KV blocks give exactly what a
   contiguous cache gives). The NV vectors are independent chains, enough to hide FMA latency at hd >= 64. */
INL5 void acc_chunk5(int T, int NV, __mmask16 k, const float *w, const uint8_t *base, size_t stride, int64_t n,
                     float *out) {
    __m512 o0[8];
    for (int v = 0; v < NV; v++) {
        o0[v] = v == NV - 1 ? _mm512_maskz_loadu_ps(k, out + 16 * v) : _mm512_loadu_ps(out + 16 * v);
    }
#define ACC_ROW(O, J)                                                                                            \
    do {                                                                                                         \
        const uint8_t *r_ = base + (size_t)(J) * stride;                                                         \
        if (T == TERN_Q8_0) {                                                                                    \
            for (int b = 0; b < NV / 2; b++) {                                                                   \
                const __m512 c_ = _mm512_set1_ps(w[J] * q8_scale(r_ + b * Q8_0_BYTES));                          \
                O[2 * b] = _mm512_fmadd_ps(c_, ld5(T, NV, r_, 2 * b, k), O[2 * b]);                             \
                O[2 * b + 1] = _mm512_fmadd_ps(c_, ld5(T, NV, r_, 2 * b + 1, k), O[2 * b + 1]);                 \
            }                                                                                                    \
        } else {                                                                                                 \
            const __m512 c_ = _mm512_set1_ps(w[J]);                                                              \
            for (int v = 0; v < NV; v++) O[v] = _mm512_fmadd_ps(c_, ld5(T, NV, r_, v, k), O[v]);                \
        }                                                                                                        \
    } while (0)
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
        if (j + 2 + PF_ROWS <= n) {
            prefetch_slice(T, NV, base + (size_t)(j + PF_ROWS) * stride);
            prefetch_slice(T, NV, base + (size_t)(j + 1 + PF_ROWS) * stride);
        }
        ACC_ROW(o0, j);
        ACC_ROW(o0, j + 1);
    }
    if (j < n) ACC_ROW(o0, j);
#undef ACC_ROW
    for (int v = 0; v < NV; v++) {
        const __m512 s = o0[v];
        if (v == NV - 1) _mm512_mask_storeu_ps(out + 16 * v, k, s);
        else _mm512_storeu_ps(out + 16 * v, s);
    }
}

/* One instance per (type, vector count) so every loop over vectors unrolls with the chunk in registers. */
#define NV_SWITCH(CALL, T)                                                                                       \
    switch (nv) {                                                                                                \
    case 1: CALL(T, 1); break; case 2: CALL(T, 2); break; case 3: CALL(T, 3); break; case 4: CALL(T, 4); break;  \
    case 5: CALL(T, 5); break; case 6: CALL(T, 6); break; case 7: CALL(T, 7); break; default: CALL(T, 8); break; \
    }
#define Q8_SWITCH(CALL)                                                                                          \
    switch (nv) {                                                                                                \
    case 2: CALL(TERN_Q8_0, 2); break; case 4: CALL(TERN_Q8_0, 4); break;                                        \
    case 6: CALL(TERN_Q8_0, 6); break; default: CALL(TERN_Q8_0, 8); break;                                       \
    }
#define TYPE_SWITCH(CALL)                                                                                        \
    if (t == TERN_F32) { NV_SWITCH(CALL, TERN_F32) }                                                             \
    else if (t == TERN_F16) { NV_SWITCH(CALL, TERN_F16) }                                                        \
    else { Q8_SWITCH(CALL) }

TGT5 static float scores_avx512(int t, const float *q, const uint8_t *base, size_t stride, int64_t hd, int64_t n,
                                float scale, float *scores) {
    for (int64_t c = 0; c < hd; c += 128) {
        const int64_t len = hd - c < 128 ? hd - c : 128;
        const int nv = (int)((len + 15) / 16);
        const __mmask16 k = len % 16 ? (__mmask16)((1u << (len % 16)) - 1) : (__mmask16)0xffff;
        const uint8_t *b = base + slice_bytes(t, c);
        const float *qc = q + c;
        const int first = c == 0;
#define SC(T, NV) scores_chunk5(T, NV, k, qc, b, stride, n, scores, first)
        TYPE_SWITCH(SC)
#undef SC
    }
    const __m512 vs = _mm512_set1_ps(scale);
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < n; j += 16) {
        const __mmask16 km = n - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - j)) - 1);
        const __m512 s = _mm512_mul_ps(_mm512_maskz_loadu_ps(km, scores + j), vs);
        _mm512_mask_storeu_ps(scores + j, km, s);
        mx = _mm512_mask_max_ps(mx, km, mx, s);
    }
    return _mm512_reduce_max_ps(mx);
}

TGT5 static void accumulate_avx512(int t, const float *w, const uint8_t *base, size_t stride, int64_t hd, int64_t n,
                                   float *out) {
    for (int64_t c = 0; c < hd; c += 128) {
        const int64_t len = hd - c < 128 ? hd - c : 128;
        const int nv = (int)((len + 15) / 16);
        const __mmask16 k = len % 16 ? (__mmask16)((1u << (len % 16)) - 1) : (__mmask16)0xffff;
        const uint8_t *b = base + slice_bytes(t, c);
        float *oc = out + c;
#define AC(T, NV) acc_chunk5(T, NV, k, w, b, stride, n, oc)
        TYPE_SWITCH(AC)
#undef AC
    }
}

/* ---------- AVX2 (hd a multiple of 8) ---------- */

#define TGT2 __attribute__((target("avx2,fma,f16c")))
#define INL2 static inline __attribute__((always_inline)) TGT2

/* Values [8v, 8v+8) of a slice; Q8_0 without its block scale. */
INL2 __m256 ld2(int T, const uint8_t *r, int64_t v) {
    if (T == TERN_F32) return _mm256_loadu_ps((const float *)(const void *)(r + 32 * v));
    if (T == TERN_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(r + 16 * v)));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(r + Q8_0_BYTES * (v >> 2) + 2 + 8 * (v & 3)))));
}

INL2 float hsum2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL2 float scores_avx2_t(int T, const float *q, const uint8_t *base, size_t stride, int64_t hd, int64_t n,
                         float scale, float *scores) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < n; j++) {
        const uint8_t *r = base + (size_t)j * stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        if (T == TERN_Q8_0) {
            for (int64_t b = 0; b < hd / 32; b++) {
                __m256 t = _mm256_mul_ps(_mm256_loadu_ps(q + 32 * b), ld2(T, r, 4 * b));
                __m256 u = _mm256_mul_ps(_mm256_loadu_ps(q + 32 * b + 8), ld2(T, r, 4 * b + 1));
                t = _mm256_fmadd_ps(_mm256_loadu_ps(q + 32 * b + 16), ld2(T, r, 4 * b + 2), t);
                u = _mm256_fmadd_ps(_mm256_loadu_ps(q + 32 * b + 24), ld2(T, r, 4 * b + 3), u);
                const __m256 d = _mm256_set1_ps(_cvtsh_ss(tern_rd16(r + b * Q8_0_BYTES)));
                if (b & 1) a1 = _mm256_fmadd_ps(d, _mm256_add_ps(t, u), a1);
                else a0 = _mm256_fmadd_ps(d, _mm256_add_ps(t, u), a0);
            }
        } else {
            int64_t v = 0;
            for (; v + 2 <= hd / 8; v += 2) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * v), ld2(T, r, v), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * v + 8), ld2(T, r, v + 1), a1);
            }
            if (v < hd / 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + 8 * v), ld2(T, r, v), a0);
        }
        const float s = scale * hsum2(_mm256_add_ps(a0, a1));
        scores[j] = s;
        if (s > mx) mx = s;
    }
    return mx;
}

/* Output in 32-dimension chunks (one Q8_0 block), four registers per accumulator set. */
INL2 void accumulate_avx2_t(int T, const float *w, const uint8_t *base, size_t stride, int64_t hd, int64_t n,
                            float *out) {
    for (int64_t c = 0; c < hd; c += 32) {
        const int nv = hd - c >= 32 ? 4 : (int)((hd - c) / 8);
        __m256 o0[4];
        for (int v = 0; v < 4; v++) {
            o0[v] = v < nv ? _mm256_loadu_ps(out + c + 8 * v) : _mm256_setzero_ps();
        }
        const uint8_t *b = base + slice_bytes(T, c);
        const int64_t v0 = T == TERN_Q8_0 ? 0 : c / 8;
        const uint8_t *rb = T == TERN_Q8_0 ? b : base;
#define ACC2_ROW(O, J)                                                                                           \
    do {                                                                                                         \
        const uint8_t *r_ = rb + (size_t)(J) * stride;                                                           \
        float w_ = w[J];                                                                                         \
        if (T == TERN_Q8_0) w_ *= _cvtsh_ss(tern_rd16(r_));                                                      \
        const __m256 c_ = _mm256_set1_ps(w_);                                                                    \
        for (int v = 0; v < 4; v++)                                                                              \
            if (v < nv) O[v] = _mm256_fmadd_ps(c_, ld2(T, r_, v0 + v), O[v]);                                    \
    } while (0)
        int64_t j = 0;
        for (; j + 2 <= n; j += 2) {
            ACC2_ROW(o0, j);
            ACC2_ROW(o0, j + 1);
        }
        if (j < n) ACC2_ROW(o0, j);
#undef ACC2_ROW
        for (int v = 0; v < nv; v++) _mm256_storeu_ps(out + c + 8 * v, o0[v]);
    }
}

TGT2 static float scores_avx2(int t, const float *q, const uint8_t *base, size_t stride, int64_t hd, int64_t n,
                              float scale, float *scores) {
    if (t == TERN_F32) return scores_avx2_t(TERN_F32, q, base, stride, hd, n, scale, scores);
    if (t == TERN_F16) return scores_avx2_t(TERN_F16, q, base, stride, hd, n, scale, scores);
    return scores_avx2_t(TERN_Q8_0, q, base, stride, hd, n, scale, scores);
}

TGT2 static void accumulate_avx2(int t, const float *w, const uint8_t *base, size_t stride, int64_t hd, int64_t n,
                                 float *out) {
    if (t == TERN_F32) accumulate_avx2_t(TERN_F32, w, base, stride, hd, n, out);
    else if (t == TERN_F16) accumulate_avx2_t(TERN_F16, w, base, stride, hd, n, out);
    else accumulate_avx2_t(TERN_Q8_0, w, base, stride, hd, n, out);
}
#endif

/* ---------- dispatch ---------- */

float tern_attn_scores(int kv_type, const float *q, const void *keys, size_t stride, size_t offset, int64_t hd,
                       int64_t n, float scale, float *scores) {
    if (n <= 0) return -INFINITY;
    if (!kv_ok(kv_type, hd)) {
        memset(scores, 0, (size_t)n * sizeof(float));
        return 0.0f;
    }
    const uint8_t *base = (const uint8_t *)keys + offset;
#ifdef TERN_X86
    const int path = tern_active_path();
    if (path == TERN_PATH_AVX512) return scores_avx512(kv_type, q, base, stride, hd, n, scale, scores);
    if (path == TERN_PATH_AVX2 && hd % 8 == 0) return scores_avx2(kv_type, q, base, stride, hd, n, scale, scores);
#endif
    return scores_scalar(kv_type, q, base, stride, hd, n, scale, scores);
}

void tern_attn_accumulate(int kv_type, const float *w, const void *values, size_t stride, size_t offset,
                          int64_t hd, int64_t n, float *out) {
    if (n <= 0 || !kv_ok(kv_type, hd)) return;
    const uint8_t *base = (const uint8_t *)values + offset;
#ifdef TERN_X86
    const int path = tern_active_path();
    if (path == TERN_PATH_AVX512) { accumulate_avx512(kv_type, w, base, stride, hd, n, out); return; }
    if (path == TERN_PATH_AVX2 && hd % 8 == 0) { accumulate_avx2(kv_type, w, base, stride, hd, n, out); return; }
#endif
    accumulate_scalar(kv_type, w, base, stride, hd, n, out);
}

/* ---------- many query rows over a segment list, with log-sum-exp ---------- */

void tern_attn_rows(int kv_type, int64_t hd, float scale, const float *q, int64_t nq, size_t q_stride,
                    const tern_kv_segment *segs, int64_t nseg, size_t layer_offset, size_t row_bytes,
                    size_t head_offset, int64_t lo, int64_t hi, float *scratch, float *out, size_t out_stride,
                    float *lse, float *sink) {
    for (int64_t i = 0; i < nq; i++) {
        const float *qi = q + (size_t)i * q_stride;
        float *oi = out + (size_t)i * out_stride;
        /* Scores of every visible row, packed in position order into scratch. */
        float mx = -INFINITY;
        int64_t k = 0;
        for (int64_t s = 0; s < nseg; s++) {
            const int64_t a = segs[s].first > lo ? segs[s].first : lo;
            const int64_t e = segs[s].first + segs[s].count < hi ? segs[s].first + segs[s].count : hi;
            if (a >= e) continue;
            const uint8_t *keys = (const uint8_t *)segs[s].keys + layer_offset + (size_t)(a - segs[s].first) * row_bytes;
            const float m = tern_attn_scores(kv_type, qi, keys, row_bytes, head_offset, hd, e - a, scale, scratch + k);
            if (m > mx) mx = m;
            k += e - a;
        }
        memset(oi, 0, (size_t)hd * sizeof(float));
        if (k == 0) { lse[i] = -INFINITY; continue; }
        float sum = 0.0f;
        for (int64_t j = 0; j < k; j++) {
            const float w = expf(scratch[j] - mx);
            scratch[j] = w;
            sum += w;
        }
        k = 0;
        for (int64_t s = 0; s < nseg; s++) {
            const int64_t a = segs[s].first > lo ? segs[s].first : lo;
            const int64_t e = segs[s].first + segs[s].count < hi ? segs[s].first + segs[s].count : hi;
            if (a >= e) continue;
            const uint8_t *values = (const uint8_t *)segs[s].values + layer_offset + (size_t)(a - segs[s].first) * row_bytes;
            tern_attn_accumulate(kv_type, scratch + k, values, row_bytes, head_offset, hd, e - a, oi);
            if (sink) {
                const float inv = 1.0f / sum;
                for (int64_t j = 0; j < e - a; j++) sink[a + j] += scratch[k + j] * inv;
            }
            k += e - a;
        }
        const float inv = 1.0f / sum;
        for (int64_t d = 0; d < hd; d++) oi[d] *= inv;
        lse[i] = mx + logf(sum);
    }
}

void tern_attn_merge(int64_t hd, float *o_a, float *lse_a, const float *o_b, float lse_b) {
    const float la = *lse_a;
    if (lse_b == -INFINITY) return;
    if (la == -INFINITY) {
        memcpy(o_a, o_b, (size_t)hd * sizeof(float));
        *lse_a = lse_b;
        return;
    }
    const float m = la > lse_b ? la : lse_b;
    const float ea = expf(la - m), eb = expf(lse_b - m);
    const float wa = ea / (ea + eb), wb = eb / (ea + eb);
    for (int64_t d = 0; d < hd; d++) o_a[d] = wa * o_a[d] + wb * o_b[d];
    *lse_a = m + logf(ea + eb);
}
