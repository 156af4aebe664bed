/* AVX2 products of sparse matrices (tern_sparse.h). A stored chunk is turned into 32 signed bytes in a register
   — kept values in their columns, zeros elsewhere, expanded with one vpshufb whose control comes from a table
   of the mask's bytes — and meets its activation block with vpmaddubsw/vpmaddwd like a dense block. Dropped
   chunks (group sparsity) and empty chunks (bitmask) are never touched.

   Every output (weight row, activation row) has its own accumulator and sees the same operations in the same
   order whatever the tile it sits in: tiles of 4 weight rows serve one activation row (four independent
   chains hide the FMA latency while decoding), tiles of 2 weight rows x 4 activation rows reuse each decoded
   chunk four times while prefilling. */
#include <stdlib.h>
#include "include/tern_sparse.h"
#include "kernels_internal.h"
#include "sparse_internal.h"

#ifdef TERN_X86
#include "avx2_inline.h"

/* expand_table[b]: for each bit i of byte b, the number of set bits below i, or 0x80 (vpshufb's zero) where
   bit i is clear. Eight bytes per entry, one per column of the byte's 8 columns. */
static uint64_t expand_table[256];

__attribute__((constructor)) static void fill_expand_table(void) {
    for (int b = 0; b < 256; b++) {
        uint64_t e = 0;
        int rank = 0;
        for (int i = 0; i < 8; i++) {
            uint64_t v = (b >> i & 1) ? (uint64_t)rank++ : 0x80u;
            e |= v << (8 * i);
        }
        expand_table[b] = e;
    }
}

#define ONES64 0x0101010101010101ull

/* vpshufb control for a 32-bit mask: column p gets the rank of its value among the chunk's kept values
   (0..31), or a byte with the top bit set. base1..3: kept values before bytes 1..3 of the mask. */
INL __m256i expand_control(uint32_t mask, uint64_t base1, uint64_t base2, uint64_t base3) {
    return _mm256_setr_epi64x((long long)expand_table[mask & 255],
                              (long long)(expand_table[mask >> 8 & 255] + base1 * ONES64),
                              (long long)(expand_table[mask >> 16 & 255] + base2 * ONES64),
                              (long long)(expand_table[mask >> 24] + base3 * ONES64));
}

/* Sequential nibbles (value i in byte i/2, low nibble first) as signed bytes q - 8: values 0..15 in the low
   half, 16..31 in the high half. */
INL __m128i nibbles_lo(__m128i nb) {
    const __m128i m = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(nb, m), hi = _mm_and_si128(_mm_srli_epi16(nb, 4), m);
    return _mm_sub_epi8(_mm_unpacklo_epi8(lo, hi), _mm_set1_epi8(8));
}
INL __m128i nibbles_hi(__m128i nb) {
    const __m128i m = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(nb, m), hi = _mm_and_si128(_mm_srli_epi16(nb, 4), m);
    return _mm_sub_epi8(_mm_unpackhi_epi8(lo, hi), _mm_set1_epi8(8));
}

/* 2:4 chunk: 8 kept values in each 16-column half, so the 16 compact values fit one xmm and the high half's
   ranks (8..15) index the same copy. */
INL __m256i expand_nm24(const uint8_t *c) {
    uint32_t mask = tern_rd32(c);
    __m128i v = nibbles_lo(_mm_loadl_epi64((const __m128i *)(c + 6)));
    return _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(v), expand_control(mask, 4, 8, 12));
}

/* bitmask chunk with k = popcount(mask) values (reads 16 bytes from c + 6: the section's tail padding covers
   the last chunk): ranks 16..31 come from the second half of the compact values. */
INL __m256i expand_bitmask(const uint8_t *c, uint32_t mask) {
    __m128i nb = _mm_loadu_si128((const __m128i *)(c + 6));
    uint32_t p0 = (uint32_t)__builtin_popcount(mask & 0xff), p1 = (uint32_t)__builtin_popcount(mask & 0xffff);
    uint32_t p2 = (uint32_t)__builtin_popcount(mask & 0xffffff);
    __m256i ctrl = expand_control(mask, p0, p1, p2);
    __m256i r1 = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(nibbles_lo(nb)), ctrl);
    __m256i r2 = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(nibbles_hi(nb)), ctrl);
    /* bit 4 of a rank says "16..31"; shifted to bit 7 it picks r2 (zero columns are zero in both) */
    return _mm256_blendv_epi8(r1, r2, _mm256_slli_epi16(ctrl, 3));
}

INL __m256 dot_signed(__m256i w, __m256i a) {
    __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}
INL __m256 dot_unsigned(__m256i w, __m256i a) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1)));
}

/* One weight row's cursor through its stored chunks. */
typedef struct {
    const uint8_t *p;
    const uint16_t *idx;
} row_cursor;

/* The kernel body for RB weight rows x TB activation rows. LAYOUT_STEP decodes row j's next chunk into w
   (and d, m, the chunk number c) or sets `skip`. */
#define SPARSE_TILE(NAME, RB, TB, SIGNED, HAS_MIN, STEP)                                                        \
    INL void NAME(row_cursor *cur, int64_t steps, const tern_q8_block *a, int64_t chunks, float *out,            \
                  int64_t ldo, int64_t r) {                                                                      \
        __m256 acc[RB][TB];                                                                                      \
        float extra[RB][TB];                                                                                     \
        for (int j = 0; j < RB; j++)                                                                             \
            for (int t = 0; t < TB; t++) { acc[j][t] = _mm256_setzero_ps(); extra[j][t] = 0.0f; }                \
        for (int64_t k = 0; k < steps; k++) {                                                                    \
            for (int j = 0; j < RB; j++) {                                                                       \
                __m256i w; float d, mn = 0.0f; int64_t c; int skip = 0;                                          \
                STEP                                                                                             \
                (void)mn;                                                                                        \
                if (skip) continue;                                                                              \
                for (int t = 0; t < TB; t++) {                                                                   \
                    const tern_q8_block *ab = a + t * chunks + c;                                                \
                    __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);                                     \
                    __m256 p = SIGNED ? dot_signed(w, av) : dot_unsigned(w, av);                                 \
                    acc[j][t] = _mm256_fmadd_ps(p, _mm256_set1_ps(d * ab->d), acc[j][t]);                        \
                    if (HAS_MIN) extra[j][t] += mn * ab->s;                                                      \
                }                                                                                                \
            }                                                                                                    \
        }                                                                                                        \
        for (int j = 0; j < RB; j++)                                                                             \
            for (int t = 0; t < TB; t++) out[t * ldo + r + j] = hsum8(acc[j][t]) + extra[j][t];                 \
    }

#define STEP_Q4_0                                                                                                \
    c = *cur[j].idx++;                                                                                           \
    d = _cvtsh_ss(tern_rd16(cur[j].p));                                                                          \
    w = _mm256_sub_epi8(nibbles(cur[j].p + 2), _mm256_set1_epi8(8));                                        \
    cur[j].p += Q4_0_BYTES;
#define STEP_Q4_1                                                                                                \
    c = *cur[j].idx++;                                                                                           \
    d = _cvtsh_ss(tern_rd16(cur[j].p));                                                                          \
    mn = _cvtsh_ss(tern_rd16(cur[j].p + 2));                                                                     \
    w = nibbles(cur[j].p + 4);                                                                              \
    cur[j].p += Q4_1_BYTES;
#define STEP_Q8_0                                                                                                \
    c = *cur[j].idx++;                                                                                           \
    d = _cvtsh_ss(tern_rd16(cur[j].p));                                                                          \
    w = _mm256_loadu_si256((const __m256i *)(cur[j].p + 2));                                                     \
    cur[j].p += Q8_0_BYTES;
#define TILES(SUFFIX, SIGNED, HAS_MIN, STEP)                                                                     \
    SPARSE_TILE(tile41_##SUFFIX, 4, 1, SIGNED, HAS_MIN, STEP)                                                   \
    SPARSE_TILE(tile11_##SUFFIX, 1, 1, SIGNED, HAS_MIN, STEP)                                                   \
    SPARSE_TILE(tile24_##SUFFIX, 2, 4, SIGNED, HAS_MIN, STEP)                                                   \
    SPARSE_TILE(tile14_##SUFFIX, 1, 4, SIGNED, HAS_MIN, STEP)

TILES(q4_0, 1, 0, STEP_Q4_0)
TILES(q4_1, 0, 1, STEP_Q4_1)
TILES(q8_0, 1, 0, STEP_Q8_0)

typedef void (*tile_fn)(row_cursor *, int64_t, const tern_q8_block *, int64_t, float *, int64_t, int64_t);

INL row_cursor cursor_at(const tern_sparse_matrix *w, int64_t r, int bb) {
    row_cursor c = {tern_sparse_row_values(w, r, bb), (const uint16_t *)w->index + r * w->kept};
    return c;
}

/* ---------- 2:4 and bitmask matrices: the dense Q4_0 chain, 8 rows at a time ---------- */

/* Their chunks are Q4_0 blocks with the pruned values at q = 8 (zero), and they are computed as the packed dense
   readers compute Q4_0 (avx2_packed.c): per block, the exact integer s = sum(q * a) with unsigned q, then
   acc = fma(float(s), d * a.d, acc) and acc = fma(-8d, a.s, acc). An empty bitmask chunk is a block with d = 0,
   which changes nothing. So a row's outputs are bit for bit those of tern_matmul_packed over the decoded dense
   matrix, which is what prefill uses (below) — decode and prefill of the same tokens agree exactly. */

/* lane j of the result = the full sum of v[j]'s eight int32 lanes */
INL __m256i reduce8(const __m256i v[8]) {
    __m256i s0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    __m256i s1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(s0, s1, 0x20), _mm256_permute2x128_si256(s0, s1, 0x31));
}

/* Rows r..r+nr-1 (nr <= 8; missing rows repeat the last and are not stored) x MT activation rows. */
INL void masked8(const int layout, const int MT, const tern_sparse_matrix *w, int64_t r, int nr,
                 const tern_q8_block *a, float *out, int64_t ldo) {
    const int64_t chunks = w->columns / 32;
    const uint8_t *p[8];
    for (int j = 0; j < 8; j++) p[j] = tern_sparse_row_values(w, r + (j < nr ? j : nr - 1), 0);
    const __m256i eight = _mm256_set1_epi8(8), one = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int t = 0; t < MT; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < chunks; k++) {
        __m256i q[8];
        uint16_t dh[8];
        for (int j = 0; j < 8; j++) {
            uint32_t mask = tern_rd32(p[j]);
            if (layout == TERN_SPARSE_NM24) {
                dh[j] = tern_rd16(p[j] + 4);
                q[j] = _mm256_add_epi8(expand_nm24(p[j]), eight);
                p[j] += TERN_SPARSE_NM24_CHUNK_BYTES;
            } else if (mask) {
                dh[j] = tern_rd16(p[j] + 4);
                q[j] = _mm256_add_epi8(expand_bitmask(p[j], mask), eight);
                p[j] += 6 + (__builtin_popcount(mask) + 1) / 2;
            } else {
                dh[j] = 0;
                q[j] = eight;
                p[j] += 4;
            }
        }
        const __m256 d = _mm256_cvtph_ps(_mm_setr_epi16((short)dh[0], (short)dh[1], (short)dh[2], (short)dh[3],
                                                        (short)dh[4], (short)dh[5], (short)dh[6], (short)dh[7]));
        const __m256 o = _mm256_mul_ps(d, _mm256_set1_ps(-8.0f));
        for (int t = 0; t < MT; t++) {
            const tern_q8_block *ab = a + t * chunks + k;
            const __m256i av = _mm256_loadu_si256((const __m256i *)ab->q);
            __m256i s[8];
            for (int j = 0; j < 8; j++) s[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(q[j], av), one);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(s)), _mm256_mul_ps(d, _mm256_set1_ps(ab->d)), acc[t]);
            acc[t] = _mm256_fmadd_ps(o, _mm256_set1_ps(ab->s), acc[t]);
        }
    }
    for (int t = 0; t < MT; t++) {
        if (nr == 8) { _mm256_storeu_ps(out + t * ldo + r, acc[t]); continue; }
        float lanes[8];
        _mm256_storeu_ps(lanes, acc[t]);
        for (int j = 0; j < nr; j++) out[t * ldo + r + j] = lanes[j];
    }
}

#define MASKED(NAME, LAYOUT, MT)                                                                                 \
    TGT static void NAME(const tern_sparse_matrix *w, int64_t r, int nr, const tern_q8_block *a, float *out,    \
                         int64_t ldo) { masked8(LAYOUT, MT, w, r, nr, a, out, ldo); }
MASKED(nm24_1, TERN_SPARSE_NM24, 1) MASKED(nm24_4, TERN_SPARSE_NM24, 4)
MASKED(bitmask_1, TERN_SPARSE_BITMASK, 1) MASKED(bitmask_4, TERN_SPARSE_BITMASK, 4)

/* Prefill: with this many activation rows, decoding a panel to dense Q4_0 once and running the packed dense
   kernel over it beats expanding every chunk for each tile of rows. */
enum { DENSE_FROM_ROWS = 16 };

/* Row r as dense Q4_0 blocks (what tern_sparse_decode_q4_0 in sparse.c writes, with the vector expansion). */
TGT static void decode_q4_0(const tern_sparse_matrix *w, int64_t r, uint8_t *dst) {
    const int64_t chunks = w->columns / 32;
    const int nm24 = w->layout == TERN_SPARSE_NM24;
    const uint8_t *c = tern_sparse_row_values(w, r, 0);
    const __m256i eight = _mm256_set1_epi8(8);
    for (int64_t k = 0; k < chunks; k++, dst += Q4_0_BYTES) {
        uint32_t mask = tern_rd32(c);
        __m256i q = eight;
        uint16_t d = 0;
        if (nm24) {
            d = tern_rd16(c + 4);
            q = _mm256_add_epi8(expand_nm24(c), eight);
            c += TERN_SPARSE_NM24_CHUNK_BYTES;
        } else if (mask) {
            d = tern_rd16(c + 4);
            q = _mm256_add_epi8(expand_bitmask(c, mask), eight);
            c += 6 + (__builtin_popcount(mask) + 1) / 2;
        } else {
            c += 4;
        }
        __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
        memcpy(dst, &d, 2);
        _mm_storeu_si128((__m128i *)(dst + 2), _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
    }
}

TGT static void masked_rows(const tern_sparse_matrix *w, const tern_q8_block *a, int64_t m, float *out, int64_t ldo,
                            int64_t r0, int64_t r1) {
    const int64_t chunks = w->columns / 32;
    if (m >= DENSE_FROM_ROWS) {
        const size_t row_bytes = (size_t)chunks * Q4_0_BYTES;
        const size_t packed_bytes = tern_packed_size(TERN_Q4_0, TERN_PACK_ROWS, w->columns);
        uint8_t *dense = malloc(row_bytes * TERN_PACK_ROWS);
        void *packed = packed_bytes ? aligned_alloc(64, (packed_bytes + 63) / 64 * 64) : NULL;
        if (dense && packed) {
            for (int64_t r = r0; r < r1; r += TERN_PACK_ROWS) {
                const int64_t nr = r1 - r < TERN_PACK_ROWS ? r1 - r : TERN_PACK_ROWS;
                for (int64_t j = 0; j < nr; j++) decode_q4_0(w, r + j, dense + j * row_bytes);
                tern_pack_weights(TERN_Q4_0, dense, row_bytes, nr, w->columns, packed);
                tern_matmul_packed(TERN_Q4_0, packed, nr, w->columns, a, m, out + r, ldo, 0, nr);
            }
            free(dense);
            free(packed);
            return;
        }
        free(dense);
        free(packed);
    }
    const int nm24 = w->layout == TERN_SPARSE_NM24;
    for (int64_t i = 0; i < m;) {
        const int64_t mt = m - i >= 4 ? 4 : 1;
        for (int64_t r = r0; r < r1; r += 8) {
            const int nr = r1 - r < 8 ? (int)(r1 - r) : 8;
            if (nm24) (mt == 4 ? nm24_4 : nm24_1)(w, r, nr, a + i * chunks, out + i * ldo, ldo);
            else (mt == 4 ? bitmask_4 : bitmask_1)(w, r, nr, a + i * chunks, out + i * ldo, ldo);
        }
        i += mt;
    }
}

/* ---------- GROUP matrices in the octet layout (tern_sparse_pack) ---------- */

/* One octet (8 weight rows, its K records from rec) x MT activation rows; out[t * ldo + j] for row j of the
   octet. Per kept chunk: acc = fma(float(s), d * a.d, acc), then acc = fma(o, a.s, acc), o = -8d, m or -128d:
   the integer sums are exact, so each output's chain is the same in every tile. */
INL void octet_tile(const int type, const int MT, const uint8_t *rec, const uint16_t *idx, int64_t K,
                    const tern_q8_block *a, int64_t chunks, float *out, int64_t ldo) {
    const int q8 = type == TERN_Q8_0, q41 = type == TERN_Q4_1;
    const int64_t rb = q8 ? 16 + 256 : q41 ? 32 + 128 : 16 + 128;
    const __m256i lo4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi16(1), sixteen = _mm256_set1_epi16(16);
    __m256 acc[4];
    for (int t = 0; t < MT; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++, rec += rb) {
        _mm_prefetch((const char *)(rec + 4096), _MM_HINT_T0);
        _mm_prefetch((const char *)(rec + 4096 + 64), _MM_HINT_T0);
        if (q8) for (int l = 2; l < 5; l++) _mm_prefetch((const char *)(rec + 4096 + 64 * l), _MM_HINT_T0);
        const int64_t c = idx[k];
        const __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)rec));
        const __m256 o = q41 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(rec + 16)))
                             : _mm256_mul_ps(d, _mm256_set1_ps(q8 ? -128.0f : -8.0f));
        const uint8_t *q = rec + (q41 ? 32 : 16);
        __m256i s[4];
        if (q8) {
            __m256i sl[4], sh[4];
            for (int t = 0; t < MT; t++) sl[t] = sh[t] = _mm256_setzero_si256();
            for (int v = 0; v < 8; v++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(q + 32 * v));
                __m256i l = _mm256_and_si256(x, lo4), u = _mm256_and_si256(_mm256_srli_epi16(x, 4), lo4);
                for (int t = 0; t < MT; t++) {
                    __m256i b = bcast(a + t * chunks + c, v);
                    sl[t] = _mm256_add_epi16(sl[t], _mm256_maddubs_epi16(l, b));
                    sh[t] = _mm256_add_epi16(sh[t], _mm256_maddubs_epi16(u, b));
                }
            }
            for (int t = 0; t < MT; t++)
                s[t] = _mm256_add_epi32(_mm256_madd_epi16(sl[t], one), _mm256_madd_epi16(sh[t], sixteen));
        } else {
            __m256i s16[4];
            for (int v = 0; v < 4; v++) {
                __m256i x = _mm256_loadu_si256((const __m256i *)(q + 32 * v));
                __m256i l = _mm256_and_si256(x, lo4), u = _mm256_and_si256(_mm256_srli_epi16(x, 4), lo4);
                for (int t = 0; t < MT; t++) {
                    const tern_q8_block *ab = a + t * chunks + c;
                    __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(l, bcast(ab, v)), _mm256_maddubs_epi16(u, bcast(ab, v + 4)));
                    s16[t] = v ? _mm256_add_epi16(s16[t], p) : p;
                }
            }
            for (int t = 0; t < MT; t++) s[t] = _mm256_madd_epi16(s16[t], one);
        }
        for (int t = 0; t < MT; t++) {
            const tern_q8_block *ab = a + t * chunks + c;
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s[t]), _mm256_mul_ps(d, _mm256_set1_ps(ab->d)), acc[t]);
            acc[t] = _mm256_fmadd_ps(o, _mm256_set1_ps(ab->s), acc[t]);
        }
    }
    for (int t = 0; t < MT; t++) _mm256_storeu_ps(out + t * ldo, acc[t]);
}

#define OCTET(NAME, TYPE, MT)                                                                                    \
    TGT static void NAME(const uint8_t *rec, const uint16_t *idx, int64_t K, const tern_q8_block *a,            \
                         int64_t chunks, float *out, int64_t ldo) {                                              \
        octet_tile(TYPE, MT, rec, idx, K, a, chunks, out, ldo);                                                  \
    }
OCTET(oct_q4_0_1, TERN_Q4_0, 1) OCTET(oct_q4_0_4, TERN_Q4_0, 4)
OCTET(oct_q4_1_1, TERN_Q4_1, 1) OCTET(oct_q4_1_4, TERN_Q4_1, 4)
OCTET(oct_q8_0_1, TERN_Q8_0, 1) OCTET(oct_q8_0_4, TERN_Q8_0, 4)
typedef void (*octet_fn)(const uint8_t *, const uint16_t *, int64_t, const tern_q8_block *, int64_t, float *, int64_t);

/* Rows of full octets in [r0, r1) from the packed records: an octet only partly in the range is computed
   whole into scratch (its rows must not take another kernel's rounding). Returns the first row not done. */
TGT static int64_t octets(const tern_sparse_matrix *w, const tern_q8_block *a, int64_t m, float *out, int64_t ldo,
                          int64_t r0, int64_t r1) {
    octet_fn f1, f4;
    int64_t rb;
    switch (w->value_type) {
    case TERN_Q4_0: f1 = oct_q4_0_1; f4 = oct_q4_0_4; rb = 16 + 128; break;
    case TERN_Q4_1: f1 = oct_q4_1_1; f4 = oct_q4_1_4; rb = 32 + 128; break;
    default: f1 = oct_q8_0_1; f4 = oct_q8_0_4; rb = 16 + 256; break;
    }
    const int64_t chunks = w->columns / 32, K = w->kept, full = w->rows / 8 * 8;
    const int64_t end = r1 < full ? r1 : full;
    float scratch[4 * 8];
    for (int64_t o0 = r0 / 8 * 8; o0 < end; o0 += 8) {
        const uint8_t *rec = w->packed + (size_t)(o0 / 8 * K * rb);
        const uint16_t *idx = (const uint16_t *)w->index + o0 * K;
        const int whole = o0 >= r0 && o0 + 8 <= r1;
        for (int64_t i = 0; i < m;) {
            const int64_t mt = m - i >= 4 ? 4 : 1;
            if (whole) {
                (mt == 4 ? f4 : f1)(rec, idx, K, a + i * chunks, chunks, out + i * ldo + o0, ldo);
            } else {
                (mt == 4 ? f4 : f1)(rec, idx, K, a + i * chunks, chunks, scratch, 8);
                for (int64_t t = 0; t < mt; t++)
                    for (int64_t j = o0 > r0 ? o0 : r0; j < o0 + 8 && j < r1; j++) out[(i + t) * ldo + j] = scratch[t * 8 + j - o0];
            }
            i += mt;
        }
    }
    return end > r0 ? end : r0;
}

TGT int tern_avx2_sparse_matmul(const tern_sparse_matrix *w, const tern_q8_block *a, int64_t m, float *out,
                                int64_t ldo, int64_t r0, int64_t r1) {
    tile_fn t41, t11, t24, t14;
    int bb = 0;
#define PICK(SUFFIX) t41 = tile41_##SUFFIX; t11 = tile11_##SUFFIX; t24 = tile24_##SUFFIX; t14 = tile14_##SUFFIX
    if (w->layout == TERN_SPARSE_GROUP) {
        switch (w->value_type) {
        case TERN_Q4_0: PICK(q4_0); bb = Q4_0_BYTES; break;
        case TERN_Q4_1: PICK(q4_1); bb = Q4_1_BYTES; break;
        case TERN_Q8_0: PICK(q8_0); bb = Q8_0_BYTES; break;
        default: return 0;
        }
    } else if (w->layout == TERN_SPARSE_NM24 || w->layout == TERN_SPARSE_BITMASK) {
        masked_rows(w, a, m, out, ldo, r0, r1);
        return 1;
    } else {
        return 0;
    }
#undef PICK
    if (w->layout == TERN_SPARSE_GROUP && w->packed) {
        r0 = octets(w, a, m, out, ldo, r0, r1);
        if (r0 >= r1) return 1;
    }
    const int64_t chunks = w->columns / 32;
    const int64_t steps = w->layout == TERN_SPARSE_GROUP ? w->kept : chunks;
    row_cursor cur[4];
    for (int64_t i = 0; i < m;) {
        const int64_t tb = m - i >= 4 ? 4 : 1;
        const tern_q8_block *ai = a + i * chunks;
        float *oi = out + i * ldo;
        const int64_t rb = tb == 1 ? 4 : 2;
        int64_t r = r0;
        for (; r + rb <= r1; r += rb) {
            for (int j = 0; j < rb; j++) cur[j] = cursor_at(w, r + j, bb);
            (tb == 1 ? t41 : t24)(cur, steps, ai, chunks, oi, ldo, r);
        }
        for (; r < r1; r++) {
            cur[0] = cursor_at(w, r, bb);
            (tb == 1 ? t11 : t14)(cur, steps, ai, chunks, oi, ldo, r);
        }
        i += tb;
    }
    return 1;
}

#else
#include "include/tern_sparse.h"
int tern_avx2_sparse_matmul(const tern_sparse_matrix *w, const tern_q8_block *a, int64_t m, float *out,
                            int64_t ldo, int64_t r0, int64_t r1) {
    (void)w; (void)a; (void)m; (void)out; (void)ldo; (void)r0; (void)r1;
    return 0;
}
#endif
