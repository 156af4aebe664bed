/* AVX-512 VNNI path (avx512f/bw/vl/vnni + F16C/FMA): quantized matrix-vector products built on vpdpbusd, two
   32-value blocks per 512-bit register, per-block scales computed 16 blocks at a time with gathers, and up to
   four activation rows sharing each decoded weight register. Quantized products now go to the repacking
   kernels in avx512_gemm.c (faster even for m == 1), except Q6_K at m == 1; the row kernels here remain for
   that case, for float weights at m == 1, and as a fallback for rows too long for 32-bit gather offsets. Functions carry target attributes so the package
   needs no global -m flags; dispatch.c only calls them after checking the CPU. */
#include "kernels_internal.h"

#ifdef TERN_X86
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c,avx2")))
#define INL static inline __attribute__((always_inline)) TGT

/* ---------- activations ---------- */

TGT static void v_quantize_activations(const float *x, tern_q8_block *y, int64_t n) {
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t b = 0; b < n / TERN_QK; b++) {
        __m512 x0 = _mm512_loadu_ps(x + 32 * b), x1 = _mm512_loadu_ps(x + 32 * b + 16);
        __m512 mx = _mm512_max_ps(_mm512_and_ps(x0, absmask), _mm512_and_ps(x1, absmask));
        float amax = _mm512_reduce_max_ps(mx);
        float d = amax / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        __m512 vid = _mm512_set1_ps(id), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
        __m512 q0 = _mm512_roundscale_ps(_mm512_mul_ps(x0, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512 q1 = _mm512_roundscale_ps(_mm512_mul_ps(x1, vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m512i i0 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q0, lo), hi));
        __m512i i1 = _mm512_cvtps_epi32(_mm512_min_ps(_mm512_max_ps(q1, lo), hi));
        _mm_storeu_si128((__m128i *)y[b].q, _mm512_cvtepi32_epi8(i0));
        _mm_storeu_si128((__m128i *)(y[b].q + 16), _mm512_cvtepi32_epi8(i1));
        int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
        y[b].d = d;
        y[b].s = d * (float)sum;
    }
}

/* ---------- 32-value block types ---------- */

/* Two blocks' 16 nibble bytes -> 64 bytes [lo0 hi0 lo1 hi1] = element order of both blocks. */
INL __m512i nibbles2(const uint8_t *q0, const uint8_t *q1) {
    __m256i a = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q0));
    __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)q1));
    __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1);
    v = _mm512_mask_srli_epi16(v, 0xff00ff00u, v, 4);
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
}

INL __m512i act2(const tern_q8_block *a0, const tern_q8_block *a1) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a0->q)),
                              _mm256_loadu_si256((const __m256i *)a1->q), 1);
}

/* Weights of blocks b0,b1 as 64 bytes: uint8 except for Q8_0 (int8). */
INL __m512i weights2(int type, const uint8_t *b0, const uint8_t *b1) {
    switch (type) {
    case TERN_Q4_0: return nibbles2(b0 + 2, b1 + 2);
    case TERN_Q4_1: return nibbles2(b0 + 4, b1 + 4);
    case TERN_Q5_0: {
        __m512i v = nibbles2(b0 + 6, b1 + 6);
        __mmask64 h = (__mmask64)tern_rd32(b0 + 2) | ((__mmask64)tern_rd32(b1 + 2) << 32);
        return _mm512_mask_add_epi8(v, h, v, _mm512_set1_epi8(0x10));
    }
    case TERN_Q5_1: {
        __m512i v = nibbles2(b0 + 8, b1 + 8);
        __mmask64 h = (__mmask64)tern_rd32(b0 + 4) | ((__mmask64)tern_rd32(b1 + 4) << 32);
        return _mm512_mask_add_epi8(v, h, v, _mm512_set1_epi8(0x10));
    }
    default: /* Q8_0 */
        return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(b0 + 2))),
                                  _mm256_loadu_si256((const __m256i *)(b1 + 2)), 1);
    }
}

/* dot of 64 weight bytes with 64 activation bytes, as 16 int32 lanes (lanes 0-7: first block). */
INL __m512i dot64(int signed_w, __m512i w, __m512i a) {
    if (signed_w) {
        /* vpdpbusd wants unsigned x signed: move the weight's sign onto the activation (|q| <= 127 there) */
        __mmask64 neg = _mm512_movepi8_mask(w);
        a = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
        w = _mm512_abs_epi8(w);
    }
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, a);
}

/* RW weight rows (at row, row + rstride) against MT activation rows; res[rw * MT + t]. */
INL void row32(const int type, const int RW, const int MT, const uint8_t *row, size_t rstride, int64_t nb,
               const tern_q8_block *a, int64_t astride, float *res) {
    const int bytes = type == TERN_Q4_0 ? Q4_0_BYTES : type == TERN_Q4_1 ? Q4_1_BYTES : type == TERN_Q5_0 ? Q5_0_BYTES
                    : type == TERN_Q5_1 ? Q5_1_BYTES : Q8_0_BYTES;
    const int has_min = type == TERN_Q4_1 || type == TERN_Q5_1;
    const __m512i widx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32(bytes));
    const __m512i aidx = _mm512_setr_epi32(0, 40, 80, 120, 160, 200, 240, 280, 320, 360, 400, 440, 480, 520, 560, 600);
    __m512 acc[2][4], offacc[2][4];
    for (int u = 0; u < RW; u++)
        for (int t = 0; t < MT; t++) { acc[u][t] = _mm512_setzero_ps(); offacc[u][t] = _mm512_setzero_ps(); }
    for (int64_t g = 0; g < nb; g += 16) {
        int gn = nb - g < 16 ? (int)(nb - g) : 16;
        __mmask16 mask = (__mmask16)((1u << gn) - 1);
        __m512 da[4], sa[4];
        for (int t = 0; t < MT; t++) {
            const tern_q8_block *ag = a + t * astride + g;
            da[t] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, aidx, &ag->d, 1);
            sa[t] = type == TERN_Q8_0 ? _mm512_setzero_ps()
                  : _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, aidx, &ag->s, 1);
        }
        __m512 scale[2][4];
        for (int u = 0; u < RW; u++) {
            const uint8_t *gw = row + u * rstride + g * bytes;
            __m512i wd = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mask, widx, gw, 1);
            __m512 dw = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(wd));
            __m512 off = has_min ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(wd, 16)))
                       : type == TERN_Q4_0 ? _mm512_mul_ps(dw, _mm512_set1_ps(-8.0f))
                       : type == TERN_Q5_0 ? _mm512_mul_ps(dw, _mm512_set1_ps(-16.0f)) : _mm512_setzero_ps();
            for (int t = 0; t < MT; t++) {
                scale[u][t] = _mm512_mul_ps(dw, da[t]);
                if (type != TERN_Q8_0) offacc[u][t] = _mm512_fmadd_ps(off, sa[t], offacc[u][t]);
            }
        }
        /* lane selector of the pair's two scales: [k x8, k+1 x8] */
        __m512i sel = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi32(1), 1);
        for (int k = 0; k < gn; k += 2, sel = _mm512_add_epi32(sel, _mm512_set1_epi32(2))) {
            /* an odd last block pairs with itself; its twin's lane has scale 0 from the masked gathers */
            int k1 = k + 1 < gn ? k + 1 : k;
            __m512i w[2];
            for (int u = 0; u < RW; u++) {
                const uint8_t *gw = row + u * rstride + g * bytes;
                w[u] = weights2(type, gw + k * bytes, gw + k1 * bytes);
            }
            for (int t = 0; t < MT; t++) {
                const tern_q8_block *ag = a + t * astride + g;
                __m512i av = act2(ag + k, ag + k1);
                for (int u = 0; u < RW; u++) {
                    __m512i d = dot64(type == TERN_Q8_0, w[u], av);
                    acc[u][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(sel, scale[u][t]), acc[u][t]);
                }
            }
        }
    }
    for (int u = 0; u < RW; u++)
        for (int t = 0; t < MT; t++) res[u * MT + t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[u][t], offacc[u][t]));
}

/* ---------- K-quants (256-value super-blocks, one pair of 32-value sub-blocks per register) ---------- */

/* Q4_K/Q5_K: 6-bit scales (lo 4 bytes) and mins unpacked from the 12 packed bytes into 8 floats each. */
INL void k4_scales(const uint8_t *s, __m256 *sc, __m256 *mn) {
    uint32_t w0 = tern_rd32(s), w1 = tern_rd32(s + 4), w2 = tern_rd32(s + 8);
    uint32_t sc_lo = w0 & 0x3f3f3f3fu, mn_lo = w1 & 0x3f3f3f3fu;
    uint32_t sc_hi = (w2 & 0x0f0f0f0fu) | (((w0 >> 6) & 0x03030303u) << 4);
    uint32_t mn_hi = ((w2 >> 4) & 0x0f0f0f0fu) | (((w1 >> 6) & 0x03030303u) << 4);
    __m128i vs = _mm_cvtsi64_si128((long long)((uint64_t)sc_lo | ((uint64_t)sc_hi << 32)));
    __m128i vm = _mm_cvtsi64_si128((long long)((uint64_t)mn_lo | ((uint64_t)mn_hi << 32)));
    *sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(vs));
    *mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(vm));
}

INL void rowk(const int type, const int MT, const uint8_t *row, int64_t nsb, const tern_q8_block *a,
              int64_t astride, float *res) {
    const int bytes = type == TERN_Q4_K ? Q4_K_BYTES : type == TERN_Q5_K ? Q5_K_BYTES : Q6_K_BYTES;
    const __m256i aidx = _mm256_setr_epi32(0, 40, 80, 120, 160, 200, 240, 280);
    __m512 acc[4], offacc[4];
    for (int t = 0; t < MT; t++) { acc[t] = _mm512_setzero_ps(); offacc[t] = _mm512_setzero_ps(); }
    for (int64_t b = 0; b < nsb; b++) {
        const uint8_t *blk = row + b * bytes;
        __m512 lanescale[4]; /* per pair: float factor of each int32 lane, before the activation scale */
        __m256 mins = _mm256_setzero_ps();
        if (type == TERN_Q6_K) {
            __m512 sc16 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 192))));
            sc16 = _mm512_mul_ps(sc16, _mm512_set1_ps(tern_h2f(tern_rd16(blk + 208))));
            for (int p = 0; p < 4; p++)
                lanescale[p] = _mm512_permutexvar_ps(
                    _mm512_setr_epi32(4 * p, 4 * p, 4 * p, 4 * p, 4 * p + 1, 4 * p + 1, 4 * p + 1, 4 * p + 1,
                                      4 * p + 2, 4 * p + 2, 4 * p + 2, 4 * p + 2, 4 * p + 3, 4 * p + 3, 4 * p + 3, 4 * p + 3),
                    sc16);
        } else {
            __m256 sc, mn;
            k4_scales(blk + 4, &sc, &mn);
            __m512 scz = _mm512_castps256_ps512(_mm256_mul_ps(sc, _mm256_set1_ps(tern_h2f(tern_rd16(blk))))) ;
            mins = _mm256_mul_ps(mn, _mm256_set1_ps(-tern_h2f(tern_rd16(blk + 2))));
            for (int p = 0; p < 4; p++)
                lanescale[p] = _mm512_permutexvar_ps(
                    _mm512_inserti64x4(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1), 1), scz);
        }
        __m512i w[4];
        for (int p = 0; p < 4; p++) {
            if (type == TERN_Q6_K) {
                int h = p / 2, sh = 4 * (p % 2), hs = 4 * (p % 2); /* quarters k = 2(p%2), 2(p%2)+1 */
                __m512i lo = _mm512_loadu_si512((const void *)(blk + 64 * h));
                lo = _mm512_and_si512(sh ? _mm512_srli_epi16(lo, 4) : lo, _mm512_set1_epi8(0x0f));
                __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
                __m512i hi = _mm512_inserti64x4(_mm512_castsi256_si512(qh), qh, 1);
                hi = hs ? _mm512_srli_epi16(hi, 4) : hi;
                hi = _mm512_mask_srli_epi16(hi, 0xffff0000u, hi, 2);
                hi = _mm512_and_si512(_mm512_slli_epi16(hi, 4), _mm512_set1_epi8(0x30));
                w[p] = _mm512_sub_epi8(_mm512_or_si512(lo, hi), _mm512_set1_epi8(32));
            } else {
                const uint8_t *qs = blk + (type == TERN_Q4_K ? 16 : 48) + 32 * p;
                __m256i q = _mm256_loadu_si256((const __m256i *)qs);
                __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
                v = _mm512_and_si512(v, _mm512_set1_epi8(0x0f));
                if (type == TERN_Q5_K) {
                    __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 16));
                    __m512i hq = _mm512_inserti64x4(_mm512_castsi256_si512(qh), qh, 1);
                    __m512i bits = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * p))),
                                                      _mm256_set1_epi8((char)(1 << (2 * p + 1))), 1);
                    v = _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(hq, bits), v, _mm512_set1_epi8(0x10));
                }
                w[p] = v;
            }
        }
        for (int t = 0; t < MT; t++) {
            const tern_q8_block *ab = a + t * astride + 8 * b;
            __m256 da = _mm256_i32gather_ps(&ab->d, aidx, 1);
            __m512 daz = _mm512_castps256_ps512(da);
            if (type != TERN_Q6_K) {
                __m256 sa = _mm256_i32gather_ps(&ab->s, aidx, 1);
                /* zero-extending: a plain 256->512 cast leaves the upper half undefined */
                offacc[t] = _mm512_zextps256_ps512(_mm256_fmadd_ps(mins, sa, _mm512_castps512_ps256(offacc[t])));
            }
            for (int p = 0; p < 4; p++) {
                __m512i d = dot64(type == TERN_Q6_K, w[p], act2(ab + 2 * p, ab + 2 * p + 1));
                __m512 s = _mm512_mul_ps(lanescale[p],
                    _mm512_permutexvar_ps(_mm512_inserti64x4(_mm512_set1_epi32(2 * p), _mm256_set1_epi32(2 * p + 1), 1), daz));
                acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), s, acc[t]);
            }
        }
    }
    for (int t = 0; t < MT; t++) res[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t], offacc[t]));
}

/* One weight row against up to 4 activation rows (and, for m == 1, two weight rows against one activation
   row); the type and tile shape are compile-time constants in each instantiation so the loops specialize. */
#define ROWFN(NAME, MT, TYPE) \
    TGT static void NAME(const uint8_t *row, int64_t nb, const tern_q8_block *a, int64_t as, float *res) { \
        if (TYPE == TERN_Q4_K || TYPE == TERN_Q5_K || TYPE == TERN_Q6_K) rowk(TYPE, MT, row, nb, a, as, res); \
        else row32(TYPE, 1, MT, row, 0, nb, a, as, res); }
#define ROW4(NAME, TYPE) ROWFN(NAME##_1, 1, TYPE) ROWFN(NAME##_2, 2, TYPE) \
    ROWFN(NAME##_3, 3, TYPE) ROWFN(NAME##_4, 4, TYPE)
#define ROWPAIR(NAME, TYPE) \
    TGT static void NAME##_p(const uint8_t *row, size_t rs, int64_t nb, const tern_q8_block *a, float *res) { \
        row32(TYPE, 2, 1, row, rs, nb, a, 0, res); }
ROW4(r_q4_0, TERN_Q4_0) ROWPAIR(r_q4_0, TERN_Q4_0)
ROW4(r_q4_1, TERN_Q4_1) ROWPAIR(r_q4_1, TERN_Q4_1)
ROW4(r_q5_0, TERN_Q5_0) ROWPAIR(r_q5_0, TERN_Q5_0)
ROW4(r_q5_1, TERN_Q5_1) ROWPAIR(r_q5_1, TERN_Q5_1)
ROW4(r_q8_0, TERN_Q8_0) ROWPAIR(r_q8_0, TERN_Q8_0)
ROW4(r_q4_k, TERN_Q4_K)
ROW4(r_q5_k, TERN_Q5_K)
ROW4(r_q6_k, TERN_Q6_K)

#ifndef GEMM_MIN_M
#define GEMM_MIN_M 2 /* from here on the repacking kernels win */
#endif
typedef void (*pairfn)(const uint8_t *, size_t, int64_t, const tern_q8_block *, float *);
typedef void (*rowfn)(const uint8_t *, int64_t, const tern_q8_block *, int64_t, float *);
#define FNS(NAME) { NAME##_1, NAME##_2, NAME##_3, NAME##_4 }

TGT static int v_matmul_q(int type, const void *w, size_t row_bytes, int64_t n, const tern_q8_block *a, int64_t m,
                          float *out, int64_t ldo, int64_t r0, int64_t r1) {
    static const rowfn q4_0[4] = FNS(r_q4_0), q4_1[4] = FNS(r_q4_1), q5_0[4] = FNS(r_q5_0), q5_1[4] = FNS(r_q5_1),
                       q8_0[4] = FNS(r_q8_0), q4_k[4] = FNS(r_q4_k), q5_k[4] = FNS(r_q5_k), q6_k[4] = FNS(r_q6_k);
    const rowfn *fns;
    pairfn pair = NULL;
    int64_t per = 1;
    switch (type) {
    case TERN_Q4_0: fns = q4_0; pair = r_q4_0_p; break;
    case TERN_Q4_1: fns = q4_1; pair = r_q4_1_p; break;
    case TERN_Q5_0: fns = q5_0; pair = r_q5_0_p; break;
    case TERN_Q5_1: fns = q5_1; pair = r_q5_1_p; break;
    case TERN_Q8_0: fns = q8_0; pair = r_q8_0_p; break;
    case TERN_Q4_K: fns = q4_k; per = 8; break;
    case TERN_Q5_K: fns = q5_k; per = 8; break;
    case TERN_Q6_K: fns = q6_k; per = 8; break;
    default: return 0;
    }
    /* The repacking kernels win even for m == 1 (decode), except for Q6_K, whose extra half-block sums cost more
       than the repacking saves when there is one activation row. */
    if ((m >= 2 || type != TERN_Q6_K) && tern_avx512_gemm_q(type, w, row_bytes, n, a, m, out, ldo, r0, r1)) return 1;
    int64_t nab = n / TERN_QK, nb = nab / per;
    if (m == 1 && pair) {
        /* decode: two weight rows per pass share the activation loads and scale gathers */
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) pair((const uint8_t *)w + (size_t)r * row_bytes, row_bytes, nb, a, out + r);
        if (r < r1) fns[0]((const uint8_t *)w + (size_t)r * row_bytes, nb, a, nab, out + r);
        return 1;
    }
    /* For m > 4, a chunk of weight rows (~32 KB) is decoded against every tile of 4 activation rows while it
       sits in L1/L2, so the weights come from DRAM once per call whatever m is. */
    int64_t chunk = m <= 4 ? r1 - r0 : (int64_t)(32768 / (row_bytes + 1)) + 1;
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
        int64_t c1 = c0 + chunk < r1 ? c0 + chunk : r1;
        for (int64_t i = 0; i < m; i += 4) {
            int mt = m - i < 4 ? (int)(m - i) : 4;
            rowfn f = fns[mt - 1];
            for (int64_t r = c0; r < c1; r++) {
                float res[4];
                f((const uint8_t *)w + (size_t)r * row_bytes, nb, a + i * nab, nab, res);
                for (int t = 0; t < mt; t++) out[(i + t) * ldo + r] = res[t];
            }
        }
    }
    return 1;
}

/* ---------- float weights ---------- */

/* 16 weights from element j of a row of `type` as floats; `mask` selects the valid ones (tail). */
INL __m512 wload(int type, const void *row, int64_t j, __mmask16 mask) {
    if (type == TERN_F32) return _mm512_maskz_loadu_ps(mask, (const float *)row + j);
    __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + j);
    if (type == TERN_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

INL void rowf(const int type, const int MT, const void *row, int64_t n, const float *x, float *res) {
    __m512 acc[4][2];
    for (int t = 0; t < MT; t++) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= n; j += 32) {
        __m512 w0 = wload(type, row, j, 0xffff), w1 = wload(type, row, j + 16, 0xffff);
        for (int t = 0; t < MT; t++) {
            acc[t][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * n + j), acc[t][0]);
            acc[t][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * n + j + 16), acc[t][1]);
        }
    }
    for (; j < n; j += 16) {
        __mmask16 mask = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
        __m512 w0 = wload(type, row, j, mask);
        for (int t = 0; t < MT; t++)
            acc[t][0] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(mask, x + t * n + j), acc[t][0]);
    }
    for (int t = 0; t < MT; t++) res[t] = _mm512_reduce_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]));
}

typedef void (*rowffn)(const void *, int64_t, const float *, float *);
#define ROWF(NAME, MT, TYPE) TGT static void NAME(const void *row, int64_t n, const float *x, float *res) { \
        rowf(TYPE, MT, row, n, x, res); }
ROWF(f32_1, 1, TERN_F32) ROWF(f32_2, 2, TERN_F32) ROWF(f32_3, 3, TERN_F32) ROWF(f32_4, 4, TERN_F32)
ROWF(f16_1, 1, TERN_F16) ROWF(f16_2, 2, TERN_F16) ROWF(f16_3, 3, TERN_F16) ROWF(f16_4, 4, TERN_F16)
ROWF(bf16_1, 1, TERN_BF16) ROWF(bf16_2, 2, TERN_BF16) ROWF(bf16_3, 3, TERN_BF16) ROWF(bf16_4, 4, TERN_BF16)

TGT static int v_matmul_f(int type, const void *w, size_t row_bytes, int64_t n, const float *x, int64_t m,
                          float *out, int64_t ldo, int64_t r0, int64_t r1) {
    static const rowffn f32[4] = {f32_1, f32_2, f32_3, f32_4}, f16[4] = {f16_1, f16_2, f16_3, f16_4},
                        bf16[4] = {bf16_1, bf16_2, bf16_3, bf16_4};
    const rowffn *fns = type == TERN_F32 ? f32 : type == TERN_F16 ? f16 : type == TERN_BF16 ? bf16 : NULL;
    if (!fns) return 0;
    if (m >= GEMM_MIN_M && tern_avx512_gemm_f(type, w, row_bytes, n, x, m, out, ldo, r0, r1)) return 1;
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
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        acc0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

TGT static void v_axpy_f32(float alpha, const float *x, float *y, int64_t n) {
    __m512 va = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, y + i)));
    }
}

TGT static float v_dot_f16(const uint16_t *a, const float *b, int64_t n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i))), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(a + i + 16))), _mm512_loadu_ps(b + i + 16), acc1);
    }
    for (; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        acc0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, a + i)), _mm512_maskz_loadu_ps(k, b + i), acc0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

TGT static void v_axpy_f16(float alpha, const uint16_t *x, float *y, int64_t n) {
    __m512 va = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 xv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, x + i));
        _mm512_mask_storeu_ps(y + i, k, _mm512_fmadd_ps(va, xv, _mm512_maskz_loadu_ps(k, y + i)));
    }
}

TGT static void v_f32_to_f16(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(k, x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(y + i, k, h);
    }
}

TGT static void v_f16_to_f32(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 k = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, x + i)));
    }
}

const tern_kernel_table tern_kernels_avx512 = {
    v_quantize_activations, v_matmul_q, v_matmul_f, v_dot_f32, v_axpy_f32, v_dot_f16, v_axpy_f16,
    v_f32_to_f16, v_f16_to_f32,
};

#endif
