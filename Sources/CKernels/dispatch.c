/* Public entry points: type facts, the one-time CPU-based choice of kernel path, and routing of each call to
   the chosen path (falling back to a lower path for anything a SIMD file does not cover). */
#include <stdatomic.h>
#include <stddef.h>
#include "kernels_internal.h"

int64_t tern_type_block_elements(int type) {
    switch (type) {
    case TERN_F32: case TERN_F16: case TERN_BF16: return 1;
    case TERN_Q4_0: case TERN_Q4_1: case TERN_Q5_0: case TERN_Q5_1: case TERN_Q8_0: return 32;
    case TERN_Q4_K: case TERN_Q5_K: case TERN_Q6_K: return 256;
    default: return 0;
    }
}

int64_t tern_type_block_bytes(int type) {
    switch (type) {
    case TERN_F32: return 4;
    case TERN_F16: case TERN_BF16: return 2;
    case TERN_Q4_0: return Q4_0_BYTES;
    case TERN_Q4_1: return Q4_1_BYTES;
    case TERN_Q5_0: return Q5_0_BYTES;
    case TERN_Q5_1: return Q5_1_BYTES;
    case TERN_Q8_0: return Q8_0_BYTES;
    case TERN_Q4_K: return Q4_K_BYTES;
    case TERN_Q5_K: return Q5_K_BYTES;
    case TERN_Q6_K: return Q6_K_BYTES;
    default: return 0;
    }
}

int tern_type_supported(int type) { return tern_type_block_elements(type) != 0; }
int tern_type_is_float(int type) { return type == TERN_F32 || type == TERN_F16 || type == TERN_BF16; }

/* ---------- dispatch ---------- */

/* -1 = not chosen yet. Racing first callers compute the same value, so a relaxed store is enough. */
static _Atomic int active_path = -1;

int tern_best_path(void) {
#ifdef TERN_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
        __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma"))
        return TERN_PATH_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return TERN_PATH_AVX2;
#endif
    return TERN_PATH_SCALAR;
}

int tern_active_path(void) {
    int p = atomic_load_explicit(&active_path, memory_order_relaxed);
    if (p < 0) {
        p = tern_best_path();
        atomic_store_explicit(&active_path, p, memory_order_relaxed);
    }
    return p;
}

int tern_force_path(int path) {
    int best = tern_best_path();
    int p = path < 0 || path > best ? best : path;
    atomic_store_explicit(&active_path, p, memory_order_relaxed);
    return p;
}

const char *tern_path_name(int path) {
    switch (path) {
    case TERN_PATH_SCALAR: return "scalar";
    case TERN_PATH_AVX2: return "avx2";
    case TERN_PATH_AVX512: return "avx512-vnni";
    default: return "unknown";
    }
}

static const tern_kernel_table *table_for(int path) {
#ifdef TERN_X86
    if (path == TERN_PATH_AVX512) return &tern_kernels_avx512;
    if (path == TERN_PATH_AVX2) return &tern_kernels_avx2;
#endif
    (void)path;
    return &tern_kernels_scalar;
}

/* First non-null entry for `fn`, from the active path downwards (a SIMD file may leave entries empty). */
#define PICK(fn) pick_offset(offsetof(tern_kernel_table, fn))
static const void *pick_offset(size_t off) {
    for (int p = tern_active_path(); p > 0; p--) {
        const void *f;
        memcpy(&f, (const char *)table_for(p) + off, sizeof f);
        if (f) return table_for(p);
    }
    return &tern_kernels_scalar;
}
#define CALL(fn) ((const tern_kernel_table *)PICK(fn))->fn

void tern_quantize_activations(const float *x, tern_q8_block *y, int64_t n) { CALL(quantize_activations)(x, y, n); }

void tern_matmul_q(int type, const void *w, size_t row_bytes, int64_t n, const tern_q8_block *a, int64_t m,
                   float *out, int64_t ldo, int64_t r0, int64_t r1) {
    if (r1 <= r0 || m <= 0) return;
    for (int p = tern_active_path(); p >= 0; p--)
        if (table_for(p)->matmul_q && table_for(p)->matmul_q(type, w, row_bytes, n, a, m, out, ldo, r0, r1)) return;
}

void tern_matmul_f(int type, const void *w, size_t row_bytes, int64_t n, const float *x, int64_t m,
                   float *out, int64_t ldo, int64_t r0, int64_t r1) {
    if (r1 <= r0 || m <= 0) return;
    for (int p = tern_active_path(); p >= 0; p--)
        if (table_for(p)->matmul_f && table_for(p)->matmul_f(type, w, row_bytes, n, x, m, out, ldo, r0, r1)) return;
}

void tern_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    if (type == TERN_F16) { CALL(f16_to_f32)((const uint16_t *)src, dst, n); return; }
    tern_scalar_dequantize_row(type, src, dst, n);
}

float tern_dot_f32(const float *a, const float *b, int64_t n) { return CALL(dot_f32)(a, b, n); }
void tern_axpy_f32(float alpha, const float *x, float *y, int64_t n) { CALL(axpy_f32)(alpha, x, y, n); }
float tern_dot_f16(const uint16_t *a, const float *b, int64_t n) { return CALL(dot_f16)(a, b, n); }
void tern_axpy_f16(float alpha, const uint16_t *x, float *y, int64_t n) { CALL(axpy_f16)(alpha, x, y, n); }
void tern_f32_to_f16(const float *x, uint16_t *y, int64_t n) { CALL(f32_to_f16)(x, y, n); }
void tern_f16_to_f32(const uint16_t *x, float *y, int64_t n) { CALL(f16_to_f32)(x, y, n); }
