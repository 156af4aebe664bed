/* Weight quantizers for `tern convert` (not on any hot path). The 32-element formats follow ggml's reference
   rounding (and gguf-py's numpy port of it), so they are bit-exact with those. The K-quants use our own simple
   method: per sub-block min/max (or signed absmax) scales, quantized to 6/8 bits against a super-block scale,
   then a small local search (each sub-block's quantized scale and min tried at -1/0/+1) keeping the choice with
   the lowest squared error. */
#include <math.h>
#include "kernels_internal.h"

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

static void quant_q8_0(const float *x, uint8_t *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += 32, y += Q8_0_BYTES) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        put16(y, tern_f2h(d));
        for (int j = 0; j < 32; j++) y[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
    }
}

/* value with the largest magnitude, sign kept (first one on ties, like numpy argmax) */
static float signed_absmax(const float *x, int n) {
    float best = 0.0f, bestabs = 0.0f;
    for (int j = 0; j < n; j++) if (fabsf(x[j]) > bestabs) { bestabs = fabsf(x[j]); best = x[j]; }
    return best;
}

static void quant_sym(const float *x, uint8_t *y, int64_t nb, int bits) {
    /* Q4_0 (bits 4) and Q5_0 (bits 5): x = d * (q - 2^(bits-1)) */
    int half = 1 << (bits - 1), top = (1 << bits) - 1, bytes = bits == 4 ? Q4_0_BYTES : Q5_0_BYTES;
    for (int64_t b = 0; b < nb; b++, x += 32, y += bytes) {
        float mx = signed_absmax(x, 32);
        float d = mx / (float)(-half), id = d != 0.0f ? 1.0f / d : 0.0f;
        uint8_t q[32];
        for (int j = 0; j < 32; j++) {
            float t = x[j] * id;
            t = t + ((float)half + 0.5f);
            int v = (int)t;
            q[j] = (uint8_t)(v < 0 ? 0 : v > top ? top : v);
        }
        put16(y, tern_f2h(d));
        uint8_t *qs = y + (bits == 4 ? 2 : 6);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
        if (bits == 5) {
            for (int j = 0; j < 32; j++) qh |= (uint32_t)(q[j] >> 4) << j;
            memcpy(y + 2, &qh, 4);
        }
    }
}

static void quant_asym(const float *x, uint8_t *y, int64_t nb, int bits) {
    /* Q4_1 (bits 4) and Q5_1 (bits 5): x = d * q + m */
    int top = (1 << bits) - 1, bytes = bits == 4 ? Q4_1_BYTES : Q5_1_BYTES;
    for (int64_t b = 0; b < nb; b++, x += 32, y += bytes) {
        float mn = x[0], mx = x[0];
        for (int j = 1; j < 32; j++) { mn = fminf(mn, x[j]); mx = fmaxf(mx, x[j]); }
        float d = (mx - mn) / (float)top, id = d != 0.0f ? 1.0f / d : 0.0f;
        uint8_t q[32];
        for (int j = 0; j < 32; j++) {
            float t = (x[j] - mn) * id;
            t = t + 0.5f;
            int v = (int)t;
            q[j] = (uint8_t)(v < 0 ? 0 : v > top ? top : v);
        }
        put16(y, tern_f2h(d));
        put16(y + 2, tern_f2h(mn));
        uint8_t *qs = y + (bits == 4 ? 4 : 8);
        for (int j = 0; j < 16; j++) qs[j] = (uint8_t)((q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4));
        if (bits == 5) {
            uint32_t qh = 0;
            for (int j = 0; j < 32; j++) qh |= (uint32_t)(q[j] >> 4) << j;
            memcpy(y + 4, &qh, 4);
        }
    }
}

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Quantize 32 values as ds * q - dm with q in [0, top]; returns squared error, fills q. */
static float fit_asym(const float *x, float ds, float dm, int top, uint8_t *q) {
    float err = 0.0f, ids = ds != 0.0f ? 1.0f / ds : 0.0f;
    for (int l = 0; l < 32; l++) {
        int v = clampi((int)nearbyintf((x[l] + dm) * ids), 0, top);
        q[l] = (uint8_t)v;
        float e = ds * (float)v - dm - x[l];
        err += e * e;
    }
    return err;
}

/* Q4_K and Q5_K super-block: 8 sub-blocks of 32 with 6-bit scale and min. */
static void quant_k_asym(const float *x, uint8_t *y, int bits) {
    int top = (1 << bits) - 1;
    float scale[8], minv[8], maxs = 0.0f, maxm = 0.0f;
    for (int j = 0; j < 8; j++) {
        float mn = x[32 * j], mx = x[32 * j];
        for (int l = 1; l < 32; l++) { mn = fminf(mn, x[32 * j + l]); mx = fmaxf(mx, x[32 * j + l]); }
        if (mn > 0.0f) mn = 0.0f; /* the min is subtracted with a non-negative 6-bit factor */
        scale[j] = (mx - mn) / (float)top;
        minv[j] = -mn;
        maxs = fmaxf(maxs, scale[j]);
        maxm = fmaxf(maxm, minv[j]);
    }
    uint16_t dh = tern_f2h(maxs / 63.0f), dmh = tern_f2h(maxm / 63.0f);
    float d = tern_h2f(dh), dmin = tern_h2f(dmh);
    uint8_t sc[8], mc[8], q[256];
    for (int j = 0; j < 8; j++) {
        int s0 = d != 0.0f ? clampi((int)nearbyintf(scale[j] / d), 0, 63) : 0;
        int m0 = dmin != 0.0f ? clampi((int)nearbyintf(minv[j] / dmin), 0, 63) : 0;
        float best = INFINITY;
        for (int ds = -1; ds <= 1; ds++)
            for (int dm = -1; dm <= 1; dm++) {
                int s = clampi(s0 + ds, 0, 63), mm = clampi(m0 + dm, 0, 63);
                uint8_t qq[32];
                float err = fit_asym(x + 32 * j, d * (float)s, dmin * (float)mm, top, qq);
                if (err < best) { best = err; sc[j] = (uint8_t)s; mc[j] = (uint8_t)mm; memcpy(q + 32 * j, qq, 32); }
            }
    }
    put16(y, dh);
    put16(y + 2, dmh);
    uint8_t *s = y + 4;
    for (int j = 0; j < 4; j++) {
        s[j] = (uint8_t)((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        s[j + 4] = (uint8_t)((mc[j] & 63) | ((mc[j + 4] >> 4) << 6));
        s[j + 8] = (uint8_t)((sc[j + 4] & 0x0f) | ((mc[j + 4] & 0x0f) << 4));
    }
    uint8_t *qs = y + (bits == 4 ? 16 : 48);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            qs[32 * c + l] = (uint8_t)((q[64 * c + l] & 0x0f) | ((q[64 * c + 32 + l] & 0x0f) << 4));
    if (bits == 5) {
        uint8_t *qh = y + 16;
        for (int l = 0; l < 32; l++) {
            uint8_t h = 0;
            for (int j = 0; j < 8; j++) h |= (uint8_t)(((q[32 * j + l] >> 4) & 1) << j);
            qh[l] = h;
        }
    }
}

/* Q6_K super-block: 16 sub-blocks of 16 with int8 scales, q in [-32, 31]. */
static void quant_q6_k(const float *x, uint8_t *y) {
    float scale[16], maxabs = 0.0f, maxsc = 0.0f;
    for (int j = 0; j < 16; j++) {
        scale[j] = signed_absmax(x + 16 * j, 16) / -32.0f;
        if (fabsf(scale[j]) > maxabs) { maxabs = fabsf(scale[j]); maxsc = scale[j]; }
    }
    /* the scale with the largest magnitude maps to -128 (int8 has one more negative step) */
    uint16_t dh = tern_f2h(maxsc / -128.0f);
    float d = tern_h2f(dh);
    int8_t sc[16];
    int q[256];
    for (int j = 0; j < 16; j++) {
        int s0 = d != 0.0f ? clampi((int)nearbyintf(scale[j] / d), -128, 127) : 0;
        float best = INFINITY;
        for (int ds = -1; ds <= 1; ds++) {
            int s = clampi(s0 + ds, -128, 127);
            float step = d * (float)s, istep = step != 0.0f ? 1.0f / step : 0.0f, err = 0.0f;
            int qq[16];
            for (int l = 0; l < 16; l++) {
                qq[l] = clampi((int)nearbyintf(x[16 * j + l] * istep), -32, 31);
                float e = step * (float)qq[l] - x[16 * j + l];
                err += e * e;
            }
            if (err < best) { best = err; sc[j] = (int8_t)s; memcpy(q + 16 * j, qq, sizeof qq); }
        }
    }
    uint8_t *ql = y, *qh = y + 128;
    memset(y, 0, 192);
    for (int e = 0; e < 256; e++) {
        int v = q[e] + 32, h = e / 128, r = e % 128, k = r / 32, l = r % 32;
        ql[64 * h + l + 32 * (k & 1)] |= (uint8_t)((v & 0x0f) << (4 * (k >> 1)));
        qh[32 * h + l] |= (uint8_t)((v >> 4) << (2 * k));
    }
    memcpy(y + 192, sc, 16);
    put16(y + 208, dh);
}

int tern_quantize_row(int type, const float *src, void *dst, int64_t n) {
    uint8_t *y = (uint8_t *)dst;
    int64_t be = tern_type_block_elements(type);
    if (be == 0 || n % be != 0) return -1;
    switch (type) {
    case TERN_F32: memcpy(dst, src, (size_t)n * 4); return 0;
    case TERN_F16: for (int64_t i = 0; i < n; i++) put16(y + 2 * i, tern_f2h(src[i])); return 0;
    case TERN_BF16: for (int64_t i = 0; i < n; i++) put16(y + 2 * i, tern_f2bf(src[i])); return 0;
    case TERN_Q8_0: quant_q8_0(src, y, n / 32); return 0;
    case TERN_Q4_0: quant_sym(src, y, n / 32, 4); return 0;
    case TERN_Q5_0: quant_sym(src, y, n / 32, 5); return 0;
    case TERN_Q4_1: quant_asym(src, y, n / 32, 4); return 0;
    case TERN_Q5_1: quant_asym(src, y, n / 32, 5); return 0;
    case TERN_Q4_K: for (int64_t b = 0; b < n / 256; b++) quant_k_asym(src + 256 * b, y + Q4_K_BYTES * b, 4); return 0;
    case TERN_Q5_K: for (int64_t b = 0; b < n / 256; b++) quant_k_asym(src + 256 * b, y + Q5_K_BYTES * b, 5); return 0;
    case TERN_Q6_K: for (int64_t b = 0; b < n / 256; b++) quant_q6_k(src + 256 * b, y + Q6_K_BYTES * b); return 0;
    default: return -1;
    }
}
