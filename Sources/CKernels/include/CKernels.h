/* CKernels: the innermost numeric loops of Tern (quantized matrix products, block (de)quantization, float
   helpers), with a runtime choice between AVX-512 VNNI, AVX2 and portable scalar code. The Swift side does the
   threading by handing each thread a row range; nothing here allocates or keeps mutable state besides the
   dispatch choice. Block layouts are GGML's (ggml-common.h in llama.cpp;
   docs/ARCHITECTURE.md maps the project). */
#ifndef TERN_CKERNELS_H
#define TERN_CKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* GGML type ids. */
enum {
    TERN_F32 = 0, TERN_F16 = 1, TERN_Q4_0 = 2, TERN_Q4_1 = 3, TERN_Q5_0 = 6, TERN_Q5_1 = 7, TERN_Q8_0 = 8,
    TERN_Q4_K = 12, TERN_Q5_K = 13, TERN_Q6_K = 14, TERN_BF16 = 30
};

/* Activations quantized on the fly: one block per 32 floats. s = d * sum(q) (needed by types with an
   offset/min). q is in [-127, 127]. */
typedef struct {
    float d;
    float s;
    int8_t q[32];
} tern_q8_block;

int     tern_type_supported(int type);      /* 1 if all functions below handle it */
int64_t tern_type_block_elements(int type); /* 1 for F32/F16/BF16, 32 for Q4_0..Q8_0, 256 for K-quants; 0 if unknown */
int64_t tern_type_block_bytes(int type);    /* 4, 2, 18, 20, 22, 24, 34, 144, 176, 210, 2; 0 if unknown */
int     tern_type_is_float(int type);       /* F32, F16, BF16 */

/* n % 32 == 0. Bit-identical results on every path (round half to even). */
void tern_quantize_activations(const float *x, tern_q8_block *y, int64_t n);

/* out[i*ldo + r] = dot(weight row r, activation row i) for r in [r0, r1), i in [0, m).
   w: row-major weight matrix, each row `row_bytes` long holding n elements of `type`.
   Quantized types take quantized activations (m rows of n/32 blocks each, contiguous). */
void tern_matmul_q(int type, const void *w, size_t row_bytes, int64_t n,
                   const tern_q8_block *a, int64_t m, float *out, int64_t ldo, int64_t r0, int64_t r1);
/* Float weight types (F32, F16, BF16) take float activations x (m rows of n floats, contiguous). */
void tern_matmul_f(int type, const void *w, size_t row_bytes, int64_t n,
                   const float *x, int64_t m, float *out, int64_t ldo, int64_t r0, int64_t r1);

/* All supported types; n a multiple of the type's block size. */
void tern_dequantize_row(int type, const void *src, float *dst, int64_t n);
/* F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K. Returns 0 on success, -1 for a type it
   cannot write (or n not a multiple of the block size). The 32-blocks follow ggml's reference rounding; the
   K-quants use a small grid search over the sub-block scale (see quantize.c). */
int  tern_quantize_row(int type, const float *src, void *dst, int64_t n);

/* Load-time weight packing. Decoding reads every weight once per token, so the 16-row panels the SIMD
   kernels want are built once instead of on every call. Packing is available when tern_packed_size is
   non-zero (today: every quantized type, on the AVX-512 and AVX2 paths); otherwise callers keep using
   tern_matmul_q. Packed data is 64-byte aligned by the caller. tern_matmul_packed's results are bit-identical
   to tern_matmul_q's on the AVX-512 path (except Q6_K at m = 1, which tern_matmul_q computes with row kernels:
   equal within float rounding) and within 1e-4 relative on other paths; on the AVX2 path they are the portable
   packed reader's bits. On every path an output's value depends only on its weight row and activation row,
   not on m, the activation row's position in the batch, or the row range. */
#define TERN_PACK_ROWS 16
/* Bytes tern_pack_weights needs for a rows x n matrix of `type`, or 0 when this type/path has no packed form. */
size_t tern_packed_size(int type, int64_t rows, int64_t n);
/* Packs rows [0, rows). Returns 0 on success, -1 if the type has no packed form. */
int    tern_pack_weights(int type, const void *w, size_t row_bytes, int64_t rows, int64_t n, void *packed);
/* Packs rows [r0, r1) only (r0, r1 multiples of TERN_PACK_ROWS, or r1 == rows), so threads can share the work. */
int    tern_pack_weights_range(int type, const void *w, size_t row_bytes, int64_t rows, int64_t n, void *packed,
                               int64_t r0, int64_t r1);
/* Row `row` (n values) of a packed matrix, dequantized exactly as tern_dequantize_row reads the original row.
   Returns 0, or -1 when the type has no packed form or is a K-quant (their rows are not unpacked). */
int    tern_dequantize_packed_row(int type, const void *packed, int64_t n, int64_t row, float *dst);
/* 1 when tern_dequantize_packed_row reads this type's rows (once packed), else 0. */
int    tern_packed_rows_readable(int type);
/* tern_matmul_q over packed weights, for r0 a multiple of TERN_PACK_ROWS and r1 a multiple of it or == rows. */
void   tern_matmul_packed(int type, const void *packed, int64_t rows, int64_t n, const tern_q8_block *a, int64_t m,
                          float *out, int64_t ldo, int64_t r0, int64_t r1);

/* Small float helpers for attention / norms (SIMD). */
float tern_dot_f32(const float *a, const float *b, int64_t n);
void  tern_axpy_f32(float alpha, const float *x, float *y, int64_t n);            /* y += alpha * x */
float tern_dot_f16(const uint16_t *a, const float *b, int64_t n);                 /* a is IEEE half */
void  tern_axpy_f16(float alpha, const uint16_t *x, float *y, int64_t n);
void  tern_f32_to_f16(const float *x, uint16_t *y, int64_t n);                    /* round to nearest even */
void  tern_f16_to_f32(const uint16_t *x, float *y, int64_t n);

/* The first index of the largest of x[0, n) (greedy sampling); NaN never wins; 0 when no value exceeds -inf. */
int64_t tern_argmax_f32(const float *x, int64_t n);

/* gate[i] = gelu_tanh(gate[i]) * up[i] (GeGLU with GELU's tanh approximation, as Gemma uses). */
void  tern_geglu_tanh(float *gate, const float *up, int64_t n);
/* gate[i] = silu(gate[i]) * up[i] (SwiGLU). */
void  tern_swiglu(float *gate, const float *up, int64_t n);

/* Runtime dispatch: chosen once (lazily, thread-safe) from the CPU: 2 = AVX-512 VNNI (avx512f/bw/vl/vnni),
   1 = AVX2+FMA+F16C, 0 = portable scalar. tern_force_path lets tests compare paths (returns the path in force;
   asking for a path the CPU lacks falls back to the best available one below it). A negative argument
   restores the automatic choice. */
enum { TERN_PATH_SCALAR = 0, TERN_PATH_AVX2 = 1, TERN_PATH_AVX512 = 2 };
int         tern_active_path(void);
int         tern_force_path(int path);
const char *tern_path_name(int path);
/* Best path this CPU can run (ignores tern_force_path). */
int         tern_best_path(void);

#ifdef __cplusplus
}
#endif

#endif
