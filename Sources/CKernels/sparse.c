/* Sparse matrices (tern_sparse.h): the portable reference products, row decoding, validation and encoding,
   and the choice of the AVX2 products when the CPU has them. The reference works chunk by chunk in integers
   and scales each chunk's sum once, like the SIMD code, so the two agree within float rounding. */
#include <math.h>
#include "include/tern_sparse.h"
#include "kernels_internal.h"
#include "sparse_internal.h"

/* from avx2_sparse.c; returns 0 when it does not handle the layout */
int tern_avx2_sparse_matmul(const tern_sparse_matrix *w, const tern_q8_block *a, int64_t m, float *out,
                            int64_t ldo, int64_t r0, int64_t r1);

static int popcount32(uint32_t x) { return __builtin_popcount(x); }

static int block_bytes(int type) {
    switch (type) {
    case TERN_Q4_0: return Q4_0_BYTES;
    case TERN_Q4_1: return Q4_1_BYTES;
    case TERN_Q8_0: return Q8_0_BYTES;
    default: return 0;
    }
}

/* dot of one stored 32-block of a GROUP matrix with one activation block */
static float group_block_dot(int type, const uint8_t *b, const tern_q8_block *a) {
    int32_t s = 0;
    switch (type) {
    case TERN_Q4_0:
        for (int j = 0; j < 16; j++) {
            s += ((b[2 + j] & 0x0f) - 8) * a->q[j];
            s += ((b[2 + j] >> 4) - 8) * a->q[j + 16];
        }
        return tern_h2f(tern_rd16(b)) * a->d * (float)s;
    case TERN_Q4_1:
        for (int j = 0; j < 16; j++) {
            s += (b[4 + j] & 0x0f) * a->q[j];
            s += (b[4 + j] >> 4) * a->q[j + 16];
        }
        return tern_h2f(tern_rd16(b)) * a->d * (float)s + tern_h2f(tern_rd16(b + 2)) * a->s;
    default: /* Q8_0 */
        for (int j = 0; j < 32; j++) s += (int8_t)b[2 + j] * a->q[j];
        return tern_h2f(tern_rd16(b)) * a->d * (float)s;
    }
}

/* the 4-bit value of compact position i of a chunk's nibbles, as q - 8 */
static int nib(const uint8_t *q, int i) { return ((q[i >> 1] >> ((i & 1) * 4)) & 0x0f) - 8; }

/* dot of one NM24 / BITMASK chunk (mask, d, nibbles) with an activation block */
static float masked_chunk_dot(uint32_t mask, float d, const uint8_t *q, const tern_q8_block *a) {
    int32_t s = 0;
    int i = 0;
    for (int p = 0; p < 32; p++)
        if (mask >> p & 1) s += nib(q, i++) * a->q[p];
    return d * a->d * (float)s;
}

/* Walks row r's stored chunks in column order: chunk number, its bytes, and (2:4, bitmask) its mask. Empty
   bitmask chunks are passed over. */
typedef struct {
    const uint8_t *p;
    const uint16_t *idx;
    int64_t k, steps;
} chunk_walk;

static chunk_walk walk_row(const tern_sparse_matrix *w, int64_t r) {
    chunk_walk it = {tern_sparse_row_values(w, r, block_bytes(w->value_type)), NULL, 0,
                     w->layout == TERN_SPARSE_GROUP ? w->kept : w->columns / 32};
    if (w->layout == TERN_SPARSE_GROUP) it.idx = (const uint16_t *)w->index + r * w->kept;
    return it;
}

static int walk_next(const tern_sparse_matrix *w, chunk_walk *it, int64_t *chunk, const uint8_t **data, uint32_t *mask) {
    while (it->k < it->steps) {
        const int64_t k = it->k++;
        *data = it->p;
        if (w->layout == TERN_SPARSE_GROUP) {
            *chunk = it->idx[k];
            it->p += block_bytes(w->value_type);
            return 1;
        }
        *chunk = k;
        *mask = tern_rd32(it->p);
        if (w->layout == TERN_SPARSE_NM24) { it->p += TERN_SPARSE_NM24_CHUNK_BYTES; return 1; }
        if (!*mask) { it->p += 4; continue; }
        it->p += 6 + (popcount32(*mask) + 1) / 2;
        return 1;
    }
    return 0;
}

static void scalar_matmul(const tern_sparse_matrix *w, const tern_q8_block *a, int64_t m, float *out, int64_t ldo,
                          int64_t r0, int64_t r1) {
    const int64_t chunks = w->columns / 32;
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t i = 0; i < m; i++) {
            const tern_q8_block *ar = a + i * chunks;
            float acc = 0.0f;
            chunk_walk it = walk_row(w, r);
            int64_t c;
            const uint8_t *p;
            uint32_t mask = 0;
            while (walk_next(w, &it, &c, &p, &mask))
                acc += w->layout == TERN_SPARSE_GROUP ? group_block_dot(w->value_type, p, ar + c)
                                                      : masked_chunk_dot(mask, tern_h2f(tern_rd16(p + 4)), p + 6, ar + c);
            out[i * ldo + r] = acc;
        }
    }
}

void tern_sparse_matmul(const tern_sparse_matrix *w, const tern_q8_block *a, int64_t m, float *out, int64_t ldo,
                        int64_t r0, int64_t r1) {
    if (r1 <= r0 || m <= 0) return;
#ifdef TERN_X86
    if (tern_active_path() >= TERN_PATH_AVX2 && tern_avx2_sparse_matmul(w, a, m, out, ldo, r0, r1)) return;
#endif
    scalar_matmul(w, a, m, out, ldo, r0, r1);
}

static void masked_chunk_decode(uint32_t mask, float d, const uint8_t *q, float *dst) {
    int i = 0;
    for (int p = 0; p < 32; p++) dst[p] = mask >> p & 1 ? d * (float)nib(q, i++) : 0.0f;
}

void tern_sparse_dequantize_row(const tern_sparse_matrix *w, int64_t r, float *dst) {
    memset(dst, 0, sizeof(float) * (size_t)w->columns);
    chunk_walk it = walk_row(w, r);
    int64_t c;
    const uint8_t *p;
    uint32_t mask = 0;
    while (walk_next(w, &it, &c, &p, &mask)) {
        if (w->layout == TERN_SPARSE_GROUP) tern_dequantize_row(w->value_type, p, dst + 32 * c, 32);
        else masked_chunk_decode(mask, tern_h2f(tern_rd16(p + 4)), p + 6, dst + 32 * c);
    }
}

#define FAIL(...) do { snprintf(why, why_len, __VA_ARGS__); return -1; } while (0)
#include <stdio.h>

int tern_sparse_validate(const tern_sparse_matrix *w, size_t index_bytes, size_t values_bytes, char *why, size_t why_len) {
    if (w->rows <= 0 || w->columns <= 0 || w->columns % 32) FAIL("shape %lld x %lld is not rows x (a multiple of 32) columns", (long long)w->rows, (long long)w->columns);
    const int64_t chunks = w->columns / 32;
    if (w->layout == TERN_SPARSE_GROUP) {
        const int bb = block_bytes(w->value_type);
        if (!bb) FAIL("group sparsity stores blocks of Q4_0, Q4_1 or Q8_0, not type %d", w->value_type);
        if (w->kept <= 0 || w->kept > chunks) FAIL("%lld kept chunks per row of %lld", (long long)w->kept, (long long)chunks);
        if (chunks > 65536) FAIL("rows of %lld chunks do not fit u16 chunk numbers", (long long)chunks);
        if ((uint64_t)w->rows * (uint64_t)w->kept * 2 > index_bytes) FAIL("index section too short");
        if ((uint64_t)w->rows * (uint64_t)w->kept * (uint64_t)bb > values_bytes) FAIL("values section too short");
        const uint16_t *idx = (const uint16_t *)w->index;
        for (int64_t r = 0; r < w->rows; r++)
            for (int64_t k = 0; k < w->kept; k++) {
                uint16_t c = idx[r * w->kept + k];
                if (c >= chunks || (k > 0 && c <= idx[r * w->kept + k - 1]))
                    FAIL("row %lld: chunk numbers are not increasing below %lld", (long long)r, (long long)chunks);
            }
        return 0;
    }
    if (w->value_type != TERN_Q4_0) FAIL("2:4 and bitmask chunks hold 4-bit values (type Q4_0), not type %d", w->value_type);
    if (w->layout == TERN_SPARSE_NM24) {
        if ((uint64_t)w->rows * (uint64_t)chunks * TERN_SPARSE_NM24_CHUNK_BYTES > values_bytes) FAIL("values section too short");
        for (int64_t c = 0; c < w->rows * chunks; c++) {
            uint32_t mask = tern_rd32(w->values + c * TERN_SPARSE_NM24_CHUNK_BYTES);
            for (int g = 0; g < 8; g++)
                if (popcount32(mask >> (4 * g) & 0xf) != 2)
                    FAIL("row %lld: a group of 4 does not keep exactly 2 weights", (long long)(c / chunks));
        }
        return 0;
    }
    if (w->layout != TERN_SPARSE_BITMASK) FAIL("unknown sparse layout %d", w->layout);
    if ((uint64_t)(w->rows + 1) * 8 > index_bytes) FAIL("row offset table too short");
    if (values_bytes < TERN_SPARSE_TAIL_PADDING) FAIL("values section lacks its tail padding");
    const uint64_t limit = values_bytes - TERN_SPARSE_TAIL_PADDING;
    for (int64_t r = 0; r < w->rows; r++) {
        uint64_t off, next;
        memcpy(&off, w->index + 8 * r, 8);
        memcpy(&next, w->index + 8 * (r + 1), 8);
        if (off > next || next > limit) FAIL("row %lld: offsets %llu..%llu leave the values section", (long long)r, (unsigned long long)off, (unsigned long long)next);
        uint64_t p = off;
        for (int64_t k = 0; k < chunks; k++) {
            if (p + 4 > next) FAIL("row %lld: chunk %lld runs past the row's end", (long long)r, (long long)k);
            uint32_t mask = tern_rd32(w->values + p);
            p += mask ? 6 + (uint64_t)(popcount32(mask) + 1) / 2 : 4;
            if (p > next) FAIL("row %lld: chunk %lld runs past the row's end", (long long)r, (long long)k);
        }
        if (p != next) FAIL("row %lld: %llu bytes of chunks in a row of %llu", (long long)r, (unsigned long long)(p - off), (unsigned long long)(next - off));
    }
    return 0;
}

/* Q4_0's rounding (quantize.c), over the kept values of one chunk only: d from the kept value of largest
   magnitude, so the nibbles use their whole range for what is stored. */
static void encode_masked_chunk(const float *x, uint32_t mask, uint8_t *c) {
    float mx = 0.0f, amx = 0.0f;
    for (int p = 0; p < 32; p++)
        if (mask >> p & 1 && fabsf(x[p]) > amx) { amx = fabsf(x[p]); mx = x[p]; }
    float d = mx / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    uint16_t h = tern_f2h(d);
    memcpy(c, &h, 2);
    uint8_t *q = c + 2;
    int k = popcount32(mask);
    memset(q, 0, (size_t)(k + 1) / 2);
    int i = 0;
    for (int p = 0; p < 32; p++) {
        if (!(mask >> p & 1)) continue;
        int v = (int)(x[p] * id + 8.5f);
        v = v < 0 ? 0 : v > 15 ? 15 : v;
        q[i >> 1] |= (uint8_t)(v << ((i & 1) * 4));
        i++;
    }
}

static uint32_t chunk_mask(const uint8_t *keep) {
    uint32_t m = 0;
    for (int p = 0; p < 32; p++) if (keep[p]) m |= 1u << p;
    return m;
}

int64_t tern_sparse_encode_row(int layout, int value_type, const float *x, const uint8_t *keep, int64_t columns,
                               int64_t kept, uint8_t *values, uint16_t *index) {
    if (columns <= 0 || columns % 32) return -1;
    const int64_t chunks = columns / 32;
    if (layout == TERN_SPARSE_GROUP) {
        const int bb = block_bytes(value_type);
        if (!bb) return -1;
        int64_t k = 0;
        for (int64_t c = 0; c < chunks; c++) {
            if (!keep[32 * c]) continue;
            if (k == kept) return -1;
            index[k] = (uint16_t)c;
            if (tern_quantize_row(value_type, x + 32 * c, values + k * bb, 32)) return -1;
            k++;
        }
        return k == kept ? k * bb : -1;
    }
    if (value_type != TERN_Q4_0) return -1;
    uint8_t *c = values;
    for (int64_t k = 0; k < chunks; k++) {
        uint32_t mask = chunk_mask(keep + 32 * k);
        if (layout == TERN_SPARSE_NM24) {
            for (int g = 0; g < 8; g++) if (popcount32(mask >> (4 * g) & 0xf) != 2) return -1;
            memcpy(c, &mask, 4);
            encode_masked_chunk(x + 32 * k, mask, c + 4);
            c += TERN_SPARSE_NM24_CHUNK_BYTES;
        } else if (layout == TERN_SPARSE_BITMASK) {
            memcpy(c, &mask, 4);
            if (!mask) { c += 4; continue; }
            encode_masked_chunk(x + 32 * k, mask, c + 4);
            c += 6 + (popcount32(mask) + 1) / 2;
        } else {
            return -1;
        }
    }
    return c - values;
}

int64_t tern_sparse_row_bytes_bound(int layout, int value_type, int64_t columns, int64_t kept) {
    const int64_t chunks = columns / 32;
    switch (layout) {
    case TERN_SPARSE_GROUP: return kept * block_bytes(value_type);
    case TERN_SPARSE_NM24: return chunks * TERN_SPARSE_NM24_CHUNK_BYTES;
    case TERN_SPARSE_BITMASK: return chunks * (6 + 16);
    default: return 0;
    }
}

/* ---------- octet packing of GROUP matrices (read by avx2_sparse.c) ---------- */

static int64_t octet_record_bytes(int type) {
    switch (type) {
    case TERN_Q4_0: return 16 + 128;
    case TERN_Q4_1: return 32 + 128;
    case TERN_Q8_0: return 16 + 256;
    default: return 0;
    }
}

/* 1 when rows 8o..8o+7 keep the same chunks for every full octet */
static int octets_agree(const tern_sparse_matrix *w) {
    const uint16_t *idx = (const uint16_t *)w->index;
    for (int64_t o = 0; o < w->rows / 8; o++)
        for (int j = 1; j < 8; j++)
            if (memcmp(idx + (8 * o) * w->kept, idx + (8 * o + j) * w->kept, 2 * (size_t)w->kept)) return 0;
    return 1;
}

size_t tern_sparse_packed_size(const tern_sparse_matrix *w) {
    if (w->layout != TERN_SPARSE_GROUP || tern_active_path() < TERN_PATH_AVX2 || w->rows < 8) return 0;
    int64_t rec = octet_record_bytes(w->value_type);
    if (!rec || !octets_agree(w)) return 0;
    return (size_t)(w->rows / 8 * w->kept * rec);
}

int tern_sparse_pack(const tern_sparse_matrix *w, void *packed) {
    if (!tern_sparse_packed_size(w)) return -1;
    const int type = w->value_type, bb = block_bytes(type);
    const int64_t rec = octet_record_bytes(type);
    const int quant_off = type == TERN_Q4_1 ? 32 : 16, qbytes = type == TERN_Q8_0 ? 32 : 16;
    const int src_off = type == TERN_Q4_1 ? 4 : 2;
    uint8_t *out = packed;
    for (int64_t o = 0; o < w->rows / 8; o++) {
        for (int64_t k = 0; k < w->kept; k++, out += rec) {
            for (int j = 0; j < 8; j++) {
                const uint8_t *b = w->values + (size_t)((8 * o + j) * w->kept + k) * (size_t)bb;
                memcpy(out + 2 * j, b, 2);                              /* d */
                if (type == TERN_Q4_1) memcpy(out + 16 + 2 * j, b + 2, 2); /* m */
                for (int v = 0; v < qbytes / 4; v++)
                    for (int x = 0; x < 4; x++) {
                        uint8_t q = b[src_off + 4 * v + x];
                        out[quant_off + 32 * v + 4 * j + x] = type == TERN_Q8_0 ? (uint8_t)(q ^ 0x80) : q;
                    }
            }
        }
    }
    return 0;
}

