/* Attention over one KV head for a whole run of cached positions in one call: the score pass (q · K_j) and the
   weighted sum of values (Σ w_j V_j). Calling a dot product per position spent most of the time in call
   overhead and, for Q8_0 caches, in dequantizing each slice into scratch memory first. */
#ifndef TERN_ATTENTION_H
#define TERN_ATTENTION_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* KV element types: TERN_F32, TERN_F16, TERN_Q8_0 (GGML Q8_0 blocks: f16 scale + 32 int8; for Q8_0, hd is a
   multiple of 32 and the head slice starts at a block boundary). Row j of the segment is at
   (const char *)base + j * stride, and this head's slice starts `offset` bytes into the row.
   Any hd >= 1 is accepted for F32/F16; other types, or Q8_0 with hd % 32 != 0, are a caller error (scores are
   set to 0 / out is left unchanged). n may be 0 (scores: returns -infinity). */

/* scores[j] = scale * dot(q[0..hd), K_j slice) for j in [0, n); returns max_j scores[j]. */
float tern_attn_scores(int kv_type, const float *q, const void *keys, size_t stride, size_t offset, int64_t hd,
                       int64_t n, float scale, float *scores);

/* out[0..hd) += sum_j w[j] * V_j slice, for j in [0, n). */
void tern_attn_accumulate(int kv_type, const float *w, const void *values, size_t stride, size_t offset,
                          int64_t hd, int64_t n, float *out);

#ifdef __cplusplus
}
#endif

#endif
