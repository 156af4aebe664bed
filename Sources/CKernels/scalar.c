/* Portable scalar kernels: the reference every SIMD path is tested against, and the fallback on CPUs without
   AVX2. Written for clarity in ggml block semantics, with integer dot products per block exactly as the SIMD
   paths compute them, so paths differ only in float summation order. */
#include <math.h>
#include "kernels_internal.h"

/* ---------- activations ---------- */

static void s_quantize_activations(const float *x, tern_q8_block *y, int64_t n) {
    for (int64_t b = 0; b < n / TERN_QK; b++) {
        const float *xb = x + b * TERN_QK;
        float amax = 0.0f;
        for (int j = 0; j < TERN_QK; j++) { float v = fabsf(xb[j]); if (v > amax) amax = v; }
        float d = amax / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < TERN_QK; j++) {
            /* nearbyintf rounds half to even, like the SIMD round instructions, so all paths agree bit for bit */
            float v = nearbyintf(xb[j] * id);
            if (v > 127.0f) v = 127.0f;
            if (v < -127.0f) v = -127.0f;
            y[b].q[j] = (int8_t)v;
            sum += (int)v;
        }
        y[b].d = d;
        y[b].s = d * (float)sum;
    }
}

/* ---------- per-block dot products against one activation block (32 values) ---------- */

static float dot_q4_0(const uint8_t *w, const tern_q8_block *a) {
    int sumi = 0;
    for (int j = 0; j < 16; j++) {
        sumi += ((w[2 + j] & 0x0f) - 8) * a->q[j];
        sumi += ((w[2 + j] >> 4) - 8) * a->q[j + 16];
    }
    return tern_h2f(tern_rd16(w)) * a->d * (float)sumi;
}

static float dot_q4_1(const uint8_t *w, const tern_q8_block *a) {
    int sumi = 0;
    for (int j = 0; j < 16; j++) {
        sumi += (w[4 + j] & 0x0f) * a->q[j];
        sumi += (w[4 + j] >> 4) * a->q[j + 16];
    }
    return tern_h2f(tern_rd16(w)) * a->d * (float)sumi + tern_h2f(tern_rd16(w + 2)) * a->s;
}

static float dot_q5_0(const uint8_t *w, const tern_q8_block *a) {
    uint32_t qh = tern_rd32(w + 2);
    int sumi = 0;
    for (int j = 0; j < 16; j++) {
        int lo = (w[6 + j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
        int hi = (w[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        sumi += (lo - 16) * a->q[j] + (hi - 16) * a->q[j + 16];
    }
    return tern_h2f(tern_rd16(w)) * a->d * (float)sumi;
}

static float dot_q5_1(const uint8_t *w, const tern_q8_block *a) {
    uint32_t qh = tern_rd32(w + 4);
    int sumi = 0;
    for (int j = 0; j < 16; j++) {
        int lo = (w[8 + j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
        int hi = (w[8 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        sumi += lo * a->q[j] + hi * a->q[j + 16];
    }
    return tern_h2f(tern_rd16(w)) * a->d * (float)sumi + tern_h2f(tern_rd16(w + 2)) * a->s;
}

static float dot_q8_0(const uint8_t *w, const tern_q8_block *a) {
    int sumi = 0;
    for (int j = 0; j < 32; j++) sumi += (int8_t)w[2 + j] * a->q[j];
    return tern_h2f(tern_rd16(w)) * a->d * (float)sumi;
}

/* K-quants: one 256-value super-block against 8 activation blocks. */
static float dot_q4_k(const uint8_t *w, const tern_q8_block *a) {
    float d = tern_h2f(tern_rd16(w)), dmin = tern_h2f(tern_rd16(w + 2));
    const uint8_t *sc = w + 4, *qs = w + 16;
    float sum = 0.0f;
    for (int j = 0; j < 8; j++) {
        uint8_t s, mn;
        tern_k4_scale_min(j, sc, &s, &mn);
        /* sub-block j lives in the low (even j) or high (odd j) nibbles of bytes 32*(j/2) .. +32 */
        const uint8_t *q = qs + 32 * (j / 2);
        int shift = (j & 1) * 4, sumi = 0;
        for (int l = 0; l < 32; l++) sumi += ((q[l] >> shift) & 0x0f) * a[j].q[l];
        sum += d * (float)s * a[j].d * (float)sumi - dmin * (float)mn * a[j].s;
    }
    return sum;
}

static float dot_q5_k(const uint8_t *w, const tern_q8_block *a) {
    float d = tern_h2f(tern_rd16(w)), dmin = tern_h2f(tern_rd16(w + 2));
    const uint8_t *sc = w + 4, *qh = w + 16, *qs = w + 48;
    float sum = 0.0f;
    for (int j = 0; j < 8; j++) {
        uint8_t s, mn;
        tern_k4_scale_min(j, sc, &s, &mn);
        const uint8_t *q = qs + 32 * (j / 2);
        int shift = (j & 1) * 4, sumi = 0;
        for (int l = 0; l < 32; l++) {
            int v = ((q[l] >> shift) & 0x0f) | (((qh[l] >> j) & 1) << 4);
            sumi += v * a[j].q[l];
        }
        sum += d * (float)s * a[j].d * (float)sumi - dmin * (float)mn * a[j].s;
    }
    return sum;
}

/* Q6_K element e (0..255): half h = e/128, within it l = e%32 and quarter k = (e%128)/32:
   low nibble from ql[64h + l + 32*(k&1)] (low nibble for k<2, high for k>=2), two high bits from
   qh[32h + l] at bit 2k; scale sc[e/16]. */
static inline int q6_k_value(const uint8_t *ql, const uint8_t *qh, int e) {
    int h = e / 128, r = e % 128, k = r / 32, l = r % 32;
    int lo = (ql[64 * h + l + 32 * (k & 1)] >> (4 * (k >> 1))) & 0x0f;
    int hi = (qh[32 * h + l] >> (2 * k)) & 3;
    return (lo | (hi << 4)) - 32;
}

static float dot_q6_k(const uint8_t *w, const tern_q8_block *a) {
    const uint8_t *ql = w, *qh = w + 128;
    const int8_t *sc = (const int8_t *)(w + 192);
    float d = tern_h2f(tern_rd16(w + 208));
    float sum = 0.0f;
    for (int j = 0; j < 8; j++) {
        int s0 = 0, s1 = 0;
        for (int l = 0; l < 16; l++) s0 += q6_k_value(ql, qh, 32 * j + l) * a[j].q[l];
        for (int l = 16; l < 32; l++) s1 += q6_k_value(ql, qh, 32 * j + l) * a[j].q[l];
        sum += d * a[j].d * (float)(sc[2 * j] * s0 + sc[2 * j + 1] * s1);
    }
    return sum;
}

static int s_matmul_q(int type, const void *w, size_t row_bytes, int64_t n, const tern_q8_block *a, int64_t m,
                      float *out, int64_t ldo, int64_t r0, int64_t r1) {
    float (*blockdot)(const uint8_t *, const tern_q8_block *);
    int64_t bytes, per; /* bytes per weight block, activation blocks per weight block */
    switch (type) {
    case TERN_Q4_0: blockdot = dot_q4_0; bytes = Q4_0_BYTES; per = 1; break;
    case TERN_Q4_1: blockdot = dot_q4_1; bytes = Q4_1_BYTES; per = 1; break;
    case TERN_Q5_0: blockdot = dot_q5_0; bytes = Q5_0_BYTES; per = 1; break;
    case TERN_Q5_1: blockdot = dot_q5_1; bytes = Q5_1_BYTES; per = 1; break;
    case TERN_Q8_0: blockdot = dot_q8_0; bytes = Q8_0_BYTES; per = 1; break;
    case TERN_Q4_K: blockdot = dot_q4_k; bytes = Q4_K_BYTES; per = 8; break;
    case TERN_Q5_K: blockdot = dot_q5_k; bytes = Q5_K_BYTES; per = 8; break;
    case TERN_Q6_K: blockdot = dot_q6_k; bytes = Q6_K_BYTES; per = 8; break;
    default: return 0;
    }
    int64_t nab = n / TERN_QK, nwb = nab / per;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)r * row_bytes;
        for (int64_t i = 0; i < m; i++) {
            const tern_q8_block *ai = a + i * nab;
            float sum = 0.0f;
            for (int64_t b = 0; b < nwb; b++) sum += blockdot(row + b * bytes, ai + b * per);
            out[i * ldo + r] = sum;
        }
    }
    return 1;
}

static int s_matmul_f(int type, const void *w, size_t row_bytes, int64_t n, const float *x, int64_t m,
                      float *out, int64_t ldo, int64_t r0, int64_t r1) {
    if (type != TERN_F32 && type != TERN_F16 && type != TERN_BF16) return 0;
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w + (size_t)r * row_bytes;
        for (int64_t i = 0; i < m; i++) {
            const float *xi = x + i * n;
            float sum = 0.0f;
            if (type == TERN_F32) {
                const float *wr = (const float *)row;
                for (int64_t j = 0; j < n; j++) sum += wr[j] * xi[j];
            } else if (type == TERN_F16) {
                const uint16_t *wr = (const uint16_t *)row;
                for (int64_t j = 0; j < n; j++) sum += tern_h2f(wr[j]) * xi[j];
            } else {
                const uint16_t *wr = (const uint16_t *)row;
                for (int64_t j = 0; j < n; j++) sum += tern_bf2f(wr[j]) * xi[j];
            }
            out[i * ldo + r] = sum;
        }
    }
    return 1;
}

/* ---------- dequantization (one path only: it is not on the per-token hot path except for embedding rows) ---------- */

void tern_scalar_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const uint8_t *p = (const uint8_t *)src;
    switch (type) {
    case TERN_F32: memcpy(dst, src, (size_t)n * 4); return;
    case TERN_F16: for (int64_t i = 0; i < n; i++) dst[i] = tern_h2f(tern_rd16(p + 2 * i)); return;
    case TERN_BF16: for (int64_t i = 0; i < n; i++) dst[i] = tern_bf2f(tern_rd16(p + 2 * i)); return;
    case TERN_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, p += Q4_0_BYTES, dst += 32) {
            float d = tern_h2f(tern_rd16(p));
            for (int j = 0; j < 16; j++) {
                dst[j] = d * (float)((p[2 + j] & 0x0f) - 8);
                dst[j + 16] = d * (float)((p[2 + j] >> 4) - 8);
            }
        }
        return;
    case TERN_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, p += Q4_1_BYTES, dst += 32) {
            float d = tern_h2f(tern_rd16(p)), mn = tern_h2f(tern_rd16(p + 2));
            for (int j = 0; j < 16; j++) {
                dst[j] = d * (float)(p[4 + j] & 0x0f) + mn;
                dst[j + 16] = d * (float)(p[4 + j] >> 4) + mn;
            }
        }
        return;
    case TERN_Q5_0:
        for (int64_t b = 0; b < n / 32; b++, p += Q5_0_BYTES, dst += 32) {
            float d = tern_h2f(tern_rd16(p));
            uint32_t qh = tern_rd32(p + 2);
            for (int j = 0; j < 16; j++) {
                int lo = (p[6 + j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
                int hi = (p[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
                dst[j] = d * (float)(lo - 16);
                dst[j + 16] = d * (float)(hi - 16);
            }
        }
        return;
    case TERN_Q5_1:
        for (int64_t b = 0; b < n / 32; b++, p += Q5_1_BYTES, dst += 32) {
            float d = tern_h2f(tern_rd16(p)), mn = tern_h2f(tern_rd16(p + 2));
            uint32_t qh = tern_rd32(p + 4);
            for (int j = 0; j < 16; j++) {
                int lo = (p[8 + j] & 0x0f) | (int)(((qh >> j) & 1) << 4);
                int hi = (p[8 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
                dst[j] = d * (float)lo + mn;
                dst[j + 16] = d * (float)hi + mn;
            }
        }
        return;
    case TERN_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, p += Q8_0_BYTES, dst += 32) {
            float d = tern_h2f(tern_rd16(p));
            for (int j = 0; j < 32; j++) dst[j] = d * (float)(int8_t)p[2 + j];
        }
        return;
    case TERN_Q4_K:
    case TERN_Q5_K:
        for (int64_t b = 0; b < n / 256; b++, dst += 256) {
            const uint8_t *blk = p + b * (type == TERN_Q4_K ? Q4_K_BYTES : Q5_K_BYTES);
            float d = tern_h2f(tern_rd16(blk)), dmin = tern_h2f(tern_rd16(blk + 2));
            const uint8_t *qh = blk + 16, *qs = blk + (type == TERN_Q4_K ? 16 : 48);
            for (int j = 0; j < 8; j++) {
                uint8_t s, mn;
                tern_k4_scale_min(j, blk + 4, &s, &mn);
                float ds = d * (float)s, dm = dmin * (float)mn;
                const uint8_t *q = qs + 32 * (j / 2);
                int shift = (j & 1) * 4;
                for (int l = 0; l < 32; l++) {
                    int v = (q[l] >> shift) & 0x0f;
                    if (type == TERN_Q5_K) v |= ((qh[l] >> j) & 1) << 4;
                    dst[32 * j + l] = ds * (float)v - dm;
                }
            }
        }
        return;
    case TERN_Q6_K:
        for (int64_t b = 0; b < n / 256; b++, p += Q6_K_BYTES, dst += 256) {
            const int8_t *sc = (const int8_t *)(p + 192);
            float d = tern_h2f(tern_rd16(p + 208));
            for (int e = 0; e < 256; e++) dst[e] = d * (float)sc[e / 16] * (float)q6_k_value(p, p + 128, e);
        }
        return;
    default:
        return;
    }
}

/* ---------- float helpers ---------- */

static float s_dot_f32(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static void s_axpy_f32(float alpha, const float *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}
static float s_dot_f16(const uint16_t *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += tern_h2f(a[i]) * b[i];
    return s;
}
static void s_axpy_f16(float alpha, const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += alpha * tern_h2f(x[i]);
}
static void s_f32_to_f16(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = tern_f2h(x[i]);
}
static void s_f16_to_f32(const uint16_t *x, float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = tern_h2f(x[i]);
}

const tern_kernel_table tern_kernels_scalar = {
    s_quantize_activations, s_matmul_q, s_matmul_f, s_dot_f32, s_axpy_f32, s_dot_f16, s_axpy_f16,
    s_f32_to_f16, s_f16_to_f32,
};
