/* Load-time packed weights: the public packing API, the packed layout, and a portable product over it for
   when no SIMD kernel for it is in force. The layout (panels of TERN_PACK_ROWS rows) is what the AVX-512 tile
   kernels (avx512_packed.c) read directly, and the AVX2 ones (avx2_packed.c) too, a vector's low 32 bytes being
   rows 0-7 and its high 32 rows 8-15, so decoding pays no per-call repacking:
     panel = [weights: nab 32-value blocks x wb bytes][scales: nab blocks x sb bytes, padded to 64 B]
   "vector" = 64 B whose 4-byte lane r belongs to row r of the panel.
   32-value types, per block:
     weights: vector k = bytes 4k..4k+3 of each row's quant bytes
       Q4_0/Q4_1: the 16 nibble bytes, 4 vectors (low nibbles = values 4k.., high = 16+4k..)
       Q5_0/Q5_1: those 4 nibble vectors, then 8 64-bit masks: bit 4r + j of mask k = high bit of value 4k + j
                  of row r (the kernel ORs in 16 with one masked byte op)
       Q8_0: the 32 quants + 128 (unsigned), 8 vectors
     scales: 16 halves d (Q4_0, Q5_0, Q8_0); Q4_1/Q5_1: 16 halves d then 16 halves m
   K-quants (Q4_K, Q5_K), per 256-value super-block (8 blocks):
     weights: 4 pairs of sub-blocks x 8 vectors: vector k of pair p = qs bytes 32p + 4k.. (low nibbles = sub-block
       2p, high = 2p + 1); Q5_K then 64 masks, mask 8j + k = high bits of values 4k.. of sub-block j
     scales: 16 halves d, 16 halves dmin, 8 x 16 bytes 6-bit scale (sub-block j, row r), 8 x 16 bytes 6-bit min
   Q6_K, per 256-value super-block: weights: per 32-value block, 4 nibble vectors as for Q4_0 (low 4 bits of values
     4k.. and 16+4k..), then 2 vectors of high bit pairs: byte x of lane r of vector k/2, bits 4(k%2).. =
     hi(4k + x) | hi(16 + 4k + x) << 2; scales: 16 halves d, then per block 16 int8 scales of values 0..15, 16 of
     16..31. The -32 offset is applied with the activation half-block sums (as in avx512_gemm.c).
   Rows past the matrix's end are zero. Every 32-value block is used as value = d' * u + o with unsigned u
   (o = -8d, m, -16d, m, -128d; K: d' = d * scale, o = -dmin * min), computed exactly as avx512_gemm.c does, so
   results match tern_matmul_q's batched kernels (avx512_gemm.c) bit for bit; avx2_packed.c follows the same
   float operations, so its results are the portable reader's bits. */
#include <math.h>
#include "kernels_internal.h"

enum { PR = TERN_PACK_ROWS };

static size_t round64(size_t x) { return (x + 63) & ~(size_t)63; }

static int is_k(int type) { return type == TERN_Q4_K || type == TERN_Q5_K; }

size_t tern_packed_panel_bytes(int type, int64_t n, size_t *scale_offset) {
    size_t wb, sb;
    if (n <= 0 || !tern_packed_block_geometry(type, &wb, &sb) || n % tern_type_block_elements(type)) return 0;
    size_t nab = (size_t)(n / TERN_QK);
    if (scale_offset) *scale_offset = round64(nab * wb);
    return round64(nab * wb) + round64(nab * sb);
}

size_t tern_packed_size(int type, int64_t rows, int64_t n) {
    /* the SIMD kernels (AVX-512, AVX2) read every packable type; the scalar path keeps its row kernels
       (scalar_matmul_packed is the layout's reference, not a tuned kernel) */
    if (rows <= 0 || tern_active_path() < TERN_PATH_AVX2) return 0;
    size_t pb = tern_packed_panel_bytes(type, n, NULL);
    return pb * (size_t)((rows + PR - 1) / PR);
}

/* one row's blocks into lane rr of a zeroed panel */
static void pack_row(int type, const uint8_t *src, int64_t nab, uint8_t *pw, uint8_t *ps, int rr) {
    size_t wb, sb;
    tern_packed_block_geometry(type, &wb, &sb);
    if (type == TERN_Q6_K) {
        for (int64_t s = 0; s < nab / 8; s++) {
            const uint8_t *blk = src + (size_t)s * Q6_K_BYTES;
            uint8_t *dw = pw + (size_t)s * 8 * wb, *ds = ps + (size_t)s * 8 * sb;
            memcpy(ds + 2 * rr, blk + 208, 2);
            for (int jb = 0; jb < 8; jb++) {
                const int h = jb / 4, j = jb % 4;
                uint8_t u[32];
                for (int l = 0; l < 32; l++) {
                    uint8_t ql = blk[64 * h + l + 32 * (j & 1)], qh = blk[128 + 32 * h + l];
                    u[l] = (uint8_t)(((j >= 2 ? ql >> 4 : ql) & 15) | (((qh >> (2 * j)) & 3) << 4));
                }
                uint8_t *bw = dw + 384 * jb;
                for (int k = 0; k < 4; k++)
                    for (int x = 0; x < 4; x++) {
                        bw[64 * k + 4 * rr + x] = (uint8_t)((u[4 * k + x] & 15) | ((u[16 + 4 * k + x] & 15) << 4));
                        bw[256 + 64 * (k / 2) + 4 * rr + x] |=
                            (uint8_t)(((u[4 * k + x] >> 4) | ((u[16 + 4 * k + x] >> 4) << 2)) << (4 * (k % 2)));
                    }
                ds[32 + 32 * jb + rr] = blk[192 + 2 * jb];
                ds[32 + 32 * jb + 16 + rr] = blk[192 + 2 * jb + 1];
            }
        }
        return;
    }
    if (is_k(type)) {
        const int q5 = type == TERN_Q5_K;
        const size_t bytes = q5 ? Q5_K_BYTES : Q4_K_BYTES;
        for (int64_t s = 0; s < nab / 8; s++) {
            const uint8_t *blk = src + (size_t)s * bytes, *qs = blk + (q5 ? 48 : 16);
            uint8_t *dw = pw + (size_t)s * 8 * wb, *ds = ps + (size_t)s * 8 * sb;
            memcpy(ds + 2 * rr, blk, 2);
            memcpy(ds + 32 + 2 * rr, blk + 2, 2);
            for (int j = 0; j < 8; j++) tern_k4_scale_min(j, blk + 4, &ds[64 + 16 * j + rr], &ds[192 + 16 * j + rr]);
            for (int p = 0; p < 4; p++)
                for (int k = 0; k < 8; k++) memcpy(dw + 512 * p + 64 * k + 4 * rr, qs + 32 * p + 4 * k, 4);
            if (q5)
                for (int j = 0; j < 8; j++)
                    for (int k = 0; k < 8; k++) {
                        uint8_t bits = 0;
                        for (int e = 0; e < 4; e++) bits |= (uint8_t)(((blk[16 + 4 * k + e] >> j) & 1) << e);
                        dw[2048 + 8 * (8 * j + k) + rr / 2] |= (uint8_t)(bits << (4 * (rr & 1)));
                    }
        }
        return;
    }
    const size_t bytes = (size_t)tern_type_block_bytes(type);
    const int q8 = type == TERN_Q8_0, q5 = type == TERN_Q5_0 || type == TERN_Q5_1;
    const int hasm = type == TERN_Q4_1 || type == TERN_Q5_1;
    const int qoff = type == TERN_Q4_0 ? 2 : type == TERN_Q4_1 ? 4 : type == TERN_Q5_0 ? 6 : 8;
    for (int64_t b = 0; b < nab; b++) {
        const uint8_t *blk = src + (size_t)b * bytes;
        uint8_t *dw = pw + (size_t)b * wb, *ds = ps + (size_t)b * sb + 2 * rr;
        memcpy(ds, blk, 2);
        if (hasm) memcpy(ds + 32, blk + 2, 2);
        if (q8) {
            for (int k = 0; k < 8; k++)
                for (int j = 0; j < 4; j++) dw[64 * k + 4 * rr + j] = blk[2 + 4 * k + j] ^ 0x80;
            continue;
        }
        for (int k = 0; k < 4; k++) memcpy(dw + 64 * k + 4 * rr, blk + qoff + 4 * k, 4);
        if (q5) {
            uint32_t qh = tern_rd32(blk + qoff - 4);
            for (int k = 0; k < 8; k++) /* bits 4rr..4rr+3 of little-endian mask k */
                dw[256 + 8 * k + rr / 2] |= (uint8_t)(((qh >> (4 * k)) & 15) << (4 * (rr & 1)));
        }
    }
}

int tern_pack_weights_range(int type, const void *w, size_t row_bytes, int64_t rows, int64_t n, void *packed,
                            int64_t r0, int64_t r1) {
    size_t so = 0, pb = tern_packed_panel_bytes(type, n, &so);
    if (!pb || r0 < 0 || r0 % PR || r1 > rows || (r1 % PR && r1 != rows)) return -1;
    for (int64_t p0 = r0; p0 < r1; p0 += PR) {
        uint8_t *pw = (uint8_t *)packed + (size_t)(p0 / PR) * pb;
        memset(pw, 0, pb);
        for (int rr = 0; rr < PR && p0 + rr < rows; rr++)
            pack_row(type, (const uint8_t *)w + (size_t)(p0 + rr) * row_bytes, n / TERN_QK, pw, pw + so, rr);
    }
    return 0;
}

int tern_pack_weights(int type, const void *w, size_t row_bytes, int64_t rows, int64_t n, void *packed) {
    return tern_pack_weights_range(type, w, row_bytes, rows, n, packed, 0, rows);
}

/* The packed types whose rows tern_dequantize_packed_row puts back: the 32-value ones. */
int tern_packed_rows_readable(int type) {
    size_t wb, sb;
    return !is_k(type) && type != TERN_Q6_K && tern_packed_block_geometry(type, &wb, &sb);
}

/* Row `row` of a packed matrix as floats, for the 32-value types: each block's original bytes are put back
   together from the panel (the exact inverse of pack_row) and dequantized as tern_dequantize_row would, so the
   values are the stored row's bits. Lets tied embeddings look rows up in the packed copy, whose file pages were
   given back after packing, instead of faulting the mapped file back in (a page fault maps its neighbours too). */
int tern_dequantize_packed_row(int type, const void *packed, int64_t n, int64_t row, float *dst) {
    size_t wb, sb, so = 0, pb = tern_packed_panel_bytes(type, n, &so);
    if (!pb || row < 0 || !tern_packed_rows_readable(type) || !tern_packed_block_geometry(type, &wb, &sb)) return -1;
    const int q8 = type == TERN_Q8_0, q5 = type == TERN_Q5_0 || type == TERN_Q5_1;
    const int hasm = type == TERN_Q4_1 || type == TERN_Q5_1;
    const int qoff = type == TERN_Q4_0 ? 2 : type == TERN_Q4_1 ? 4 : type == TERN_Q5_0 ? 6 : 8;
    const uint8_t *pw = (const uint8_t *)packed + (size_t)(row / PR) * pb, *ps = pw + so;
    const int rr = (int)(row % PR);
    uint8_t blk[64];
    for (int64_t b = 0; b < n / TERN_QK; b++) {
        const uint8_t *dw = pw + (size_t)b * wb, *ds = ps + (size_t)b * sb + 2 * rr;
        memset(blk, 0, sizeof blk);
        memcpy(blk, ds, 2);
        if (hasm) memcpy(blk + 2, ds + 32, 2);
        if (q8) {
            for (int k = 0; k < 8; k++)
                for (int j = 0; j < 4; j++) blk[2 + 4 * k + j] = dw[64 * k + 4 * rr + j] ^ 0x80;
        } else {
            for (int k = 0; k < 4; k++) memcpy(blk + qoff + 4 * k, dw + 64 * k + 4 * rr, 4);
            if (q5) {
                uint32_t qh = 0;
                for (int k = 0; k < 8; k++) qh |= (uint32_t)((dw[256 + 8 * k + rr / 2] >> (4 * (rr & 1))) & 15) << (4 * k);
                memcpy(blk + qoff - 4, &qh, 4);
            }
        }
        tern_dequantize_row(type, blk, dst + b * TERN_QK, TERN_QK);
    }
    return 0;
}

static int maskbit(const uint8_t *mask, int bit) { return (mask[bit / 8] >> (bit % 8)) & 1; }

/* Block b of lane `lane`: the 32 unsigned weights, their scale d' and offset o, as the AVX-512 kernel forms them. */
static void unpack_block(int type, const uint8_t *pw, const uint8_t *ps, int64_t b, int lane, int32_t u[32],
                         float *d, float *o) {
    size_t wb, sb;
    tern_packed_block_geometry(type, &wb, &sb);
    if (is_k(type)) {
        const int64_t s = b / 8;
        const int j = (int)(b % 8), p = j / 2, e = j % 2;
        const uint8_t *dw = pw + (size_t)s * 8 * wb, *ds = ps + (size_t)s * 8 * sb;
        for (int k = 0; k < 8; k++)
            for (int x = 0; x < 4; x++) {
                uint8_t byte = dw[512 * p + 64 * k + 4 * lane + x];
                u[4 * k + x] = e ? byte >> 4 : byte & 15;
                if (type == TERN_Q5_K) u[4 * k + x] |= maskbit(dw + 2048 + 8 * (8 * j + k), 4 * lane + x) << 4;
            }
        *d = tern_h2f(tern_rd16(ds + 2 * lane)) * (float)ds[64 + 16 * j + lane];
        *o = (0.0f - tern_h2f(tern_rd16(ds + 32 + 2 * lane))) * (float)ds[192 + 16 * j + lane];
        return;
    }
    const uint8_t *dw = pw + (size_t)b * wb, *ds = ps + (size_t)b * sb + 2 * lane;
    const int q8 = type == TERN_Q8_0, q5 = type == TERN_Q5_0 || type == TERN_Q5_1;
    for (int k = 0; k < (q8 ? 8 : 4); k++)
        for (int x = 0; x < 4; x++) {
            uint8_t byte = dw[64 * k + 4 * lane + x];
            if (q8) { u[4 * k + x] = byte; continue; }
            u[4 * k + x] = byte & 15;
            u[16 + 4 * k + x] = byte >> 4;
            if (q5) {
                u[4 * k + x] |= maskbit(dw + 256 + 8 * k, 4 * lane + x) << 4;
                u[16 + 4 * k + x] |= maskbit(dw + 256 + 8 * (k + 4), 4 * lane + x) << 4;
            }
        }
    *d = tern_h2f(tern_rd16(ds));
    switch (type) {
    case TERN_Q4_1: case TERN_Q5_1: *o = tern_h2f(tern_rd16(ds + 32)); break;
    case TERN_Q4_0: *o = *d * -8.0f; break;
    case TERN_Q5_0: *o = *d * -16.0f; break;
    default: *o = *d * -128.0f; break;
    }
}

/* Portable product over the packed layout, same operations and order as the AVX-512 tile (fmaf), so it
   yields the same bits. */
static void scalar_matmul_packed(int type, const void *packed, int64_t n, const tern_q8_block *a, int64_t m,
                                 float *out, int64_t ldo, int64_t r0, int64_t r1) {
    size_t so = 0, pb = tern_packed_panel_bytes(type, n, &so);
    const int64_t nab = n / TERN_QK;
    if (type == TERN_Q6_K) {
        /* sum((u - 32) * a) per 16-value half, then d * scale per half, as avx512_packed.c's q6 tile */
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *pw = (const uint8_t *)packed + (size_t)(r / PR) * pb, *ps = pw + so;
            const int lane = (int)(r % PR);
            for (int64_t i = 0; i < m; i++) {
                const tern_q8_block *ab = a + i * nab;
                float acc = 0.0f;
                for (int64_t b = 0; b < nab; b++) {
                    const uint8_t *bw = pw + (size_t)b * 384, *bs = ps + (size_t)(b / 8) * 288;
                    int32_t i0 = 0, i1 = 0;
                    for (int k = 0; k < 4; k++)
                        for (int x = 0; x < 4; x++) {
                            uint8_t nb = bw[64 * k + 4 * lane + x], hb = (uint8_t)(bw[256 + 64 * (k / 2) + 4 * lane + x] >> (4 * (k % 2)));
                            int32_t u0 = (nb & 15) | ((hb & 3) << 4), u1 = (nb >> 4) | (((hb >> 2) & 3) << 4);
                            i0 += (u0 - 32) * ab[b].q[4 * k + x];
                            i1 += (u1 - 32) * ab[b].q[16 + 4 * k + x];
                        }
                    float d = tern_h2f(tern_rd16(bs + 2 * lane));
                    float d0 = d * (float)(int8_t)bs[32 + 32 * (b % 8) + lane], d1 = d * (float)(int8_t)bs[48 + 32 * (b % 8) + lane];
                    acc = fmaf(fmaf((float)i0, d0, (float)i1 * d1), ab[b].d, acc);
                }
                out[i * ldo + r] = acc;
            }
        }
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *pw = (const uint8_t *)packed + (size_t)(r / PR) * pb;
        const int lane = (int)(r % PR);
        for (int64_t i = 0; i < m; i++) {
            const tern_q8_block *ab = a + i * nab;
            float acc = 0.0f;
            for (int64_t b = 0; b < nab; b++) {
                int32_t u[32], s = 0;
                float d, o;
                unpack_block(type, pw, pw + so, b, lane, u, &d, &o);
                for (int x = 0; x < 32; x++) s += u[x] * ab[b].q[x];
                acc = fmaf((float)s, d * ab[b].d, acc);
                acc = fmaf(o, ab[b].s, acc);
            }
            out[i * ldo + r] = acc;
        }
    }
}

void tern_matmul_packed(int type, const void *packed, int64_t rows, int64_t n, const tern_q8_block *a, int64_t m,
                        float *out, int64_t ldo, int64_t r0, int64_t r1) {
    if (r1 > rows) r1 = rows;
    if (r1 <= r0 || m <= 0 || !tern_packed_panel_bytes(type, n, NULL)) return;
#ifdef TERN_X86
    if (tern_active_path() >= TERN_PATH_AVX512 &&
        tern_avx512_matmul_packed(type, packed, rows, n, a, m, out, ldo, r0, r1)) return;
    if (tern_active_path() == TERN_PATH_AVX2 && tern_avx2_matmul_packed(type, packed, rows, n, a, m, out, ldo, r0, r1))
        return;
#endif
    scalar_matmul_packed(type, packed, n, a, m, out, ldo, r0, r1);
}
