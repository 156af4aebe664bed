/* AVX-512 VNNI products over load-time packed weights (layout in packed.c). A panel's block is already in
   the register form the tile needs (one 512-bit load = 4 consecutive weights of each of 16 rows), so decode
   streams the packed bytes straight into vpdpbusd: no gathers, no transposes, no stack buffer. The float
   arithmetic is that of avx512_gemm.c's qtile, operation for operation, so results are bit-identical to
   tern_matmul_q. */
#include "kernels_internal.h"

#ifdef TERN_X86
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c,avx2")))
#define INL static inline __attribute__((always_inline)) TGT
#define UNROLL _Pragma("GCC unroll 16")

#ifndef PFD
#define PFD 8192 /* bytes ahead in the packed stream; the hardware prefetcher alone leaves decode latency-bound */
#endif
enum { PR = TERN_PACK_ROWS, KCP = 32 }; /* 32-value blocks per pass when m > 8 (KCP * 288..544 B stays in L1) */

INL __m512i bcast(const tern_q8_block *ab, int k) {
    return _mm512_set1_epi32((int)tern_rd32((const uint8_t *)ab->q + 4 * k));
}

/* MT activation rows x one panel's 16 rows over blocks [0, nbk) of pw/ps (already offset to the first block);
   adds into (or, when first, stores to) out[t * ldo + lane] for the lanes in `rows`. */
INL void ptile(const int type, const int MT, const uint8_t *pw, const uint8_t *ps, int nbk, const tern_q8_block *a,
               int64_t astride, float *out, int64_t ldo, __mmask16 rows, int first) {
    const int q8 = type == TERN_Q8_0, q5 = type == TERN_Q5_0 || type == TERN_Q5_1;
    const int hasm = type == TERN_Q4_1 || type == TERN_Q5_1;
    const size_t wb = q8 ? 512 : q5 ? 320 : 256, sb = hasm ? 64 : 32;
    const __m512i lo4 = _mm512_set1_epi8(0x0f), h16 = _mm512_set1_epi8(0x10);
    __m512 acc[8];
    UNROLL for (int t = 0; t < MT; t++) acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rows, out + t * ldo);
    for (int b = 0; b < nbk; b++) {
        const uint8_t *bw = pw + (size_t)b * wb, *bs = ps + (size_t)b * sb;
        /* panels are consecutive in memory, so this one linear look-ahead also covers the scale areas and the
           next panels; prefetching past the end of the data is harmless */
        for (int k = 0; k < (int)(wb / 64); k++) _mm_prefetch((const char *)(bw + PFD + 64 * k), _MM_HINT_T0);
        __m512i s[8];
        UNROLL for (int t = 0; t < MT; t++) s[t] = _mm512_setzero_si512();
        if (q8) {
            UNROLL for (int k = 0; k < 8; k++) {
                __m512i w = _mm512_load_si512((const void *)(bw + 64 * k));
                UNROLL for (int t = 0; t < MT; t++) s[t] = _mm512_dpbusd_epi32(s[t], w, bcast(a + t * astride + b, k));
            }
        } else {
            UNROLL for (int k = 0; k < 4; k++) {
                __m512i v = _mm512_load_si512((const void *)(bw + 64 * k));
                __m512i l = _mm512_and_si512(v, lo4), h = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
                if (q5) {
                    uint64_t ml, mh;
                    memcpy(&ml, bw + 256 + 8 * k, 8);
                    memcpy(&mh, bw + 256 + 8 * (k + 4), 8);
                    l = _mm512_mask_mov_epi8(l, _cvtu64_mask64(ml), _mm512_or_si512(l, h16));
                    h = _mm512_mask_mov_epi8(h, _cvtu64_mask64(mh), _mm512_or_si512(h, h16));
                }
                UNROLL for (int t = 0; t < MT; t++) {
                    s[t] = _mm512_dpbusd_epi32(s[t], l, bcast(a + t * astride + b, k));
                    s[t] = _mm512_dpbusd_epi32(s[t], h, bcast(a + t * astride + b, k + 4));
                }
            }
        }
        __m512 d = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)bs)), o;
        if (hasm) o = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(bs + 32)));
        else o = _mm512_mul_ps(d, _mm512_set1_ps(q8 ? -128.0f : q5 ? -16.0f : -8.0f));
        UNROLL for (int t = 0; t < MT; t++) {
            const tern_q8_block *ab = a + t * astride + b;
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), _mm512_mul_ps(d, _mm512_set1_ps(ab->d)), acc[t]);
            acc[t] = _mm512_fmadd_ps(o, _mm512_set1_ps(ab->s), acc[t]);
        }
    }
    UNROLL for (int t = 0; t < MT; t++) _mm512_mask_storeu_ps(out + t * ldo, rows, acc[t]);
}

/* Q4_K / Q5_K: ptile over nsb super-blocks; a sub-block pair shares each weight load (low / high nibbles). */
INL void ktile(const int type, const int MT, const uint8_t *pw, const uint8_t *ps, int nsb, const tern_q8_block *a,
               int64_t astride, float *out, int64_t ldo, __mmask16 rows, int first) {
    const int q5 = type == TERN_Q5_K;
    const size_t wb = q5 ? 2560 : 2048;
    const __m512i lo4 = _mm512_set1_epi8(0x0f), h16 = _mm512_set1_epi8(0x10);
    __m512 acc[8];
    UNROLL for (int t = 0; t < MT; t++) acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rows, out + t * ldo);
    for (int sbi = 0; sbi < nsb; sbi++) {
        const uint8_t *bw = pw + (size_t)sbi * wb, *bs = ps + (size_t)sbi * 320;
        for (int k = 0; k < (int)(wb / 64); k++) _mm_prefetch((const char *)(bw + PFD + 64 * k), _MM_HINT_T0);
        const __m512 d = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)bs));
        const __m512 dmin = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(bs + 32))));
        for (int p = 0; p < 4; p++) {
            const tern_q8_block *a0 = a + 8 * sbi + 2 * p;
            __m512i s0[8], s1[8];
            UNROLL for (int t = 0; t < MT; t++) { s0[t] = _mm512_setzero_si512(); s1[t] = _mm512_setzero_si512(); }
            UNROLL for (int k = 0; k < 8; k++) {
                __m512i v = _mm512_load_si512((const void *)(bw + 512 * p + 64 * k));
                __m512i l = _mm512_and_si512(v, lo4), h = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
                if (q5) {
                    uint64_t ml, mh;
                    memcpy(&ml, bw + 2048 + 8 * (8 * (2 * p) + k), 8);
                    memcpy(&mh, bw + 2048 + 8 * (8 * (2 * p + 1) + k), 8);
                    l = _mm512_mask_mov_epi8(l, _cvtu64_mask64(ml), _mm512_or_si512(l, h16));
                    h = _mm512_mask_mov_epi8(h, _cvtu64_mask64(mh), _mm512_or_si512(h, h16));
                }
                UNROLL for (int t = 0; t < MT; t++) {
                    s0[t] = _mm512_dpbusd_epi32(s0[t], l, bcast(a0 + t * astride, k));
                    s1[t] = _mm512_dpbusd_epi32(s1[t], h, bcast(a0 + t * astride + 1, k));
                }
            }
            UNROLL for (int e = 0; e < 2; e++) {
                const int j = 2 * p + e;
                __m512 dj = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(bs + 64 + 16 * j)))));
                __m512 oj = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(bs + 192 + 16 * j)))));
                UNROLL for (int t = 0; t < MT; t++) {
                    const tern_q8_block *ab = a0 + t * astride + e;
                    acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(e ? s1[t] : s0[t]), _mm512_mul_ps(dj, _mm512_set1_ps(ab->d)), acc[t]);
                    acc[t] = _mm512_fmadd_ps(oj, _mm512_set1_ps(ab->s), acc[t]);
                }
            }
        }
    }
    UNROLL for (int t = 0; t < MT; t++) _mm512_mask_storeu_ps(out + t * ldo, rows, acc[t]);
}

/* Q6_K: 6-bit values rebuilt from a nibble vector and a high-bit-pair vector; the -32 offset needs each
   activation half-block's sum, taken with one vpsadbw per activation row and block. */
INL void q6tile(const int MT, const uint8_t *pw, const uint8_t *ps, int nsb, const tern_q8_block *a, int64_t astride,
                float *out, int64_t ldo, __mmask16 rows, int first) {
    const __m512i lo4 = _mm512_set1_epi8(0x0f), m3 = _mm512_set1_epi8(3), mc = _mm512_set1_epi8(0x0c);
    const __m256i x80 = _mm256_set1_epi8((char)0x80), b2048 = _mm256_set1_epi64x(2048);
    __m512 acc[8];
    UNROLL for (int t = 0; t < MT; t++) acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rows, out + t * ldo);
    for (int sbi = 0; sbi < nsb; sbi++) {
        const uint8_t *sw = pw + (size_t)sbi * 3072, *bs = ps + (size_t)sbi * 288;
        const __m512 d = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)bs));
        for (int jb = 0; jb < 8; jb++) {
            const uint8_t *bw = sw + 384 * jb;
            for (int k = 0; k < 6; k++) _mm_prefetch((const char *)(bw + PFD + 64 * k), _MM_HINT_T0);
            const tern_q8_block *a0 = a + 8 * sbi + jb;
            __m512i s0[8], s1[8];
            UNROLL for (int t = 0; t < MT; t++) { s0[t] = _mm512_setzero_si512(); s1[t] = _mm512_setzero_si512(); }
            const __m512i H0 = _mm512_load_si512((const void *)(bw + 256)), H1 = _mm512_load_si512((const void *)(bw + 320));
            UNROLL for (int k = 0; k < 4; k++) {
                __m512i v = _mm512_load_si512((const void *)(bw + 64 * k));
                __m512i H = k < 2 ? H0 : H1;
                if (k & 1) H = _mm512_srli_epi16(H, 4);
                __m512i l = _mm512_or_si512(_mm512_and_si512(v, lo4), _mm512_slli_epi16(_mm512_and_si512(H, m3), 4));
                __m512i h = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(v, 4), lo4), _mm512_slli_epi16(_mm512_and_si512(H, mc), 2));
                UNROLL for (int t = 0; t < MT; t++) {
                    s0[t] = _mm512_dpbusd_epi32(s0[t], l, bcast(a0 + t * astride, k));
                    s1[t] = _mm512_dpbusd_epi32(s1[t], h, bcast(a0 + t * astride, k + 4));
                }
            }
            __m512 d0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(bs + 32 + 32 * jb)))));
            __m512 d1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128((const __m128i *)(bs + 48 + 32 * jb)))));
            UNROLL for (int t = 0; t < MT; t++) {
                const tern_q8_block *ab = a0 + t * astride;
                /* sum(q + 128) of each 8 bytes, paired into the two halves, minus 16 * 128 */
                __m256i g = _mm256_sad_epu8(_mm256_xor_si256(_mm256_loadu_si256((const __m256i *)ab->q), x80), _mm256_setzero_si256());
                g = _mm256_sub_epi64(_mm256_add_epi64(g, _mm256_shuffle_epi32(g, 0x4e)), b2048);
                __m512i g0 = _mm512_broadcastd_epi32(_mm256_castsi256_si128(g)), g1 = _mm512_broadcastd_epi32(_mm256_extracti128_si256(g, 1));
                __m512i i0 = _mm512_sub_epi32(s0[t], _mm512_slli_epi32(g0, 5)), i1 = _mm512_sub_epi32(s1[t], _mm512_slli_epi32(g1, 5));
                __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), d0, _mm512_mul_ps(_mm512_cvtepi32_ps(i1), d1));
                acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(ab->d), acc[t]);
            }
        }
    }
    UNROLL for (int t = 0; t < MT; t++) _mm512_mask_storeu_ps(out + t * ldo, rows, acc[t]);
}

typedef void (*ptilefn)(const uint8_t *, const uint8_t *, int, const tern_q8_block *, int64_t, float *, int64_t,
                        __mmask16, int);
#define PT(NAME, TYPE, MT) TGT static void NAME##_##MT(const uint8_t *pw, const uint8_t *ps, int nbk, \
        const tern_q8_block *a, int64_t as, float *out, int64_t ldo, __mmask16 rows, int first) { \
        ptile(TYPE, MT, pw, ps, nbk, a, as, out, ldo, rows, first); }
#define PTS(NAME, TYPE) PT(NAME, TYPE, 1) PT(NAME, TYPE, 2) PT(NAME, TYPE, 3) PT(NAME, TYPE, 4) \
        PT(NAME, TYPE, 5) PT(NAME, TYPE, 6) PT(NAME, TYPE, 7) PT(NAME, TYPE, 8) \
        static const ptilefn NAME[8] = {NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5, NAME##_6, NAME##_7, NAME##_8};
PTS(pt_q4_0, TERN_Q4_0)
PTS(pt_q4_1, TERN_Q4_1)
PTS(pt_q8_0, TERN_Q8_0)
PTS(pt_q5_0, TERN_Q5_0)
PTS(pt_q5_1, TERN_Q5_1)

/* K tiles take nbk in 32-value blocks too (a multiple of 8) */
#define KT(NAME, TYPE, MT) TGT static void NAME##_##MT(const uint8_t *pw, const uint8_t *ps, int nbk, \
        const tern_q8_block *a, int64_t as, float *out, int64_t ldo, __mmask16 rows, int first) { \
        ktile(TYPE, MT, pw, ps, nbk / 8, a, as, out, ldo, rows, first); }
#define KTS(NAME, TYPE) KT(NAME, TYPE, 1) KT(NAME, TYPE, 2) KT(NAME, TYPE, 3) KT(NAME, TYPE, 4) \
        KT(NAME, TYPE, 5) KT(NAME, TYPE, 6) KT(NAME, TYPE, 7) KT(NAME, TYPE, 8) \
        static const ptilefn NAME[8] = {NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5, NAME##_6, NAME##_7, NAME##_8};
KTS(pt_q4_k, TERN_Q4_K)
KTS(pt_q5_k, TERN_Q5_K)
#define Q6T(MT) TGT static void pt_q6_k_##MT(const uint8_t *pw, const uint8_t *ps, int nbk, const tern_q8_block *a, \
        int64_t as, float *out, int64_t ldo, __mmask16 rows, int first) { q6tile(MT, pw, ps, nbk / 8, a, as, out, ldo, rows, first); }
Q6T(1) Q6T(2) Q6T(3) Q6T(4) Q6T(5) Q6T(6) Q6T(7) Q6T(8)
static const ptilefn pt_q6_k[8] = {pt_q6_k_1, pt_q6_k_2, pt_q6_k_3, pt_q6_k_4, pt_q6_k_5, pt_q6_k_6, pt_q6_k_7, pt_q6_k_8};

/* Q5_K at large m: its high-bit masks make re-unpacking per tile of 8 activation rows dearer than unpacking a
   chunk once into avx512_gemm.c's register form (TERN_PBLOCK_BYTES per block: 8 weight vectors, d, o as floats)
   and sharing that file's tile. (For the other types, re-unpacking in the tile measured faster.) */
INL void expand_k(const int type, const uint8_t *pw, const uint8_t *ps, int b, uint8_t *dst) {
    const __m512i lo4 = _mm512_set1_epi8(0x0f), h16 = _mm512_set1_epi8(0x10);
    const int q5 = type == TERN_Q5_K, s = b / 8, j = b % 8, p = j / 2, e = j % 2;
    const uint8_t *bw = pw + (size_t)s * (q5 ? 2560 : 2048), *bs = ps + (size_t)s * 320;
    UNROLL for (int k = 0; k < 8; k++) {
        __m512i v = _mm512_load_si512((const void *)(bw + 512 * p + 64 * k));
        __m512i u = _mm512_and_si512(e ? _mm512_srli_epi16(v, 4) : v, lo4);
        if (q5) {
            uint64_t mk;
            memcpy(&mk, bw + 2048 + 8 * (8 * j + k), 8);
            u = _mm512_mask_mov_epi8(u, _cvtu64_mask64(mk), _mm512_or_si512(u, h16));
        }
        _mm512_store_si512((void *)(dst + 64 * k), u);
    }
    __m512 dd = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)bs));
    __m512 dmin = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(bs + 32))));
    _mm512_store_ps((float *)(dst + 512),
                    _mm512_mul_ps(dd, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(bs + 64 + 16 * j))))));
    _mm512_store_ps((float *)(dst + 576),
                    _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(bs + 192 + 16 * j))))));
}

TGT static void ex_q5_k(const uint8_t *pw, const uint8_t *ps, int b0, int nbk, uint8_t *dst) {
    for (int b = 0; b < nbk; b++) expand_k(TERN_Q5_K, pw, ps, b0 + b, dst + (size_t)b * TERN_PBLOCK_BYTES);
}

TGT int tern_avx512_matmul_packed(int type, const void *packed, int64_t rows, int64_t n, const tern_q8_block *a,
                                  int64_t m, float *out, int64_t ldo, int64_t r0, int64_t r1) {
    const ptilefn *fns;
    switch (type) {
    case TERN_Q4_0: fns = pt_q4_0; break;
    case TERN_Q4_1: fns = pt_q4_1; break;
    case TERN_Q5_0: fns = pt_q5_0; break;
    case TERN_Q5_1: fns = pt_q5_1; break;
    case TERN_Q8_0: fns = pt_q8_0; break;
    case TERN_Q4_K: fns = pt_q4_k; break;
    case TERN_Q5_K: fns = pt_q5_k; break;
    case TERN_Q6_K: fns = pt_q6_k; break;
    default: return 0;
    }
    size_t so = 0, pb = tern_packed_panel_bytes(type, n, &so);
    size_t wb, sb;
    tern_packed_block_geometry(type, &wb, &sb);
    const int64_t nab = n / TERN_QK;
    (void)rows;
    for (int64_t p0 = r0; p0 < r1; p0 += PR) {
        int nr = r1 - p0 < PR ? (int)(r1 - p0) : PR;
        __mmask16 rmask = (__mmask16)((1u << nr) - 1);
        const uint8_t *pw = (const uint8_t *)packed + (size_t)(p0 / PR) * pb, *ps = pw + so;
        if (m <= 8) { /* one pass: each packed byte is read once */
            fns[m - 1](pw, ps, (int)nab, a, nab, out + p0, ldo, rmask, 1);
            continue;
        }
        if (type != TERN_Q5_K || m < 32) {
            /* a chunk of the panel meets every tile of 8 activation rows while it sits in L1 */
            for (int64_t kb = 0; kb < nab; kb += KCP) {
                int nbk = nab - kb < KCP ? (int)(nab - kb) : KCP;
                for (int64_t i = 0; i < m; i += 8) {
                    int mt = m - i < 8 ? (int)(m - i) : 8;
                    fns[mt - 1](pw + (size_t)kb * wb, ps + (size_t)kb * sb, nbk, a + i * nab + kb, nab, out + i * ldo + p0,
                                ldo, rmask, kb == 0);
                }
            }
            continue;
        }
        /* Q5_K, many tiles per chunk: unpack the chunk once into register form (L1) */
        uint8_t buf[KCP * TERN_PBLOCK_BYTES] __attribute__((aligned(64)));
        for (int64_t kb = 0; kb < nab; kb += KCP) {
            int nbk = nab - kb < KCP ? (int)(nab - kb) : KCP;
            if (p0 + PR < r1) /* the next panel's chunk, towards L2 while this one is multiplied */
                for (size_t off = 0; off < (size_t)nbk * wb; off += 64)
                    _mm_prefetch((const char *)(pw + pb + (size_t)kb * wb + off), _MM_HINT_T1);
            ex_q5_k(pw, ps, (int)kb, nbk, buf);
            for (int64_t i = 0; i < m; i += 8) {
                int mt = m - i < 8 ? (int)(m - i) : 8;
                tern_avx512_qtile(mt, buf, nbk, a + i * nab + kb, nab, out + i * ldo + p0, ldo, rmask, kb == 0);
            }
        }
    }
    return 1;
}

#endif
