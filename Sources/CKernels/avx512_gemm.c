/* AVX-512 VNNI matrix products for quantized weights at any m (decode, batched decoding, prompt processing)
   and float weights at m > 1. Quantized weights are
   repacked a panel of 16 rows at a time into a small L1-resident buffer where one 512-bit register holds
   4 consecutive weights of each of the 16 rows, so vpdpbusd with one broadcast activation dword yields 16 row
   sums at once and a 32-value block costs 8 vpdpbusd + 4 float ops per activation row, with no horizontal
   sums. Every 32-value block of every type is brought to one form, unsigned weights u with
   value = d * u + o, so a single tile kernel serves them all: dot = d * da * sum(u * q) + o * s.
   Float weights use a 4 x 4 (weight rows x activation rows) register tile instead. */
#include "kernels_internal.h"

#ifdef TERN_X86
#include <immintrin.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma,f16c,avx2")))
#define INL static inline __attribute__((always_inline)) TGT
/* the tile loops must be fully unrolled so their accumulators live in registers (GCC leaves them in memory
   otherwise; clang unrolls by itself) */
#define UNROLL _Pragma("GCC unroll 16")

#ifndef PF_DIST
#define PF_DIST 2
#endif
#ifndef PF_HINT
#define PF_HINT _MM_HINT_T1
#endif
enum { PANEL = 16, KC = 32 }; /* rows per panel; 32-value blocks per repacked chunk (KC * 640 B = 20 KB) */

/* One 32-value block of 16 rows: w[k] lane r = weights 4k..4k+3 of row r (unsigned bytes), then per-row
   d and o. */
typedef struct { __m512i w[8]; __m512 d, o; } pblock;

INL __m512 half_lo(__m512i v) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(v)); }
INL __m512 half_hi(__m512i v) { return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16))); }

/* bits 0..3 of each lane -> bit 4 of bytes 0..3 (the four terms land in disjoint bit ranges: no carries) */
INL __m512i spread4(__m512i v) {
    return _mm512_and_si512(_mm512_mullo_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0xf)), _mm512_set1_epi32(0x02040810)),
                            _mm512_set1_epi32(0x10101010));
}

/* 16 bytes at p + r * rb for rows r = 0..15 -> q[k] lane r = dword k of row r. Rows >= nr re-read the last
   valid row (their lanes are never stored). Plain loads + 8 shuffles beat 4 gathers, which also stall badly
   on cache misses. */
INL void transpose16(const uint8_t *p, size_t rb, int nr, __m512i q[4]) {
    __m512i z[4];
    for (int g = 0; g < 4; g++) {
        const uint8_t *r0 = p + (size_t)(4 * g < nr ? 4 * g : nr - 1) * rb;
        const uint8_t *r1 = p + (size_t)(4 * g + 1 < nr ? 4 * g + 1 : nr - 1) * rb;
        const uint8_t *r2 = p + (size_t)(4 * g + 2 < nr ? 4 * g + 2 : nr - 1) * rb;
        const uint8_t *r3 = p + (size_t)(4 * g + 3 < nr ? 4 * g + 3 : nr - 1) * rb;
        __m512i v = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)r0));
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)r1), 1);
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)r2), 2);
        z[g] = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)r3), 3);
    }
    const __m512i i01 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29);
    const __m512i i23 = _mm512_setr_epi32(2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31);
    __m512i a01 = _mm512_permutex2var_epi32(z[0], i01, z[1]), a23 = _mm512_permutex2var_epi32(z[0], i23, z[1]);
    __m512i b01 = _mm512_permutex2var_epi32(z[2], i01, z[3]), b23 = _mm512_permutex2var_epi32(z[2], i23, z[3]);
    q[0] = _mm512_shuffle_i64x2(a01, b01, 0x44);
    q[1] = _mm512_shuffle_i64x2(a01, b01, 0xee);
    q[2] = _mm512_shuffle_i64x2(a23, b23, 0x44);
    q[3] = _mm512_shuffle_i64x2(a23, b23, 0xee);
}

/* Repack blocks [b0, b0 + nbk) (32-value units) of the panel's rows into buf. */
INL void repack(const int type, const uint8_t *p, size_t row_bytes, __mmask16 rows, int64_t b0, int nbk, pblock *buf) {
    const int nr = 32 - __builtin_clz((unsigned)rows);
    const __m512i vidx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)row_bytes));
    const __m512i z = _mm512_setzero_si512(), lo4 = _mm512_set1_epi8(0x0f);
#define G(ptr) _mm512_mask_i32gather_epi32(z, rows, vidx, (const void *)(ptr), 1)
    if (type == TERN_Q4_K || type == TERN_Q5_K) {
        const int bytes = type == TERN_Q4_K ? Q4_K_BYTES : Q5_K_BYTES;
        for (int sb = 0; sb < nbk / 8; sb++) {
            const uint8_t *blk = p + (b0 / 8 + sb) * bytes;
            __m512i dd = G(blk), s0 = G(blk + 4), s1 = G(blk + 8), s2 = G(blk + 12);
            __m512 d = half_lo(dd), dmin = _mm512_sub_ps(_mm512_setzero_ps(), half_hi(dd));
            for (int j = 0; j < 8; j++) {
                int sh = 8 * (j & 3);
                __m512i sc, mn;
                if (j < 4) {
                    sc = _mm512_and_si512(_mm512_srli_epi32(s0, sh), _mm512_set1_epi32(63));
                    mn = _mm512_and_si512(_mm512_srli_epi32(s1, sh), _mm512_set1_epi32(63));
                } else {
                    __m512i t = _mm512_srli_epi32(s2, sh);
                    sc = _mm512_or_si512(_mm512_and_si512(t, _mm512_set1_epi32(0x0f)),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s0, sh + 6), _mm512_set1_epi32(3)), 4));
                    mn = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(t, 4), _mm512_set1_epi32(0x0f)),
                                         _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(s1, sh + 6), _mm512_set1_epi32(3)), 4));
                }
                pblock *o = buf + 8 * sb + j;
                o->d = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
                o->o = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(mn));
            }
            const uint8_t *qs = blk + (type == TERN_Q4_K ? 16 : 48);
            __m512i q[4], h[8];
            if (type == TERN_Q5_K) { /* high bits: byte e of qh, bit j = sub-block j */
                transpose16(blk + 16, row_bytes, nr, h);
                transpose16(blk + 32, row_bytes, nr, h + 4);
            }
            for (int c = 0; c < 8; c++) { /* qs bytes 16c..: sub-blocks 2pr (low nibbles), 2pr + 1 (high) */
                int pr = c / 2, lh = c % 2;
                transpose16(qs + 16 * c, row_bytes, nr, q);
                for (int kk = 0; kk < 4; kk++) {
                    int k = 4 * lh + kk;
                    __m512i a = _mm512_and_si512(q[kk], lo4), b = _mm512_and_si512(_mm512_srli_epi16(q[kk], 4), lo4);
                    if (type == TERN_Q5_K) {
                        const __m512i one = _mm512_set1_epi8(1);
                        a = _mm512_or_si512(a, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi32(h[k], 2 * pr), one), 4));
                        b = _mm512_or_si512(b, _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi32(h[k], 2 * pr + 1), one), 4));
                    }
                    buf[8 * sb + 2 * pr].w[k] = a;
                    buf[8 * sb + 2 * pr + 1].w[k] = b;
                }
            }
        }
        return;
    }
    const int bytes = type == TERN_Q4_0 ? Q4_0_BYTES : type == TERN_Q4_1 ? Q4_1_BYTES : type == TERN_Q5_0 ? Q5_0_BYTES
                    : type == TERN_Q5_1 ? Q5_1_BYTES : Q8_0_BYTES;
    for (int b = 0; b < nbk; b++) {
        const uint8_t *blk = p + (b0 + b) * bytes;
        pblock *o = buf + b;
        __m512i dd = G(blk);
        __m512 d = half_lo(dd);
        o->d = d;
        switch (type) {
        case TERN_Q4_1: case TERN_Q5_1: o->o = half_hi(dd); break;
        case TERN_Q4_0: o->o = _mm512_mul_ps(d, _mm512_set1_ps(-8.0f)); break;
        case TERN_Q5_0: o->o = _mm512_mul_ps(d, _mm512_set1_ps(-16.0f)); break;
        default: o->o = _mm512_mul_ps(d, _mm512_set1_ps(-128.0f)); break;
        }
        if (type == TERN_Q8_0) {
            /* signed -> unsigned by +128; the -128 * d * sum(q) correction rides in o */
            __m512i q[4];
            for (int h = 0; h < 2; h++) {
                transpose16(blk + 2 + 16 * h, row_bytes, nr, q);
                for (int k = 0; k < 4; k++) o->w[4 * h + k] = _mm512_xor_si512(q[k], _mm512_set1_epi8((char)0x80));
            }
            continue;
        }
        const int qoff = type == TERN_Q4_0 ? 2 : type == TERN_Q4_1 ? 4 : type == TERN_Q5_0 ? 6 : 8;
        __m512i q[4];
        transpose16(blk + qoff, row_bytes, nr, q);
        for (int k = 0; k < 4; k++) {
            o->w[k] = _mm512_and_si512(q[k], lo4);
            o->w[k + 4] = _mm512_and_si512(_mm512_srli_epi16(q[k], 4), lo4);
        }
        if (type == TERN_Q5_0 || type == TERN_Q5_1) {
            __m512i qh = G(blk + (type == TERN_Q5_0 ? 2 : 4));
            for (int k = 0; k < 8; k++) o->w[k] = _mm512_or_si512(o->w[k], spread4(_mm512_srli_epi32(qh, 4 * k)));
        }
    }
#undef G
}

/* MT activation rows x the panel's 16 rows over nbk repacked blocks; adds into (or, first chunk, stores to)
   out[t * ldo + lane] for the lanes in `rows`. */
INL void qtile(const int MT, const pblock *buf, int nbk, const tern_q8_block *a, int64_t astride, float *out,
               int64_t ldo, __mmask16 rows, int first) {
    __m512 acc[8];
    UNROLL for (int t = 0; t < MT; t++) acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rows, out + t * ldo);
    for (int b = 0; b < nbk; b++) {
        const pblock *pb = buf + b;
        __m512i s[8];
        UNROLL for (int t = 0; t < MT; t++) s[t] = _mm512_setzero_si512();
        UNROLL for (int k = 0; k < 8; k++) {
            __m512i w = _mm512_load_si512((const void *)&pb->w[k]);
            UNROLL for (int t = 0; t < MT; t++)
                s[t] = _mm512_dpbusd_epi32(s[t], w, _mm512_set1_epi32((int)tern_rd32((const uint8_t *)a[t * astride + b].q + 4 * k)));
        }
        __m512 d = _mm512_load_ps((const float *)&pb->d), o = _mm512_load_ps((const float *)&pb->o);
        UNROLL for (int t = 0; t < MT; t++) {
            const tern_q8_block *ab = a + t * astride + b;
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), _mm512_mul_ps(d, _mm512_set1_ps(ab->d)), acc[t]);
            acc[t] = _mm512_fmadd_ps(o, _mm512_set1_ps(ab->s), acc[t]);
        }
    }
    UNROLL for (int t = 0; t < MT; t++) _mm512_mask_storeu_ps(out + t * ldo, rows, acc[t]);
}

typedef void (*qtilefn)(const pblock *, int, const tern_q8_block *, int64_t, float *, int64_t, __mmask16, int);
#define QT(MT) TGT static void qtile_##MT(const pblock *buf, int nbk, const tern_q8_block *a, int64_t as, float *out, \
                                          int64_t ldo, __mmask16 rows, int first) { qtile(MT, buf, nbk, a, as, out, ldo, rows, first); }
QT(1) QT(2) QT(3) QT(4) QT(5) QT(6) QT(7) QT(8)
static const qtilefn qtiles[8] = {qtile_1, qtile_2, qtile_3, qtile_4, qtile_5, qtile_6, qtile_7, qtile_8};

/* avx512_packed.c expands load-time packed panels into pblocks for m > 8 and shares these tiles */
_Static_assert(sizeof(pblock) == TERN_PBLOCK_BYTES, "pblock layout shared with avx512_packed.c");
TGT void tern_avx512_qtile(int mt, const void *buf, int nbk, const tern_q8_block *a, int64_t astride, float *out,
                           int64_t ldo, unsigned rows, int first) {
    qtiles[mt - 1]((const pblock *)buf, nbk, a, astride, out, ldo, (__mmask16)rows, first);
}

#define RP(NAME, TYPE) TGT static void NAME(const uint8_t *p, size_t rb, __mmask16 rows, int64_t b0, int nbk, pblock *buf) { \
        repack(TYPE, p, rb, rows, b0, nbk, buf); }
RP(rp_q4_0, TERN_Q4_0) RP(rp_q4_1, TERN_Q4_1) RP(rp_q5_0, TERN_Q5_0) RP(rp_q5_1, TERN_Q5_1) RP(rp_q8_0, TERN_Q8_0)
RP(rp_q4_k, TERN_Q4_K) RP(rp_q5_k, TERN_Q5_K)

/* ---------- Q6_K: two 16-value scales per 32-value block and a -32 offset ---------- */

/* The offset needs each activation half-block's sum, which no field of tern_q8_block holds; lane 15 of every
   panel is a fake row of ones, so vpdpbusd computes those sums alongside 15 real rows for free. */
enum { PANEL6 = 15 };
typedef struct { __m512i w[8]; __m512 d0, d1; } pblock6;

INL void repack_q6k(const uint8_t *p, size_t row_bytes, __mmask16 rows, int64_t b0, int nbk, pblock6 *buf) {
    const int nr = 32 - __builtin_clz((unsigned)rows);
    const __m512i vidx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                            _mm512_set1_epi32((int)row_bytes));
    const __m512i z = _mm512_setzero_si512(), lo4 = _mm512_set1_epi8(0x0f), ones = _mm512_set1_epi8(1);
    for (int sb = 0; sb < nbk / 8; sb++) {
        const uint8_t *blk = p + (b0 / 8 + sb) * Q6_K_BYTES;
        pblock6 *o = buf + 8 * sb;
        /* d is the last 2 bytes of the block: read the dword ending there */
        __m512 d = half_hi(_mm512_mask_i32gather_epi32(z, rows, vidx, (const void *)(blk + 206), 1));
        for (int c = 0; c < 4; c++) {
            __m512i sc = _mm512_mask_i32gather_epi32(z, rows, vidx, (const void *)(blk + 192 + 4 * c), 1);
            for (int e = 0; e < 2; e++) { /* 32-value block 2c + e uses scale bytes 2e, 2e + 1 of this dword */
                __m512i s0 = _mm512_srai_epi32(_mm512_slli_epi32(sc, 24 - 16 * e), 24);
                __m512i s1 = _mm512_srai_epi32(_mm512_slli_epi32(sc, 16 - 16 * e), 24);
                o[2 * c + e].d0 = _mm512_maskz_mul_ps(0x7fff, d, _mm512_cvtepi32_ps(s0));
                o[2 * c + e].d1 = _mm512_maskz_mul_ps(0x7fff, d, _mm512_cvtepi32_ps(s1));
            }
        }
        __m512i q[4];
        for (int c = 0; c < 8; c++) { /* ql bytes 16c..16c+15: half h, low/high 32-byte group g, element half lh */
            int h = c / 4, g = (c / 2) % 2, lh = c % 2;
            transpose16(blk + 16 * c, row_bytes, nr, q);
            for (int kk = 0; kk < 4; kk++) {
                o[4 * h + g].w[4 * lh + kk] = _mm512_and_si512(q[kk], lo4);
                o[4 * h + g + 2].w[4 * lh + kk] = _mm512_and_si512(_mm512_srli_epi16(q[kk], 4), lo4);
            }
        }
        for (int c = 0; c < 4; c++) { /* qh bytes 16c..16c+15: half h, element half lh; bits 2j of block 4h + j */
            int h = c / 2, lh = c % 2;
            transpose16(blk + 128 + 16 * c, row_bytes, nr, q);
            for (int kk = 0; kk < 4; kk++)
                for (int j = 0; j < 4; j++) {
                    __m512i hb = _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(q[kk], 2 * j), _mm512_set1_epi8(3)), 4);
                    __m512i *wp = &o[4 * h + j].w[4 * lh + kk];
                    *wp = _mm512_mask_mov_epi32(_mm512_or_si512(*wp, hb), 0x8000, ones);
                }
        }
    }
}

INL void qtile6(const int MT, const pblock6 *buf, int nbk, const tern_q8_block *a, int64_t astride, float *out,
                int64_t ldo, __mmask16 rows, int first) {
    const __m512i l15 = _mm512_set1_epi32(15);
    __m512 acc[8];
    UNROLL for (int t = 0; t < MT; t++) acc[t] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(rows, out + t * ldo);
    for (int b = 0; b < nbk; b++) {
        const pblock6 *pb = buf + b;
        __m512i s0[8], s1[8];
        UNROLL for (int t = 0; t < MT; t++) { s0[t] = _mm512_setzero_si512(); s1[t] = _mm512_setzero_si512(); }
        UNROLL for (int k = 0; k < 4; k++) {
            __m512i w0 = _mm512_load_si512((const void *)&pb->w[k]), w1 = _mm512_load_si512((const void *)&pb->w[k + 4]);
            UNROLL for (int t = 0; t < MT; t++) {
                const uint8_t *aq = (const uint8_t *)a[t * astride + b].q;
                s0[t] = _mm512_dpbusd_epi32(s0[t], w0, _mm512_set1_epi32((int)tern_rd32(aq + 4 * k)));
                s1[t] = _mm512_dpbusd_epi32(s1[t], w1, _mm512_set1_epi32((int)tern_rd32(aq + 16 + 4 * k)));
            }
        }
        __m512 d0 = _mm512_load_ps((const float *)&pb->d0), d1 = _mm512_load_ps((const float *)&pb->d1);
        UNROLL for (int t = 0; t < MT; t++) {
            /* sum((q - 32) * a) per half: lane 15 holds sum(a) */
            __m512i i0 = _mm512_sub_epi32(s0[t], _mm512_slli_epi32(_mm512_permutexvar_epi32(l15, s0[t]), 5));
            __m512i i1 = _mm512_sub_epi32(s1[t], _mm512_slli_epi32(_mm512_permutexvar_epi32(l15, s1[t]), 5));
            __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), d0, _mm512_mul_ps(_mm512_cvtepi32_ps(i1), d1));
            acc[t] = _mm512_fmadd_ps(f, _mm512_set1_ps(a[t * astride + b].d), acc[t]);
        }
    }
    UNROLL for (int t = 0; t < MT; t++) _mm512_mask_storeu_ps(out + t * ldo, rows, acc[t]);
}

typedef void (*qtile6fn)(const pblock6 *, int, const tern_q8_block *, int64_t, float *, int64_t, __mmask16, int);
#define QT6(MT) TGT static void qtile6_##MT(const pblock6 *buf, int nbk, const tern_q8_block *a, int64_t as, float *out, \
                                            int64_t ldo, __mmask16 rows, int first) { qtile6(MT, buf, nbk, a, as, out, ldo, rows, first); }
QT6(1) QT6(2) QT6(3) QT6(4) QT6(5) QT6(6) QT6(7) QT6(8)
static const qtile6fn qtiles6[8] = {qtile6_1, qtile6_2, qtile6_3, qtile6_4, qtile6_5, qtile6_6, qtile6_7, qtile6_8};

TGT static void rp_q6_k(const uint8_t *p, size_t rb, __mmask16 rows, int64_t b0, int nbk, pblock6 *buf) {
    repack_q6k(p, rb, rows, b0, nbk, buf);
}

TGT static void gemm_q6_k(const void *w, size_t row_bytes, int64_t n, const tern_q8_block *a, int64_t m,
                          float *out, int64_t ldo, int64_t r0, int64_t r1) {
    pblock6 buf[KC] __attribute__((aligned(64)));
    const int64_t nab = n / TERN_QK;
    for (int64_t p0 = r0; p0 < r1; p0 += PANEL6) {
        int nr = r1 - p0 < PANEL6 ? (int)(r1 - p0) : PANEL6;
        __mmask16 rows = (__mmask16)((1u << nr) - 1);
        const uint8_t *p = (const uint8_t *)w + (size_t)p0 * row_bytes;
        for (int64_t kb = 0; kb < nab; kb += KC) {
            int nbk = nab - kb < KC ? (int)(nab - kb) : KC;
            if (p0 + 2 * PANEL6 < r1) {
                const uint8_t *q = p + (size_t)(2 * PANEL6) * row_bytes;
                size_t lo = (size_t)kb * row_bytes / (size_t)nab, hi = (size_t)(kb + nbk) * row_bytes / (size_t)nab;
                int nrp = r1 - p0 - 2 * PANEL6 < PANEL6 ? (int)(r1 - p0 - 2 * PANEL6) : PANEL6;
                for (int r = 0; r < nrp; r++)
                    for (size_t o = lo; o < hi; o += 64) _mm_prefetch((const char *)(q + (size_t)r * row_bytes + o), _MM_HINT_T1);
            }
            rp_q6_k(p, row_bytes, rows, kb, nbk, buf);
            for (int64_t i = 0; i < m; i += 8) {
                int mt = m - i < 8 ? (int)(m - i) : 8;
                qtiles6[mt - 1](buf, nbk, a + i * nab + kb, nab, out + i * ldo + p0, ldo, rows, kb == 0);
            }
        }
    }
}

/* Returns 0 for types it does not cover (the caller then uses its row kernels). */
TGT int tern_avx512_gemm_q(int type, const void *w, size_t row_bytes, int64_t n, const tern_q8_block *a, int64_t m,
                           float *out, int64_t ldo, int64_t r0, int64_t r1) {
    void (*rp)(const uint8_t *, size_t, __mmask16, int64_t, int, pblock *);
    switch (type) {
    case TERN_Q4_0: rp = rp_q4_0; break;
    case TERN_Q4_1: rp = rp_q4_1; break;
    case TERN_Q5_0: rp = rp_q5_0; break;
    case TERN_Q5_1: rp = rp_q5_1; break;
    case TERN_Q8_0: rp = rp_q8_0; break;
    case TERN_Q4_K: rp = rp_q4_k; break;
    case TERN_Q5_K: rp = rp_q5_k; break;
    case TERN_Q6_K: rp = NULL; break;
    default: return 0;
    }
    /* the gather offsets are 32-bit */
    if (row_bytes > (size_t)INT32_MAX / PANEL) return 0;
    if (!rp) { gemm_q6_k(w, row_bytes, n, a, m, out, ldo, r0, r1); return 1; }
    pblock buf[KC] __attribute__((aligned(64)));
    const int64_t nab = n / TERN_QK;
    for (int64_t p0 = r0; p0 < r1; p0 += PANEL) {
        int nr = r1 - p0 < PANEL ? (int)(r1 - p0) : PANEL;
        __mmask16 rows = (__mmask16)((1u << nr) - 1);
        const uint8_t *p = (const uint8_t *)w + (size_t)p0 * row_bytes;
        for (int64_t kb = 0; kb < nab; kb += KC) {
            int nbk = nab - kb < KC ? (int)(nab - kb) : KC;
            /* gathers stall on DRAM misses: pull a later panel's chunk towards L2 meanwhile */
            if (p0 + PF_DIST * PANEL < r1) {
                const uint8_t *q = p + (size_t)(PF_DIST * PANEL) * row_bytes;
                size_t lo = (size_t)kb * row_bytes / (size_t)nab, hi = (size_t)(kb + nbk) * row_bytes / (size_t)nab;
                int nrp = r1 - p0 - PF_DIST * PANEL < PANEL ? (int)(r1 - p0 - PF_DIST * PANEL) : PANEL;
                for (int r = 0; r < nrp; r++)
                    for (size_t o = lo; o < hi; o += 64) _mm_prefetch((const char *)(q + (size_t)r * row_bytes + o), PF_HINT);
            }
            rp(p, row_bytes, rows, kb, nbk, buf);
            for (int64_t i = 0; i < m; i += 8) {
                int mt = m - i < 8 ? (int)(m - i) : 8;
                qtiles[mt - 1](buf, nbk, a + i * nab + kb, nab, out + i * ldo + p0, ldo, rows, kb == 0);
            }
        }
    }
    return 1;
}

/* ---------- float weights: 4 weight rows x 4 activation rows per register tile ---------- */

INL __m512 fload(const int type, const void *row, int64_t j, __mmask16 mask) {
    if (type == TERN_F32) return _mm512_maskz_loadu_ps(mask, (const float *)row + j);
    __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)row + j);
    if (type == TERN_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 vectors -> one: lane v = sum of the lanes of v[v]. */
INL __m512 hsum16(__m512 *v) {
    __m512 p[8], q[4];
    UNROLL for (int i = 0; i < 8; i++)
        p[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    UNROLL for (int i = 0; i < 4; i++)
        q[i] = _mm512_add_ps(_mm512_shuffle_ps(p[2 * i], p[2 * i + 1], 0x44), _mm512_shuffle_ps(p[2 * i], p[2 * i + 1], 0xee));
    __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(q[0], q[1], 0x44), _mm512_shuffle_f32x4(q[0], q[1], 0xee));
    __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(q[2], q[3], 0x44), _mm512_shuffle_f32x4(q[2], q[3], 0xee));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xdd));
}

/* Rows w[0..3] (stride rb) against activation rows x[0..3] (stride n); res lane 4u + t = row u . act t. */
INL __m512 ftile(const int type, const uint8_t *w0, const uint8_t *w1, const uint8_t *w2, const uint8_t *w3,
                 const float *x0, const float *x1, const float *x2, const float *x3, int64_t n) {
    __m512 acc[16];
    UNROLL for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
        __mmask16 k = n - j >= 16 ? 0xffff : (__mmask16)((1u << (n - j)) - 1);
        __m512 w[4] = {fload(type, w0, j, k), fload(type, w1, j, k), fload(type, w2, j, k), fload(type, w3, j, k)};
        __m512 x[4] = {_mm512_maskz_loadu_ps(k, x0 + j), _mm512_maskz_loadu_ps(k, x1 + j),
                       _mm512_maskz_loadu_ps(k, x2 + j), _mm512_maskz_loadu_ps(k, x3 + j)};
        UNROLL for (int u = 0; u < 4; u++)
            UNROLL for (int t = 0; t < 4; t++) acc[4 * u + t] = _mm512_fmadd_ps(w[u], x[t], acc[4 * u + t]);
    }
    return hsum16(acc);
}

#define FT(NAME, TYPE) TGT static __m512 NAME(const uint8_t *w0, const uint8_t *w1, const uint8_t *w2, const uint8_t *w3, \
        const float *x0, const float *x1, const float *x2, const float *x3, int64_t n) { \
        return ftile(TYPE, w0, w1, w2, w3, x0, x1, x2, x3, n); }
FT(ft_f32, TERN_F32) FT(ft_f16, TERN_F16) FT(ft_bf16, TERN_BF16)

TGT int tern_avx512_gemm_f(int type, const void *w, size_t row_bytes, int64_t n, const float *x, int64_t m,
                           float *out, int64_t ldo, int64_t r0, int64_t r1) {
    __m512 (*ft)(const uint8_t *, const uint8_t *, const uint8_t *, const uint8_t *,
                 const float *, const float *, const float *, const float *, int64_t);
    switch (type) {
    case TERN_F32: ft = ft_f32; break;
    case TERN_F16: ft = ft_f16; break;
    case TERN_BF16: ft = ft_bf16; break;
    default: return 0;
    }
    /* a chunk of weight rows (~16 KB) meets every activation tile while it sits in L1 */
    int64_t chunk = ((int64_t)(16384 / (row_bytes + 1)) + 4) & ~(int64_t)3;
    for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
        int64_t c1 = c0 + chunk < r1 ? c0 + chunk : r1;
        for (int64_t i = 0; i < m; i += 4) {
            /* tails re-use the last valid row / activation; those results are not stored */
            const float *xs[4];
            for (int t = 0; t < 4; t++) xs[t] = x + (i + t < m ? i + t : m - 1) * n;
            for (int64_t r = c0; r < c1; r += 4) {
                if (i == 0 && r + 8 < r1) {
                    /* first pass over these rows: they come from L3/DRAM, and four interleaved streams defeat the
                       hardware prefetcher, so fetch the rows two tiles ahead */
                    const uint8_t *q = (const uint8_t *)w + (size_t)(r + 8) * row_bytes;
                    size_t len = (size_t)(r1 - r - 8 < 4 ? r1 - r - 8 : 4) * row_bytes;
                    for (size_t o = 0; o < len; o += 64) _mm_prefetch((const char *)(q + o), _MM_HINT_T0);
                }
                const uint8_t *ws[4];
                for (int u = 0; u < 4; u++) ws[u] = (const uint8_t *)w + (size_t)(r + u < c1 ? r + u : c1 - 1) * row_bytes;
                float res[16];
                _mm512_storeu_ps(res, ft(ws[0], ws[1], ws[2], ws[3], xs[0], xs[1], xs[2], xs[3], n));
                for (int u = 0; u < 4 && r + u < c1; u++)
                    for (int t = 0; t < 4 && i + t < m; t++) out[(i + t) * ldo + r + u] = res[4 * u + t];
            }
        }
    }
    return 1;
}

#endif
