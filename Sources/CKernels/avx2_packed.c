/* AVX2 products over load-time packed weights (layout in packed.c), for CPUs without AVX-512 VNNI. A 64-byte
   vector of a panel holds 4 consecutive quants of each of 16 rows, so its low half is rows 0-7 and its high half
   rows 8-15: one 256-bit load feeds vpmaddubsw for 8 weight rows against 4 activation bytes broadcast to every
   lane. Summing up to 8 such products in int16 before widening amortises vpmaddwd, the int->float conversion
   and the scale FMA over 8 rows, where the row kernels in avx2.c pay them per row.

   Arithmetic: the integer block sums are exact and each output's float chain is, operation for operation,
   that of scalar_matmul_packed (packed.c) and avx512_packed.c: acc = fma(float(s), d' * a.d, acc), then
   acc = fma(o, a.s, acc) (Q6_K: acc = fma(fma(i0, d0, i1 * d1), a.d, acc)), block after block. So results do
   not depend on m, on the tile an activation row lands in, or on the row range, and they equal the other
   packed readers bit for bit. Covers every packable type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K);
   returns 0 for any other. Boundaries: the layout is packed.c's (shared with avx512_packed.c and the portable
   reader, so it is read here, never changed); dispatch between paths is packed.c's tern_matmul_packed. */
#include "kernels_internal.h"

#ifdef TERN_X86
#include "avx2_inline.h"
#define UNROLL _Pragma("GCC unroll 16")

#ifndef PFD
#define PFD 8192 /* bytes ahead in the packed stream; a matrix larger than L2 is otherwise latency-bound */
#endif
/* KCP: 32-value blocks per pass when several activation tiles share a panel (KCP x 256..512 B stays in L1) */
/* MTM: activation rows per tile when m > 2 (5 x (accumulator + int16 sum) + weights fit the 16 ymm registers
   best: measured against 4 and 6) */
/* Q8S_ROWS: most activation rows of the split Q8_0 path (its stack buffer is Q8S_ROWS x KCP x 64 B) */
enum { PR = TERN_PACK_ROWS, KCP = 32, MTM = 5, Q8S_ROWS = 16 };


/* 8 row values per half (h) of a 16-entry per-row array of halves / bytes */
INL __m256 halves8(const uint8_t *p, int h) { return _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(p + 16 * h))); }
INL __m256 u8x8(const uint8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p))); }
INL __m256 s8x8(const uint8_t *p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p))); }

/* 0x10 in byte i where bit i of the 32-bit mask at p is set: the fifth bit of 4 values x 8 rows */
INL __m256i bits16(const uint8_t *p) {
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)tern_rd32(p)),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(0x10));
}

/* lanes past the matrix's last row are never written: out may end there or hold the caller's other data */
INL __m256 acc_load(const float *p, int nv) {
    if (nv >= 8) return _mm256_loadu_ps(p);
    __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32(nv), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_maskload_ps(p, mk);
}
INL void acc_store(float *p, int nv, __m256 v) {
    if (nv >= 8) { _mm256_storeu_ps(p, v); return; }
    __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32(nv), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(p, mk, v);
}

/* 4/5-bit block k (of 4) of half hh: the low nibbles (values 4k..4k+3) and the high ones (4k+16..) of 8 rows,
   with the fifth bits or'ed in for Q5_0 / Q5_1 (shared by tile32 and expand_q5) */
INL void q45_values(const uint8_t *bw, int hh, int k, const int q5, __m256i *l, __m256i *u) {
    const __m256i lo4 = _mm256_set1_epi8(0x0f);
    const __m256i v = _mm256_load_si256((const __m256i *)(bw + 64 * k + 32 * hh));
    *l = _mm256_and_si256(v, lo4);
    *u = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
    if (q5) {
        *l = _mm256_or_si256(*l, bits16(bw + 256 + 8 * k + 4 * hh));
        *u = _mm256_or_si256(*u, bits16(bw + 256 + 8 * (k + 4) + 4 * hh));
    }
}

/* block k's products with MT activation rows into the int16 sums s16: 4-bit values take 8 products per sum (the
   caller widens after k = 3); 5-bit ones (pairs up to 7874) 4, so they widen into s after every second k */
INL void q45_products(const int MT, const int q5, int k, __m256i l, __m256i u, const tern_q8_block *ab, int64_t astride,
                      __m256i *s16, __m256i *s) {
    const __m256i one = _mm256_set1_epi16(1);
    UNROLL for (int t = 0; t < MT; t++) {
        __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(l, bcast(ab + t * astride, k)),
                                     _mm256_maddubs_epi16(u, bcast(ab + t * astride, k + 4)));
        s16[t] = (q5 ? k % 2 : k) ? _mm256_add_epi16(s16[t], p) : p;
        if (q5 && k == 1) s[t] = _mm256_madd_epi16(s16[t], one);
        if (q5 && k == 3) s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(s16[t], one));
    }
}

/* MT activation rows x NH halves (8 weight rows each, starting at half h0) of one panel, over blocks [0, nbk)
   of pw/ps (already offset to the first block); adds into (or, when first, stores to) out[t * ldo + 8h + lane].
   nv[h] = valid rows in half h. Q4_0 / Q4_1 / Q8_0. */
INL void tile32(const int type, const int MT, const int NH, const uint8_t *pw, const uint8_t *ps, int h0, int nbk,
                const tern_q8_block *a, int64_t astride, float *out, int64_t ldo, const int *nv, int first, int pf) {
    const int q8 = type == TERN_Q8_0, q5 = type == TERN_Q5_0 || type == TERN_Q5_1;
    const int hasm = type == TERN_Q4_1 || type == TERN_Q5_1;
    const size_t wb = q8 ? 512 : q5 ? 320 : 256, sb = hasm ? 64 : 32;
    const __m256i lo4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);
    __m256 acc[2][MTM];
    UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++)
        acc[h][t] = first ? _mm256_setzero_ps() : acc_load(out + t * ldo + 8 * (h0 + h), nv[h]);
    for (int b = 0; b < nbk; b++) {
        const uint8_t *bw = pw + (size_t)b * wb, *bs = ps + (size_t)b * sb;
        /* panels are consecutive, so one linear look-ahead covers scales and the next panels too; the second
           half's pass finds the lines already there */
        if (pf) for (int k = 0; k < (int)(wb / 64); k++) _mm_prefetch((const char *)(bw + PFD + 64 * k), _MM_HINT_T0);
        __m256i s[2][MTM];
        if (q8) {
            /* u = 16 * hi + lo with nibbles, so neither int16 sum can saturate (8 x 2 x 15 x 127 < 32767) */
            __m256i sh[2][MTM];
            UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++)
                s[h][t] = sh[h][t] = _mm256_setzero_si256();
            UNROLL for (int k = 0; k < 8; k++) UNROLL for (int h = 0; h < NH; h++) {
                __m256i v = _mm256_load_si256((const __m256i *)(bw + 64 * k + 32 * (h0 + h)));
                __m256i l = _mm256_and_si256(v, lo4), u = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
                UNROLL for (int t = 0; t < MT; t++) {
                    __m256i x = bcast(a + t * astride + b, k);
                    s[h][t] = _mm256_add_epi16(s[h][t], _mm256_maddubs_epi16(l, x));
                    sh[h][t] = _mm256_add_epi16(sh[h][t], _mm256_maddubs_epi16(u, x));
                }
            }
            UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++)
                s[h][t] = _mm256_add_epi32(_mm256_madd_epi16(s[h][t], one), _mm256_madd_epi16(sh[h][t], sixteen));
        } else {
            __m256i s16[2][MTM];
            UNROLL for (int k = 0; k < 4; k++) UNROLL for (int h = 0; h < NH; h++) {
                __m256i l, u;
                q45_values(bw, h0 + h, k, q5, &l, &u);
                q45_products(MT, q5, k, l, u, a + b, astride, s16[h], s[h]);
            }
            if (!q5) UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++) s[h][t] = _mm256_madd_epi16(s16[h][t], one);
        }
        UNROLL for (int h = 0; h < NH; h++) {
            __m256 d = halves8(bs, h0 + h);
            __m256 o = hasm ? halves8(bs + 32, h0 + h) : _mm256_mul_ps(d, _mm256_set1_ps(q8 ? -128.0f : q5 ? -16.0f : -8.0f));
            UNROLL for (int t = 0; t < MT; t++) {
                const tern_q8_block *ab = a + t * astride + b;
                acc[h][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h][t]), _mm256_mul_ps(d, _mm256_set1_ps(ab->d)), acc[h][t]);
                acc[h][t] = _mm256_fmadd_ps(o, _mm256_set1_ps(ab->s), acc[h][t]);
            }
        }
    }
    UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++)
        acc_store(out + t * ldo + 8 * (h0 + h), nv[h], acc[h][t]);
}

/* Q8_0 with activations split once per product (q8_split below) instead of weights split per use: x = 16 xh + xl
   with xl, xh in [-8, 8], so a pair of u * xl or u * xh products (u = q + 128 <= 255) is at most 4080 in size and
   eight k's sum in int16 without saturating; the weight vector goes to vpmaddubsw as loaded. Per weight vector
   and activation row that is two vpmaddubsw and two adds, with no nibble masks or shifts (tile32's q8 loop also
   ran out of registers from 4 rows on and kept the split weights on the stack). The integer block sums equal
   tile32's, so the float chain and the results are the same bits. */
typedef struct { int8_t lo[32], hi[32]; } q8_split;

INL void split_q8(const tern_q8_block *a, q8_split *x) {
    __m256i q = _mm256_loadu_si256((const __m256i *)a->q), eight = _mm256_set1_epi8(8), lo4 = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_sub_epi8(_mm256_and_si256(_mm256_add_epi8(q, eight), lo4), eight); /* wraps harmlessly */
    /* hi = floor(q / 16) + (bit 3 of q): floor(q / 16) = ((q ^ 0x80) >> 4) - 8 on bytes */
    __m256i fl = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(_mm256_xor_si256(q, _mm256_set1_epi8((char)0x80)), 4), lo4), eight);
    __m256i b3 = _mm256_and_si256(_mm256_srli_epi16(q, 3), _mm256_set1_epi8(1));
    _mm256_store_si256((__m256i *)x->lo, lo);
    _mm256_store_si256((__m256i *)x->hi, _mm256_add_epi8(fl, b3));
}

INL void tile8(const int MT, const uint8_t *pw, const uint8_t *ps, int h0, int nbk, const q8_split *x, int64_t xstride,
               const tern_q8_block *a, int64_t astride, float *out, int64_t ldo, const int *nv, int first, int pf) {
    const __m256i one = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);
    __m256 acc[MTM];
    UNROLL for (int t = 0; t < MT; t++) acc[t] = first ? _mm256_setzero_ps() : acc_load(out + t * ldo + 8 * h0, nv[0]);
    for (int b = 0; b < nbk; b++) {
        const uint8_t *bw = pw + (size_t)b * 512;
        if (pf) for (int k = 0; k < 8; k++) _mm_prefetch((const char *)(bw + PFD + 64 * k), _MM_HINT_T0);
        __m256i sl[MTM], sh[MTM];
        UNROLL for (int k = 0; k < 8; k++) {
            __m256i v = _mm256_load_si256((const __m256i *)(bw + 64 * k + 32 * h0));
            UNROLL for (int t = 0; t < MT; t++) {
                const q8_split *xb = x + t * xstride + b;
                __m256i pl = _mm256_maddubs_epi16(v, _mm256_set1_epi32((int)tern_rd32((const uint8_t *)xb->lo + 4 * k)));
                __m256i ph = _mm256_maddubs_epi16(v, _mm256_set1_epi32((int)tern_rd32((const uint8_t *)xb->hi + 4 * k)));
                sl[t] = k ? _mm256_add_epi16(sl[t], pl) : pl;
                sh[t] = k ? _mm256_add_epi16(sh[t], ph) : ph;
            }
        }
        __m256 d = halves8(ps + (size_t)b * 32, h0), o = _mm256_mul_ps(d, _mm256_set1_ps(-128.0f));
        UNROLL for (int t = 0; t < MT; t++) {
            const tern_q8_block *ab = a + t * astride + b;
            __m256i s = _mm256_add_epi32(_mm256_madd_epi16(sl[t], one), _mm256_madd_epi16(sh[t], sixteen));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(d, _mm256_set1_ps(ab->d)), acc[t]);
            acc[t] = _mm256_fmadd_ps(o, _mm256_set1_ps(ab->s), acc[t]);
        }
    }
    UNROLL for (int t = 0; t < MT; t++) acc_store(out + t * ldo + 8 * h0, nv[0], acc[t]);
}

/* Q5_0 and Q5_1 with the weights expanded once per panel chunk instead of once per activation tile: the nibbles with
   their fifth bits or'ed in (tile32's q5 preparation: a mask, a shift, two bit expansions of five operations
   each) go to an L1 buffer, x[half][block][k][l, u], that every tile of a prompt pass or a batched step then
   loads as it is. The vectors, the integer sums and the float chain are tile32's, so the results are the same
   bits; only the preparation is shared by all tiles of the chunk. */
INL void expand_q5(const uint8_t *pw, int nbk, __m256i *x) {
    for (int b = 0; b < nbk; b++) {
        const uint8_t *bw = pw + (size_t)b * 320;
        for (int k = 0; k < 5; k++) _mm_prefetch((const char *)(bw + PFD + 64 * k), _MM_HINT_T0);
        UNROLL for (int h = 0; h < 2; h++) UNROLL for (int k = 0; k < 4; k++) {
            __m256i *d = x + ((size_t)(h * nbk + b) * 4 + k) * 2;
            q45_values(bw, h, k, 1, d, d + 1);
        }
    }
}

/* Q4_K: as tile32 per sub-block j (one nibble of pair j / 2's 8 vectors), d' = d * scale_j, o = -dmin * min_j.
   nbk counts 32-value blocks (a multiple of 8). */
INL void tilek(const int type, const int MT, const int NH, const uint8_t *pw, const uint8_t *ps, int h0, int nbk,
               const tern_q8_block *a, int64_t astride, float *out, int64_t ldo, const int *nv, int first, int pf) {
    const __m256i lo4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi16(1);
    __m256 acc[2][MTM];
    UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++)
        acc[h][t] = first ? _mm256_setzero_ps() : acc_load(out + t * ldo + 8 * (h0 + h), nv[h]);
    const int q5 = type == TERN_Q5_K;
    for (int sbi = 0; sbi < nbk / 8; sbi++) {
        const uint8_t *sw = pw + (size_t)sbi * (q5 ? 2560 : 2048), *bs = ps + (size_t)sbi * 320;
        if (pf && q5) for (int k = 0; k < 8; k++) _mm_prefetch((const char *)(sw + 2048 + PFD + 64 * k), _MM_HINT_T0);
        __m256 d[2], dmin[2];
        UNROLL for (int h = 0; h < NH; h++) {
            d[h] = halves8(bs, h0 + h);
            dmin[h] = _mm256_sub_ps(_mm256_setzero_ps(), halves8(bs + 32, h0 + h));
        }
        for (int p = 0; p < 4; p++) {
          const uint8_t *bw = sw + 512 * p;
          if (pf) for (int k = 0; k < 8; k++) _mm_prefetch((const char *)(bw + PFD + 64 * k), _MM_HINT_T0);
          /* both nibbles of a pair in turn (the second re-reads the pair from L1) */
          UNROLL for (int e = 0; e < 2; e++) {
            const int j = 2 * p + e;
            const tern_q8_block *a0 = a + 8 * sbi + j;
            /* int16 sums of 8 products (4-bit) or 4 (5-bit: pairs up to 7874), widened to s */
            __m256i s[2][MTM], s16[2][MTM];
            UNROLL for (int k = 0; k < 8; k++) UNROLL for (int h = 0; h < NH; h++) {
                __m256i v = _mm256_load_si256((const __m256i *)(bw + 64 * k + 32 * (h0 + h)));
                if (e) v = _mm256_srli_epi16(v, 4);
                v = _mm256_and_si256(v, lo4);
                if (q5) v = _mm256_or_si256(v, bits16(sw + 2048 + 8 * (8 * j + k) + 4 * (h0 + h)));
                UNROLL for (int t = 0; t < MT; t++) {
                    __m256i p = _mm256_maddubs_epi16(v, bcast(a0 + t * astride, k));
                    s16[h][t] = (q5 ? k % 4 : k) ? _mm256_add_epi16(s16[h][t], p) : p;
                    if (q5 && k == 3) s[h][t] = _mm256_madd_epi16(s16[h][t], one);
                    if (q5 && k == 7) s[h][t] = _mm256_add_epi32(s[h][t], _mm256_madd_epi16(s16[h][t], one));
                }
            }
            if (!q5) UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++) s[h][t] = _mm256_madd_epi16(s16[h][t], one);
            UNROLL for (int h = 0; h < NH; h++) {
                const uint8_t *sc = bs + 64 + 16 * j + 8 * (h0 + h), *mn = bs + 192 + 16 * j + 8 * (h0 + h);
                __m256 dj = _mm256_mul_ps(d[h], u8x8(sc)), oj = _mm256_mul_ps(dmin[h], u8x8(mn));
                UNROLL for (int t = 0; t < MT; t++) {
                    const tern_q8_block *ab = a0 + t * astride;
                    acc[h][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[h][t]),
                                                _mm256_mul_ps(dj, _mm256_set1_ps(ab->d)), acc[h][t]);
                    acc[h][t] = _mm256_fmadd_ps(oj, _mm256_set1_ps(ab->s), acc[h][t]);
                }
            }
          }
        }
    }
    UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++)
        acc_store(out + t * ldo + 8 * (h0 + h), nv[h], acc[h][t]);
}

/* Q6_K block k (of 4) of half hh: the signed values u - 32 of the low (l) and high (u) 16 values, from the nibble
   vector and the high-pair vector (shared by tile6 and expand_q6) */
INL void q6_values(const uint8_t *bw, int hh, int k, __m256i *l, __m256i *u) {
    const __m256i lo4 = _mm256_set1_epi8(0x0f), m3 = _mm256_set1_epi8(3), mc = _mm256_set1_epi8(0x0c), b32 = _mm256_set1_epi8(32);
    __m256i H = _mm256_load_si256((const __m256i *)(bw + 256 + 64 * (k / 2) + 32 * hh));
    if (k & 1) H = _mm256_srli_epi16(H, 4);
    const __m256i v = _mm256_load_si256((const __m256i *)(bw + 64 * k + 32 * hh));
    *l = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(v, lo4), _mm256_slli_epi16(_mm256_and_si256(H, m3), 4)), b32);
    *u = _mm256_sub_epi8(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(v, 4), lo4),
                                         _mm256_slli_epi16(_mm256_and_si256(H, mc), 2)), b32);
}

/* the products of block k's values with MT activation rows, into the int16 sums i0 (low 16) and i1 (high 16) */
INL void q6_products(const int MT, int k, __m256i l, __m256i u, const tern_q8_block *ab, int64_t astride, __m256i *i0,
                     __m256i *i1) {
    const __m256i al = _mm256_sign_epi8(l, l), au = _mm256_sign_epi8(u, u);
    UNROLL for (int t = 0; t < MT; t++) {
        __m256i x0 = _mm256_maddubs_epi16(al, _mm256_sign_epi8(bcast(ab + t * astride, k), l));
        __m256i x1 = _mm256_maddubs_epi16(au, _mm256_sign_epi8(bcast(ab + t * astride, k + 4), u));
        i0[t] = k ? _mm256_add_epi16(i0[t], x0) : x0;
        i1[t] = k ? _mm256_add_epi16(i1[t], x1) : x1;
    }
}

/* a block's sums into the accumulators: each half's scale d times its 16-value scales, times the activation scale */
INL void q6_block_end(const int MT, const uint8_t *bs, int jb, int hh, const __m256i *i0, const __m256i *i1,
                      const tern_q8_block *ab, int64_t astride, __m256 *acc) {
    const __m256i one = _mm256_set1_epi16(1);
    __m256 d = halves8(bs, hh);
    __m256 d0 = _mm256_mul_ps(d, s8x8(bs + 32 + 32 * jb + 8 * hh)), d1 = _mm256_mul_ps(d, s8x8(bs + 48 + 32 * jb + 8 * hh));
    UNROLL for (int t = 0; t < MT; t++) {
        __m256 f0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(i0[t], one));
        __m256 f1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(i1[t], one));
        __m256 f = _mm256_fmadd_ps(f0, d0, _mm256_mul_ps(f1, d1));
        acc[t] = _mm256_fmadd_ps(f, _mm256_set1_ps((ab + t * astride)->d), acc[t]);
    }
}

/* Q6_K: 6-bit u from a nibble vector and a high-pair vector, made signed (u - 32) so the offset needs no
   activation sums: |u - 32| x (a signed like u - 32) keeps a pair within 2 x 32 x 127, so the 4 groups of a
   16-value half (one Q6_K scale each) share one int16 sum. */
INL void tile6(const int MT, const int NH, const uint8_t *pw, const uint8_t *ps, int h0, int nbk,
               const tern_q8_block *a, int64_t astride, float *out, int64_t ldo, const int *nv, int first, int pf) {
    __m256 acc[2][MTM];
    UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++)
        acc[h][t] = first ? _mm256_setzero_ps() : acc_load(out + t * ldo + 8 * (h0 + h), nv[h]);
    for (int b = 0; b < nbk; b++) {
        const uint8_t *bw = pw + (size_t)b * 384, *bs = ps + (size_t)(b / 8) * 288;
        if (pf) for (int k = 0; k < 6; k++) _mm_prefetch((const char *)(bw + PFD + 64 * k), _MM_HINT_T0);
        UNROLL for (int h = 0; h < NH; h++) {
            __m256i i0[MTM], i1[MTM];
            UNROLL for (int k = 0; k < 4; k++) {
                __m256i l, u;
                q6_values(bw, h0 + h, k, &l, &u);
                q6_products(MT, k, l, u, a + b, astride, i0, i1);
            }
            q6_block_end(MT, bs, b % 8, h0 + h, i0, i1, a + b, astride, acc[h]);
        }
    }
    UNROLL for (int h = 0; h < NH; h++) UNROLL for (int t = 0; t < MT; t++)
        acc_store(out + t * ldo + 8 * (h0 + h), nv[h], acc[h][t]);
}

/* Q6_K with more than one activation tile: as expand_q5, the signed 6-bit values u - 32 of a chunk are
   made once (tile6's per-tile preparation: two loads, eleven shifts, masks and ors, two subtractions) into
   x[half][block][k][low 16 values, high 16 values]; the tiles take their absolute values and signs as tile6 does,
   so the products, the integer sums and the float chain are tile6's. */
INL void expand_q6(const uint8_t *pw, int nbk, __m256i *x) {
    for (int b = 0; b < nbk; b++) {
        const uint8_t *bw = pw + (size_t)b * 384;
        for (int k = 0; k < 6; k++) _mm_prefetch((const char *)(bw + PFD + 64 * k), _MM_HINT_T0);
        UNROLL for (int h = 0; h < 2; h++) UNROLL for (int k = 0; k < 4; k++) {
            __m256i *d = x + ((size_t)(h * nbk + b) * 4 + k) * 2;
            q6_values(bw, h, k, d, d + 1);
        }
    }
}

/* The activation tiles over an expanded chunk (expand_q5 for Q5_0 / Q5_1, expand_q6 for Q6_K): tile32's and tile6's
   products, integer sums and float chains, with the weight vectors loaded ready from x */
INL void tilex(const int type, const int MT, const __m256i *x, const uint8_t *ps, int h0, int nbk,
               const tern_q8_block *a, int64_t astride, float *out, int64_t ldo, const int *nv, int first) {
    __m256 acc[MTM];
    UNROLL for (int t = 0; t < MT; t++) acc[t] = first ? _mm256_setzero_ps() : acc_load(out + t * ldo + 8 * h0, nv[0]);
    const __m256i *xh = x + (size_t)h0 * nbk * 8;
    for (int b = 0; b < nbk; b++) {
        /* Q6_K: the low and high 16 values' int16 sums; Q5: the int16 sums and their widened int32 ones */
        __m256i p0[MTM], p1[MTM];
        UNROLL for (int k = 0; k < 4; k++) {
            const __m256i l = _mm256_load_si256(xh + (size_t)b * 8 + 2 * k), u = _mm256_load_si256(xh + (size_t)b * 8 + 2 * k + 1);
            if (type == TERN_Q6_K) q6_products(MT, k, l, u, a + b, astride, p0, p1);
            else q45_products(MT, 1, k, l, u, a + b, astride, p0, p1);
        }
        if (type == TERN_Q6_K) {
            q6_block_end(MT, ps + (size_t)(b / 8) * 288, b % 8, h0, p0, p1, a + b, astride, acc);
            continue;
        }
        const uint8_t *bs = ps + (size_t)b * (type == TERN_Q5_1 ? 64 : 32);
        __m256 d = halves8(bs, h0), o = type == TERN_Q5_1 ? halves8(bs + 32, h0) : _mm256_mul_ps(d, _mm256_set1_ps(-16.0f));
        UNROLL for (int t = 0; t < MT; t++) {
            const tern_q8_block *ab = a + t * astride + b;
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p1[t]), _mm256_mul_ps(d, _mm256_set1_ps(ab->d)), acc[t]);
            acc[t] = _mm256_fmadd_ps(o, _mm256_set1_ps(ab->s), acc[t]);
        }
    }
    UNROLL for (int t = 0; t < MT; t++) acc_store(out + t * ldo + 8 * h0, nv[0], acc[t]);
}

typedef void (*tilefn)(const uint8_t *, const uint8_t *, int, int, const tern_q8_block *, int64_t, float *, int64_t,
                       const int *, int, int);
#define T32(NAME, TYPE, NH, MT) TGT static void NAME##_##NH##_##MT(const uint8_t *pw, const uint8_t *ps, int h0, \
        int nbk, const tern_q8_block *a, int64_t as, float *out, int64_t ldo, const int *nv, int first, int pf) { \
        tile32(TYPE, MT, NH, pw, ps, h0, nbk, a, as, out, ldo, nv, first, pf); }
#define TK(NAME, TYPE, NH, MT) TGT static void NAME##_##NH##_##MT(const uint8_t *pw, const uint8_t *ps, int h0, \
        int nbk, const tern_q8_block *a, int64_t as, float *out, int64_t ldo, const int *nv, int first, int pf) { \
        tilek(TYPE, MT, NH, pw, ps, h0, nbk, a, as, out, ldo, nv, first, pf); }
#define T6(NAME, UNUSED, NH, MT) TGT static void NAME##_##NH##_##MT(const uint8_t *pw, const uint8_t *ps, int h0, \
        int nbk, const tern_q8_block *a, int64_t as, float *out, int64_t ldo, const int *nv, int first, int pf) { \
        tile6(MT, NH, pw, ps, h0, nbk, a, as, out, ldo, nv, first, pf); }
#define SET(NAME, GEN, ARG) GEN(NAME, ARG, 1, 1) GEN(NAME, ARG, 1, 2) GEN(NAME, ARG, 1, 3) GEN(NAME, ARG, 1, 4) \
        GEN(NAME, ARG, 1, 5) GEN(NAME, ARG, 2, 1) GEN(NAME, ARG, 2, 2) \
        static const tilefn NAME[2][MTM] = {{NAME##_1_1, NAME##_1_2, NAME##_1_3, NAME##_1_4, NAME##_1_5}, \
                                            {NAME##_2_1, NAME##_2_2, NULL, NULL, NULL}};
typedef void (*tile8fn)(const uint8_t *, const uint8_t *, int, int, const q8_split *, int64_t, const tern_q8_block *,
                        int64_t, float *, int64_t, const int *, int, int);
#define T8(MT) TGT static void t_q8s_##MT(const uint8_t *pw, const uint8_t *ps, int h0, int nbk, const q8_split *x, \
        int64_t xs, const tern_q8_block *a, int64_t as, float *out, int64_t ldo, const int *nv, int first, int pf) { \
        tile8(MT, pw, ps, h0, nbk, x, xs, a, as, out, ldo, nv, first, pf); }
T8(1) T8(2) T8(3) T8(4) T8(5)
static const tile8fn t_q8s[MTM] = {t_q8s_1, t_q8s_2, t_q8s_3, t_q8s_4, t_q8s_5};
typedef void (*tilexfn)(const __m256i *, const uint8_t *, int, int, const tern_q8_block *, int64_t, float *, int64_t,
                        const int *, int);
#define TX(NAME, TYPE, MT) TGT static void NAME##_##MT(const __m256i *x, const uint8_t *ps, int h0, int nbk, \
        const tern_q8_block *a, int64_t as, float *out, int64_t ldo, const int *nv, int first) { \
        tilex(TYPE, MT, x, ps, h0, nbk, a, as, out, ldo, nv, first); }
#define TXSET(NAME, TYPE) TX(NAME, TYPE, 1) TX(NAME, TYPE, 2) TX(NAME, TYPE, 3) TX(NAME, TYPE, 4) TX(NAME, TYPE, 5) \
        static const tilexfn NAME[MTM] = {NAME##_1, NAME##_2, NAME##_3, NAME##_4, NAME##_5};
TXSET(t_q5x, TERN_Q5_0)
TXSET(t_q51x, TERN_Q5_1)
TXSET(t_q6x, TERN_Q6_K)
SET(t_q4_0, T32, TERN_Q4_0)
SET(t_q4_1, T32, TERN_Q4_1)
SET(t_q8_0, T32, TERN_Q8_0)
SET(t_q5_0, T32, TERN_Q5_0)
SET(t_q5_1, T32, TERN_Q5_1)
SET(t_q4_k, TK, TERN_Q4_K)
SET(t_q5_k, TK, TERN_Q5_K)
SET(t_q6_k, T6, 0)

TGT int tern_avx2_matmul_packed(int type, const void *packed, int64_t rows, int64_t n, const tern_q8_block *a,
                                int64_t m, float *out, int64_t ldo, int64_t r0, int64_t r1) {
    const tilefn (*fns)[MTM];
    switch (type) {
    case TERN_Q4_0: fns = t_q4_0; break;
    case TERN_Q4_1: fns = t_q4_1; break;
    case TERN_Q8_0: fns = t_q8_0; break;
    case TERN_Q5_0: fns = t_q5_0; break;
    case TERN_Q5_1: fns = t_q5_1; break;
    case TERN_Q4_K: fns = t_q4_k; break;
    case TERN_Q5_K: fns = t_q5_k; break;
    case TERN_Q6_K: fns = t_q6_k; break;
    default: return 0;
    }
    size_t so = 0, pb = tern_packed_panel_bytes(type, n, &so);
    size_t wb, sb;
    tern_packed_block_geometry(type, &wb, &sb);
    const int64_t nab = n / TERN_QK;
    (void)rows;
    /* Q8_0 against a few activation rows (decoding streams): the rows' chunk of KCP blocks is split once
       (q8_split) and meets every panel's chunk in turn. With n <= 32 KCP, as in Gemma 3's 262k-row output
       projection, that is one chunk and the panels stream in order; longer rows revisit the panels once per
       chunk, so the linear look-ahead would fetch the wrong lines and is left to the hardware. */
    if (type == TERN_Q8_0 && m > 2 && m <= Q8S_ROWS) {
        q8_split xs[Q8S_ROWS * KCP] __attribute__((aligned(32)));
        const int64_t nt = (m + MTM - 1) / MTM;
        for (int64_t kb = 0; kb < nab; kb += KCP) {
            const int nbk = nab - kb < KCP ? (int)(nab - kb) : KCP;
            for (int64_t i = 0; i < m; i++)
                for (int b = 0; b < nbk; b++) split_q8(a + i * nab + kb + b, xs + i * nbk + b);
            for (int64_t p0 = r0; p0 < r1; p0 += PR) {
                const int nr = r1 - p0 < PR ? (int)(r1 - p0) : PR;
                const int nv[2] = {nr < 8 ? nr : 8, nr - 8};
                const uint8_t *cw = (const uint8_t *)packed + (size_t)(p0 / PR) * pb + (size_t)kb * wb;
                const uint8_t *cs = (const uint8_t *)packed + (size_t)(p0 / PR) * pb + so + (size_t)kb * sb;
                for (int64_t ti = 0, i = 0; ti < nt; ti++) {
                    const int mt = (int)((m - i) / (nt - ti));
                    for (int h = 0; h < (nr > 8 ? 2 : 1); h++)
                        t_q8s[mt - 1](cw, cs, h, nbk, xs + i * nbk, nbk, a + i * nab + kb, nab, out + p0 + i * ldo, ldo,
                                      nv + h, kb == 0, nab <= KCP && i == 0 && h == 0);
                    i += mt;
                }
            }
        }
        return 1;
    }
    for (int64_t p0 = r0; p0 < r1; p0 += PR) {
        const int nr = r1 - p0 < PR ? (int)(r1 - p0) : PR;
        const int nv[2] = {nr < 8 ? nr : 8, nr - 8};
        const uint8_t *pw = (const uint8_t *)packed + (size_t)(p0 / PR) * pb, *ps = pw + so;
        float *o = out + p0;
        if (m <= 2) { /* decode: one pass, both halves in one loop, so each activation row has two independent FMA
                         chains and each packed byte is read once */
            if (nr > 8) fns[1][m - 1](pw, ps, 0, (int)nab, a, nab, o, ldo, nv, 1, 1);
            else fns[0][m - 1](pw, ps, 0, (int)nab, a, nab, o, ldo, nv, 1, 1);
            continue;
        }
        /* Q5_0, Q5_1 and Q6_K with more than one tile: expand the chunk once for all tiles (expand_q5, expand_q6) */
        if ((type == TERN_Q5_0 || type == TERN_Q5_1 || type == TERN_Q6_K) && m > MTM) {
            const tilexfn *tx = type == TERN_Q5_0 ? t_q5x : type == TERN_Q5_1 ? t_q51x : t_q6x;
            __m256i xq[2 * KCP * 8] __attribute__((aligned(32)));
            const int64_t nt = (m + MTM - 1) / MTM;
            for (int64_t kb = 0; kb < nab; kb += KCP) {
                const int nbk = nab - kb < KCP ? (int)(nab - kb) : KCP;
                const uint8_t *cw = pw + (size_t)kb * wb;
                /* panels, and the chunks of a panel, are read in memory order here (the Q8_0 split path above goes
                   chunk by chunk across panels), so the linear look-ahead always fetches what comes next */
                if (type != TERN_Q6_K) expand_q5(cw, nbk, xq);
                else expand_q6(cw, nbk, xq);
                for (int64_t ti = 0, i = 0; ti < nt; ti++) {
                    const int mt = (int)((m - i) / (nt - ti));
                    for (int h = 0; h < (nr > 8 ? 2 : 1); h++)
                        tx[mt - 1](xq, ps + (size_t)kb * sb, h, nbk, a + i * nab + kb, nab, o + i * ldo, ldo, nv + h, kb == 0);
                    i += mt;
                }
            }
            continue;
        }
        /* a chunk of the panel meets every tile of activation rows while it sits in L1; each tile's activation
           blocks stay in L1 for the second half */
        for (int64_t kb = 0; kb < nab; kb += KCP) { /* KCP is a multiple of 8: K-quant chunks are whole super-blocks */
            const int nbk = nab - kb < KCP ? (int)(nab - kb) : KCP;
            const uint8_t *cw = pw + (size_t)kb * wb;
            const uint8_t *cs = ps + (size_t)kb * sb; /* a K-quant super-block's scales are 8 x sb */
            /* tiles of at most MTM rows, as even as possible: a lone leftover row would run at a third the speed */
            const int64_t nt = (m + MTM - 1) / MTM;
            for (int64_t ti = 0, i = 0; ti < nt; ti++) {
                const int mt = (int)((m - i) / (nt - ti));
                for (int h = 0; h < (nr > 8 ? 2 : 1); h++)
                    fns[0][mt - 1](cw, cs, h, nbk, a + i * nab + kb, nab, o + i * ldo, ldo, nv + h, kb == 0, i == 0 && h == 0);
                i += mt;
            }
        }
    }
    return 1;
}

#endif
