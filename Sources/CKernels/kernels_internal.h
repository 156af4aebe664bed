/* Private to CKernels: the per-path function tables, half/bfloat conversions and block-layout constants shared
   by the scalar reference (scalar.c), the SIMD paths (avx2.c, avx512.c), the quantizers (quantize.c) and the
   dispatcher (dispatch.c). */
#ifndef TERN_KERNELS_INTERNAL_H
#define TERN_KERNELS_INTERNAL_H

#include <stdint.h>
#include <string.h>
#include "include/CKernels.h"

/* Block sizes in bytes (GGML layouts). */
#define TERN_QK 32
#define TERN_QKK 256
#define Q4_0_BYTES 18   /* f16 d, 16 B nibbles */
#define Q4_1_BYTES 20   /* f16 d, f16 m, 16 B nibbles */
#define Q5_0_BYTES 22   /* f16 d, u32 qh, 16 B nibbles */
#define Q5_1_BYTES 24   /* f16 d, f16 m, u32 qh, 16 B nibbles */
#define Q8_0_BYTES 34   /* f16 d, 32 int8 */
#define Q4_K_BYTES 144  /* f16 d, f16 dmin, 12 B packed 6-bit scales/mins, 128 B nibbles */
#define Q5_K_BYTES 176  /* f16 d, f16 dmin, 12 B scales/mins, 32 B high bits, 128 B nibbles */
#define Q6_K_BYTES 210  /* 128 B low nibbles, 64 B high 2-bit pairs, 16 int8 scales, f16 d */

static inline uint16_t tern_rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t tern_rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* Exact IEEE half -> float, including subnormals, infinities and NaN; portable so the scalar path is a
   reference independent of F16C. */
static inline float tern_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {
        /* subnormal half: renormalize */
        int e = -1;
        do { man <<= 1; e++; } while ((man & 0x400) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
    }
    float f; memcpy(&f, &bits, 4); return f;
}

/* float -> half, round to nearest even, overflow to infinity, NaN kept quiet. */
static inline uint16_t tern_f2h(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520 -> inf */
    if (ax < 0x38800000u) {
        /* result is subnormal half (or zero): value / 2^-24, rounded to nearest even */
        if (ax < 0x33000000u) return (uint16_t)sign; /* below half of the smallest subnormal */
        uint32_t e = ax >> 23, man = (ax & 0x7fffff) | 0x800000;
        uint32_t shift = 126 - e;            /* 14..24: number of bits dropped from the 24-bit significand */
        uint32_t q = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t r = ax + 0x0fff + ((ax >> 13) & 1); /* round to nearest even at bit 13 */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

static inline float tern_bf2f(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f; }
static inline uint16_t tern_f2bf(float f) {
    uint32_t x; memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64); /* quiet NaN */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* Q4_K / Q5_K: 8 sub-blocks, 6-bit scale and min each, packed into 12 bytes. */
static inline void tern_k4_scale_min(int j, const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (uint8_t)((s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4));
        *mn = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
    }
}

typedef struct {
    void  (*quantize_activations)(const float *x, tern_q8_block *y, int64_t n);
    /* return 0 when the path has no code for `type` (the dispatcher then runs a lower path) */
    int   (*matmul_q)(int type, const void *w, size_t row_bytes, int64_t n, const tern_q8_block *a, int64_t m,
                      float *out, int64_t ldo, int64_t r0, int64_t r1);
    int   (*matmul_f)(int type, const void *w, size_t row_bytes, int64_t n, const float *x, int64_t m,
                      float *out, int64_t ldo, int64_t r0, int64_t r1);
    float (*dot_f32)(const float *a, const float *b, int64_t n);
    void  (*axpy_f32)(float alpha, const float *x, float *y, int64_t n);
    float (*dot_f16)(const uint16_t *a, const float *b, int64_t n);
    void  (*axpy_f16)(float alpha, const uint16_t *x, float *y, int64_t n);
    void  (*f32_to_f16)(const float *x, uint16_t *y, int64_t n);
    void  (*f16_to_f32)(const uint16_t *x, float *y, int64_t n);
} tern_kernel_table;

extern const tern_kernel_table tern_kernels_scalar;
#if defined(__x86_64__) || defined(_M_X64)
#define TERN_X86 1
extern const tern_kernel_table tern_kernels_avx2;
extern const tern_kernel_table tern_kernels_avx512;
/* avx512_gemm.c: batched (m > 1) products on the AVX-512 path; 0 = type not covered there */
int tern_avx512_gemm_q(int type, const void *w, size_t row_bytes, int64_t n, const tern_q8_block *a, int64_t m,
                       float *out, int64_t ldo, int64_t r0, int64_t r1);
int tern_avx512_gemm_f(int type, const void *w, size_t row_bytes, int64_t n, const float *x, int64_t m,
                       float *out, int64_t ldo, int64_t r0, int64_t r1);
/* avx512_gemm.c's tile over 16-row blocks in register form (TERN_PBLOCK_BYTES each: 8 x 64 B unsigned weights
   (lane r = 4 consecutive values of row r), 16 floats d, 16 floats o); mt = 1..8 activation rows */
#define TERN_PBLOCK_BYTES 640
void tern_avx512_qtile(int mt, const void *buf, int nbk, const tern_q8_block *a, int64_t astride, float *out,
                       int64_t ldo, unsigned rows, int first);
/* avx512_packed.c: products over load-time packed panels (packed.c owns the layout); 0 = type not covered */
int tern_avx512_matmul_packed(int type, const void *packed, int64_t rows, int64_t n, const tern_q8_block *a,
                              int64_t m, float *out, int64_t ldo, int64_t r0, int64_t r1);
/* avx2_packed.c: the same over the same layout on the AVX2 path; 0 = type not covered */
int tern_avx2_matmul_packed(int type, const void *packed, int64_t rows, int64_t n, const tern_q8_block *a,
                            int64_t m, float *out, int64_t ldo, int64_t r0, int64_t r1);
#endif
/* Packed layout (packed.c): bytes per 32-value block of a 16-row panel in the weight area (wb) and the scale
   area (sb); 0 = type has no packed form. */
static inline int tern_packed_block_geometry(int type, size_t *wb, size_t *sb) {
    switch (type) {
    case TERN_Q4_0: *wb = 256; *sb = 32; return 1;
    case TERN_Q4_1: *wb = 256; *sb = 64; return 1;
    case TERN_Q5_0: *wb = 320; *sb = 32; return 1;
    case TERN_Q5_1: *wb = 320; *sb = 64; return 1;
    case TERN_Q8_0: *wb = 512; *sb = 32; return 1;
    case TERN_Q4_K: *wb = 256; *sb = 40; return 1; /* per super-block: 2048 + 320 */
    case TERN_Q5_K: *wb = 320; *sb = 40; return 1; /* 2048 + 512 + 320 */
    case TERN_Q6_K: *wb = 384; *sb = 36; return 1; /* 3072 + 288 */
    default: *wb = *sb = 0; return 0;
    }
}
/* packed.c: byte size of one 16-row panel of the packed layout (0 = type not packable) and the offset of its
   scale area */
size_t tern_packed_panel_bytes(int type, int64_t n, size_t *scale_offset);

void tern_scalar_dequantize_row(int type, const void *src, float *dst, int64_t n);

#endif
