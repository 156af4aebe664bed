/* Sparse weight matrices: Tern's own sparse layouts (docs/SPARSE_FORMATS.md is the byte-level contract), their
   products with quantized activations, and row encoding/decoding for the converter and the tests.

   Three layouts, all cut into the same 32-column chunks as the activation blocks (tern_q8_block), so a chunk
   of weights always meets exactly one activation scale:
   - GROUP (GQSA-style group sparsity): each row keeps the same number of whole chunks, stored as ordinary
     blocks of a 32-element type (Q4_0, Q4_1, Q8_0) beside their u16 chunk numbers; dropped chunks cost nothing.
   - NM24 (2:4 semi-structured): in every 4 consecutive weights exactly 2 are kept; a chunk is 14 bytes:
     u32 presence mask, f16 d, 16 values as nibbles (x = d * (q - 8), Q4_0's rule; value i in the low nibble
     of byte i/2 when i is even, the high one when odd).
   - BITMASK (unstructured): a chunk is a u32 presence mask, then (if any bit is set) f16 d and popcount
     nibbles; rows have their own lengths, found through a table of row offsets.
   Products read only what is stored, and every output's value depends only on its weight row and its activation
   row (never on m, the row range or the position in the batch), as for the dense kernels. On AVX2, 2:4 and
   bitmask outputs are bit for bit what the packed dense Q4_0 kernel gives for the decoded matrix (prefill uses
   exactly that: panels decoded to dense once, then the packed kernel), and octet-packed group outputs follow
   the same per-block chain as the packed dense reader of their type. */
#ifndef TERN_SPARSE_H
#define TERN_SPARSE_H

#include <stddef.h>
#include <stdint.h>
#include "CKernels.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { TERN_SPARSE_GROUP = 1, TERN_SPARSE_BITMASK = 2, TERN_SPARSE_NM24 = 3 };

#define TERN_SPARSE_NM24_CHUNK_BYTES 14
/* Bytes the values section of a BITMASK matrix carries beyond its last chunk, so 16-byte loads never leave it. */
#define TERN_SPARSE_TAIL_PADDING 16

typedef struct {
    int32_t layout;           /* TERN_SPARSE_* */
    int32_t value_type;       /* GROUP: type of the kept blocks (Q4_0, Q4_1, Q8_0); others: TERN_Q4_0 */
    int64_t rows, columns;    /* columns % 32 == 0 */
    int64_t kept;             /* GROUP: chunks kept per row; others unused */
    const uint8_t *index;     /* GROUP: rows*kept u16 chunk numbers, increasing per row; BITMASK: rows+1 u64
                                 offsets of each row's first chunk in `values`; NM24: unused */
    const uint8_t *values;    /* GROUP: rows*kept blocks; NM24: rows*(columns/32) chunks; BITMASK: chunks */
    const uint8_t *packed;    /* GROUP only, optional: the load-time octet layout (tern_sparse_pack), or NULL */
} tern_sparse_matrix;

/* Load-time packing of a GROUP matrix whose rows keep the same chunks in every octet (rows 8o..8o+7; a last
   octet of fewer than 8 rows is not packed): per octet and kept chunk, a record of the 8 rows' scales and their
   quants interleaved 4 bytes per row, so one vpmaddubsw multiplies 8 rows by 4 broadcast activation bytes and
   a dropped chunk costs 8 rows nothing. Records: Q4_0 16 B of d + 4 x 32 B; Q4_1 16 B d + 16 B m + 4 x 32 B;
   Q8_0 16 B d + 8 x 32 B (quants + 128). Returns the bytes needed, or 0 when the matrix has no packed form
   (other layouts, value types, octets whose rows disagree, or a CPU without AVX2). */
size_t tern_sparse_packed_size(const tern_sparse_matrix *w);
/* Fills `packed` (tern_sparse_packed_size bytes, 32-byte aligned); returns 0, or -1 without a packed form. */
int tern_sparse_pack(const tern_sparse_matrix *w, void *packed);

/* out[i*ldo + r] = dot(weight row r, activation row i) for r in [r0, r1), i in [0, m); activations as for
   tern_matmul_q (m rows of columns/32 blocks). The matrix must have passed tern_sparse_validate. */
void tern_sparse_matmul(const tern_sparse_matrix *w, const tern_q8_block *a, int64_t m, float *out, int64_t ldo,
                        int64_t r0, int64_t r1);

/* Row r as floats (columns values, zeros where nothing is kept). */
void tern_sparse_dequantize_row(const tern_sparse_matrix *w, int64_t r, float *dst);

/* Checks that every index, offset and mask is consistent and in bounds (values_bytes: the size of the values
   section, index_bytes: of the index section). Returns 0, or -1 with a reason in `why` (up to why_len bytes). */
int tern_sparse_validate(const tern_sparse_matrix *w, size_t index_bytes, size_t values_bytes, char *why, size_t why_len);

/* Encoding one row of `columns` floats; keep[j] != 0 marks the weights that stay (others are stored as
   nothing). GROUP: a chunk is kept when keep[32c] is set (the whole chunk is then stored, all 32 values);
   exactly `kept` chunks must be marked; writes kept blocks to values and chunk numbers to index.
   NM24: exactly 2 of every 4 must be marked. BITMASK: any. Returns the bytes written to values, or -1 when
   keep does not fit the layout. */
int64_t tern_sparse_encode_row(int layout, int value_type, const float *x, const uint8_t *keep, int64_t columns,
                               int64_t kept, uint8_t *values, uint16_t *index);
/* Upper bound of the bytes one encoded row takes in the values section. */
int64_t tern_sparse_row_bytes_bound(int layout, int value_type, int64_t columns, int64_t kept);

#ifdef __cplusplus
}
#endif

#endif
