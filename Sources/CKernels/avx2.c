/* AVX2 + FMA + F16C path: one 32-value block per 256-bit register, unsigned x signed byte products with
   vpmaddubsw/vpmaddwd, up to four activation rows sharing each decoded weight block. For CPUs without
   AVX-512 VNNI; dispatch.c only calls it after checking the CPU. */
#include "kernels_internal.h"

#ifdef TERN_X86
#include "avx2_inline.h"

INL float h2f(const uint8_t *p) { return _cvtsh_ss(tern_rd16(p)); }

/* ---------- activations ---------- */

TGT static void v_quantize_activations(const float *x, tern_q8_block *y, int64_t n) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / TERN_QK; b++) {
        __m256 v[4], mx = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 32 * b + 8 * k);
            mx = _mm256_max_ps(mx, _mm256_and_ps(v[k], absmask));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float d = amax / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        __m256 vid = _mm256_set1_ps(id), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            __m256 r = _mm256_round_ps(_mm256_mul_ps(v[k], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q[k] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi));
        }
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)y[b].q, p);
        y[b].d = d;
        y[b].s = d * (float)_mm_cvtsi128_si32(s4);
    }
}

/* ---------- weight decoding ---------- */


/* 0x10 in byte j where bit j of qh is set */
INL __m256i fifth_bits(uint32_t qh) {
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

INL __m256i wblock(int type, const uint8_t *b) {
    switch (type) {
    case TERN_Q4_0: return nibbles(b + 2);
    case TERN_Q4_1: return nibbles(b + 4);
    case TERN_Q5_0: return _mm256_or_si256(nibbles(b + 6), fifth_bits(tern_rd32(b + 2)));
    case TERN_Q5_1: return _mm256_or_si256(nibbles(b + 8), fifth_bits(tern_rd32(b + 4)));
    default: return _mm256_loadu_si256((const __m256i *)(b + 2));
    }
}

/* 16-bit pair sums of w*a, with int8 weights handled by moving their sign onto a (|a| <= 127). */
INL __m256i pairs16(int signed_w, __m256i w, __m256i a) {
    if (signed_w) { a = _mm256_sign_epi8(a, w); w = _mm256_sign_epi8(w, w); }
    return _mm256_maddubs_epi16(w, a);
}

INL __m256 dot32(int signed_w, __m256i w, const tern_q8_block *a) {
    __m256i p = pairs16(signed_w, w, _mm256_loadu_si256((const __m256i *)a->q));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

INL void row32(const int type, const int MT, const uint8_t *row, int64_t nb, const tern_q8_block *a,
               int64_t astride, float *res) {
    const int bytes = type == TERN_Q4_0 ? Q4_0_BYTES : type == TERN_Q4_1 ? Q4_1_BYTES : type == TERN_Q5_0 ? Q5_0_BYTES
                    : type == TERN_Q5_1 ? Q5_1_BYTES : Q8_0_BYTES;
    /* two accumulators per activation row (even/odd blocks) to halve the FMA dependency chain */
    __m256 acc[4][2];
    float off[4][2];
    for (int t = 0; t < MT; t++) { acc[t][0] = acc[t][1] = _mm256_setzero_ps(); off[t][0] = off[t][1] = 0.0f; }
    for (int64_t b = 0; b < nb; b++) {
        const int par = (int)(b & 1);
        const uint8_t *blk = row + b * bytes;
        float dw = h2f(blk);
        float mw = type == TERN_Q4_1 || type == TERN_Q5_1 ? h2f(blk + 2)
                 : type == TERN_Q4_0 ? -8.0f * dw : type == TERN_Q5_0 ? -16.0f * dw : 0.0f;
        __m256i w = wblock(type, blk);
        for (int t = 0; t < MT; t++) {
            const tern_q8_block *ab = a + t * astride + b;
            acc[t][par] = _mm256_fmadd_ps(dot32(type == TERN_Q8_0, w, ab), _mm256_set1_ps(dw * ab->d), acc[t][par]);
            if (type != TERN_Q8_0) off[t][par] += mw * ab->s;
        }
    }
    for (int t = 0; t < MT; t++) res[t] = hsum8(_mm256_add_ps(acc[t][0], acc[t][1])) + (off[t][0] + off[t][1]);
}

INL void rowk(const int type, const int MT, const uint8_t *row, int64_t nsb, const tern_q8_block *a,
              int64_t astride, float *res) {
    const int bytes = type == TERN_Q4_K ? Q4_K_BYTES : type == TERN_Q5_K ? Q5_K_BYTES : Q6_K_BYTES;
    __m256 acc[4][2];
    float off[4];
    for (int t = 0; t < MT; t++) { acc[t][0] = acc[t][1] = _mm256_setzero_ps(); off[t] = 0.0f; }
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *blk = row + b * bytes;
        if (type == TERN_Q6_K) {
            float d = h2f(blk + 208);
            const int8_t *sc = (const int8_t *)(blk + 192);
            for (int j = 0; j < 8; j++) {
                int h = j / 4, k = j % 4;
                __m256i lo = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32 * (k & 1)));
                if (k >> 1) lo = _mm256_srli_epi16(lo, 4);
                lo = _mm256_and_si256(lo, _mm256_set1_epi8(0x0f));
                __m256i hi = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
                hi = _mm256_srl_epi16(hi, _mm_cvtsi32_si128(2 * k));
                hi = _mm256_and_si256(_mm256_slli_epi16(hi, 4), _mm256_set1_epi8(0x30));
                __m256i w = _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
                __m256i scv = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16(sc[2 * j])),
                                                      _mm_set1_epi16(sc[2 * j + 1]), 1);
                for (int t = 0; t < MT; t++) {
                    const tern_q8_block *ab = a + t * astride + 8 * b + j;
                    __m256i p = pairs16(1, w, _mm256_loadu_si256((const __m256i *)ab->q));
                    __m256 s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, scv));
                    acc[t][j & 1] = _mm256_fmadd_ps(s, _mm256_set1_ps(d * ab->d), acc[t][j & 1]);
                }
            }
        } else {
            float d = h2f(blk), dmin = h2f(blk + 2);
            const uint8_t *qs = blk + (type == TERN_Q4_K ? 16 : 48);
            __m256i qh = type == TERN_Q5_K ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
            for (int j = 0; j < 8; j++) {
                uint8_t s, mn;
                tern_k4_scale_min(j, blk + 4, &s, &mn);
                __m256i w = _mm256_loadu_si256((const __m256i *)(qs + 32 * (j / 2)));
                if (j & 1) w = _mm256_srli_epi16(w, 4);
                w = _mm256_and_si256(w, _mm256_set1_epi8(0x0f));
                if (type == TERN_Q5_K) {
                    __m256i bit = _mm256_set1_epi8((char)(1 << j));
                    w = _mm256_or_si256(w, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit),
                                                            _mm256_set1_epi8(0x10)));
                }
                float ds = d * (float)s, dm = dmin * (float)mn;
                for (int t = 0; t < MT; t++) {
                    const tern_q8_block *ab = a + t * astride + 8 * b + j;
                    acc[t][j & 1] = _mm256_fmadd_ps(dot32(0, w, ab), _mm256_set1_ps(ds * ab->d), acc[t][j & 1]);
                    off[t] -= dm * ab->s;
                }
            }
        }
    }
    for (int t = 0; t < MT; t++) res[t] = hsum8(_mm256_add_ps(acc[t][0], acc[t][1])) + off[t];
}

#define ROWFN(NAME, BODY, MT, TYPE) \
    TGT static void NAME(const uint8_t *row, int64_t nb, const tern_q8_block *a, int64_t as, float *res) { \
        BODY(TYPE, MT, row, nb, a, as, res); }
#define ROW4(NAME, BODY, TYPE) ROWFN(NAME##_1, BODY, 1, TYPE) ROWFN(NAME##_2, BODY, 2, TYPE) \
    ROWFN(NAME##_3, BODY, 3, TYPE) ROWFN(NAME##_4, BODY, 4, TYPE)
ROW4(r_q4_0, row32, TERN_Q4_0)
ROW4(r_q4_1, row32, TERN_Q4_1)
ROW4(r_q5_0, row32, TERN_Q5_0)
ROW4(r_q5_1, row32, TERN_Q5_1)
ROW4(r_q8_0, row32, TERN_Q8_0)
ROW4(r_q4_k, rowk, TERN_Q4_K)
ROW4(r_q5_k, rowk, TERN_Q5_K)
ROW4(r_q6_k, rowk, TERN_Q6_K)

typedef void (*rowfn)(const uint8_t *, int64_t, const tern_q8_block *, int64_t, float *);
#define FNS(NAME) { NAME##_1, NAME##_2, NAME##_3, NAME##_4 }

TGT static int v_matmul_q(int type, const void *w, size_t row_bytes, int64_t n, const tern_q8_block *a, int64_t m,
                          float *out, int64_t ldo, int64_t r0, int64_t r1) {
    static const rowfn q4_0[4] = FNS(r_q4_0), q4_1[4] = FNS(r_q4_1), q5_0[4] = FNS(r_q5_0), q5_1[4] = FNS(r_q5_1),
                       q8_0[4] = FNS(r_q8_0), q4_k[4] = FNS(r_q4_k), q5_k[4] = FNS(r_q5_k), q6_k[4] = FNS(r_q6_k);
    const rowfn *fns;
    int64_t per = 1;
    switch (type) {
    case TERN_Q4_0: fns = q4_0; break;
    case TERN_Q4_1: fns = q4_1; break;
    case TERN_Q5_0: fns = q5_0; break;
    case TERN_Q5_1: fns = q5_1; break;
    case TERN_Q8_0: fns = q8_0; break;
    case TERN_Q4_K: fns = q4_k; per = 8; break;
    case TERN_Q5_K: fns = q5_k; per = 8; break;
    case TERN_Q6_K: fns = q6_k; per = 8; break;
    default: return 0;
    }
    int64_t nab = n / TERN_QK, nb = nab / per;
    /* see avx512.c: weight-row chunks stay cached while every activation tile passes over them */
    int64_t chunk = m <= 4 ? r1 - r0 : (int64_t)(32768 / (row_bytes + 1)) + 1;
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
        int64_t c1 = c0 + chunk < r1 ? c0 + chunk : r1;
        for (int64_t i = 0; i < m; i += 4) {
            int mt = m - i < 4 ? (int)(m - i) : 4;
            for (int64_t r = c0; r < c1; r++) {
                float res[4];
                fns[mt - 1]((const uint8_t *)w + (size_t)r * row_bytes, nb, a + i * nab, nab, res);
                for (int t = 0; t < mt; t++) out[(i + t) * ldo + r] = res[t];
            }
        }
    }
    return 1;
}

/* ---------- float weights ---------- */

INL __m256 wload8(int type, const void *row, int64_t j) {
    if (type == TERN_F32) return _mm256_loadu_ps((const float *)row + j);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + j));
    if (type == TERN_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

INL float wscalar(int type, const void *row, int64_t j) {
    if (type == TERN_F32) return ((const float *)row)[j];
    uint16_t h = ((const uint16_t *)row)[j];
    return type == TERN_F16 ? _cvtsh_ss(h) : tern_bf2f(h);
}

INL void rowf(const int type, const int MT, const void *row, int64_t n, const float *x, float *res) {
    __m256 acc[4][2];
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= n; j += 16) {
        __m256 w0 = wload8(type, row, j), w1 = wload8(type, row, j + 8);
        for (int t = 0; t < MT; t++) {
            acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * n + j), acc[t][0]);
            acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + t * n + j + 8), acc[t][1]);
        }
    }
    for (; j + 8 <= n; j += 8) {
        __m256 w0 = wload8(type, row, j);
        for (int t = 0; t < MT; t++) acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + t * n + j), acc[t][0]);
    }
    for (int t = 0; t < MT; t++) {
        float s = hsum8(_mm256_add_ps(acc[t][0], acc[t][1]));
        for (int64_t k = j; k < n; k++) s += wscalar(type, row, k) * x[t * n + k];
        res[t] = s;
    }
}

typedef void (*rowffn)(const void *, int64_t, const float *, float *);
#define ROWF(NAME, MT, TYPE) TGT static void NAME(const void *row, int64_t n, const float *x, float *res) { \
        rowf(TYPE, MT, row, n, x, res); }
ROWF(f32_1, 1, TERN_F32) ROWF(f32_2, 2, TERN_F32) ROWF(f32_3, 3, TERN_F32) ROWF(f32_4, 4, TERN_F32)
ROWF(f16_1, 1, TERN_F16) ROWF(f16_2, 2, TERN_F16) ROWF(f16_3, 3, TERN_F16) ROWF(f16_4, 4, TERN_F16)
ROWF(bf16_1, 1, TERN_BF16) ROWF(bf16_2, 2, TERN_BF16) ROWF(bf16_3, 3, TERN_BF16) ROWF(bf16_4, 4, TERN_BF16)

/* Batched F16 products: a GM x GN tile (weight rows x activation rows) keeps GM*GN accumulators in registers, so
   each converted weight vector feeds GN FMAs and each activation vector GM. 3 x 4 fills the 16 ymm registers:
   12 accumulators, 3 weight vectors and the activation vector in flight. */
#define GM 3
#define GN 4
/* From two activation rows on the tile beats the row kernels (more chains, fewer loads per FMA); m = 1 keeps
   rowf, which already streams the weights at DRAM speed. */
#define GEMM_MIN_M 2
#define CHUNK 98304
INL void ftile(const int type, const int RM, const int RN, const uint8_t *w, size_t rb, int64_t n, const float *x,
               float *out, int64_t ldo) {
    __m256 acc[GM][GN];
    for (int r = 0; r < RM; r++)
        for (int t = 0; t < RN; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 wv[GM];
        /* The next tile's rows follow this tile's in memory; 6 bytes per value (three F16 rows) walks all of them
           while this tile walks its own, so a matrix streamed from DRAM (an output head at small m: few activation
           tiles per chunk) does not wait on each row. Prefetches past the matrix end do not fault. */
        _mm_prefetch((const char *)(w + RM * rb + 6 * j), _MM_HINT_T0);
#pragma GCC unroll 4
        for (int r = 0; r < RM; r++) wv[r] = wload8(type, w + r * rb, j);
#pragma GCC unroll 4
        for (int t = 0; t < RN; t++) {
            __m256 xv = _mm256_loadu_ps(x + t * n + j);
#pragma GCC unroll 4
            for (int r = 0; r < RM; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    /* one activation row's (up to 4) weight-row sums land in one vector, in output order; unused rows add
       zero vectors to lanes of their own, so a sum's bits do not depend on the tile's shape */
    for (int t = 0; t < RN; t++) {
        __m256 z = _mm256_setzero_ps();
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[0][t], RM > 1 ? acc[1][t] : z),
                                  _mm256_hadd_ps(RM > 2 ? acc[2][t] : z, z));
        float s[4];
        _mm_storeu_ps(s, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
        for (int r = 0; r < RM; r++) {
            for (int64_t k = j; k < n; k++) s[r] += wscalar(type, w + r * rb, k) * x[t * n + k];
            out[t * ldo + r] = s[r];
        }
    }
}

typedef void (*ftilefn)(const uint8_t *, size_t, int64_t, const float *, float *, int64_t);
#define FT(RM, RN) TGT static void ft16_##RM##_##RN(const uint8_t *w, size_t rb, int64_t n, const float *x, \
                                                    float *out, int64_t ldo) { ftile(TERN_F16, RM, RN, w, rb, n, x, out, ldo); }
FT(1, 1) FT(1, 2) FT(1, 3) FT(1, 4) FT(2, 1) FT(2, 2) FT(2, 3) FT(2, 4) FT(3, 1) FT(3, 2) FT(3, 3) FT(3, 4)
static const ftilefn ft16[GM][GN] = {{ft16_1_1, ft16_1_2, ft16_1_3, ft16_1_4}, {ft16_2_1, ft16_2_2, ft16_2_3, ft16_2_4},
                                     {ft16_3_1, ft16_3_2, ft16_3_3, ft16_3_4}};

TGT static void gemm_f16(const void *w, size_t row_bytes, int64_t n, const float *x, int64_t m, float *out,
                         int64_t ldo, int64_t r0, int64_t r1) {
    /* A chunk of weight rows stays in L2 while every activation tile (GN rows, in L1) passes over it. */
    int64_t chunk = (int64_t)(CHUNK / (row_bytes + 1)) / GM * GM + GM;
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
        int64_t c1 = c0 + chunk < r1 ? c0 + chunk : r1;
        /* activation tiles as even as possible (5 = 3 + 2, not 4 + 1): a thin tile has too few FMA chains */
        int64_t tiles = (m + GN - 1) / GN;
        for (int64_t k = 0, i = 0; k < tiles; k++) {
            int nt = (int)((m - i) / (tiles - k));
            for (int64_t r = c0; r < c1; r += GM) {
                int mt = c1 - r < GM ? (int)(c1 - r) : GM;
                ft16[mt - 1][nt - 1]((const uint8_t *)w + (size_t)r * row_bytes, row_bytes, n, x + i * n,
                                     out + i * ldo + r, ldo);
            }
            i += nt;
        }
    }
}

TGT static int v_matmul_f(int type, const void *w, size_t row_bytes, int64_t n, const float *x, int64_t m,
                          float *out, int64_t ldo, int64_t r0, int64_t r1) {
    static const rowffn f32[4] = {f32_1, f32_2, f32_3, f32_4}, f16[4] = {f16_1, f16_2, f16_3, f16_4},
                        bf16[4] = {bf16_1, bf16_2, bf16_3, bf16_4};
    const rowffn *fns = type == TERN_F32 ? f32 : type == TERN_F16 ? f16 : type == TERN_BF16 ? bf16 : NULL;
    if (!fns) return 0;
    if (type == TERN_F16 && m >= GEMM_MIN_M) {
        gemm_f16(w, row_bytes, n, x, m, out, ldo, r0, r1);
        return 1;
    }
    int64_t chunk = m <= 4 ? r1 - r0 : (int64_t)(32768 / (row_bytes + 1)) + 1;
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
        int64_t c1 = c0 + chunk < r1 ? c0 + chunk : r1;
        for (int64_t i = 0; i < m; i += 4) {
            int mt = m - i < 4 ? (int)(m - i) : 4;
            for (int64_t r = c0; r < c1; r++) {
                float res[4];
                fns[mt - 1]((const uint8_t *)w + (size_t)r * row_bytes, n, x + i * n, res);
                for (int t = 0; t < mt; t++) out[(i + t) * ldo + r] = res[t];
            }
        }
    }
    return 1;
}

/* ---------- float helpers ---------- */

TGT static float v_dot_f32(const float *a, const float *b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

TGT static void v_axpy_f32(float alpha, const float *x, float *y, int64_t n) {
    __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += alpha * x[i];
}

TGT static float v_dot_f16(const uint16_t *a, const float *b, int64_t n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i + 8))), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(a + i))), _mm256_loadu_ps(b + i), acc0);
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += _cvtsh_ss(a[i]) * b[i];
    return s;
}

TGT static void v_axpy_f16(float alpha, const uint16_t *x, float *y, int64_t n) {
    __m256 va = _mm256_set1_ps(alpha);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))),
                                                _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += alpha * _cvtsh_ss(x[i]);
}

TGT static void v_f32_to_f16(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) y[i] = tern_f2h(x[i]);
}

TGT static void v_f16_to_f32(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}

const tern_kernel_table tern_kernels_avx2 = {
    v_quantize_activations, v_matmul_q, v_matmul_f, v_dot_f32, v_axpy_f32, v_dot_f16, v_axpy_f16,
    v_f32_to_f16, v_f16_to_f32,
};

#endif
