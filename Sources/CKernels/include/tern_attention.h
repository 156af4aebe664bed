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

/* A run of consecutive cached positions. `keys`/`values` point at the run's start in the cache group's first layer;
   a KV head's slice of row j is at `head_offset` + j * `row_bytes` from there (whole rows together: row_bytes is
   the whole row's and head_offset the slice's place in it; each head's rows together, as Tern's caches keep them:
   row_bytes is one slice's and head_offset the start of that head's rows), and a layer's rows are `layer_offset`
   bytes further (the same for keys and values). `first` is the logical position of the first row (positions may
   have gaps between segments). */
typedef struct {
    const void *keys;
    const void *values;
    int64_t first;
    int64_t count;
} tern_kv_segment;

/* Softmax attention of `nq` query vectors (q + i * q_stride, hd floats each, sharing one KV head) over the rows of
   `segs` whose positions lie in [lo, hi), this head's slice placed by `row_bytes` and `head_offset` as above. For query i:
   out + i * out_stride gets the normalised output, lse[i] the log-sum-exp of its scaled scores (-infinity and a
   zero output when nothing is visible), so results over disjoint key sets merge exactly (tern_attn_merge).
   `scratch` holds at least (visible rows) floats. If `sink` is not NULL, the attention weights of every query are
   added to sink[position] (the score sink eviction policies read). The arithmetic is the same, operation for
   operation, as tern_attn_scores then tern_attn_accumulate over the visible rows, whatever the segmentation. */
void tern_attn_rows(int kv_type, int64_t hd, float scale, const float *q, int64_t nq, size_t q_stride,
                    const tern_kv_segment *segs, int64_t nseg, size_t layer_offset, size_t row_bytes,
                    size_t head_offset, int64_t lo, int64_t hi, float *scratch, float *out, size_t out_stride,
                    float *lse, float *sink);

/* Tiled (online-softmax) attention of `rows` query rows × `heads` query heads sharing one KV head: query (r, h) is
   q + r * q_row_stride + h * hd and sits at position pos0 + r; it reads the stored positions p of `segs` with
   p <= pos0 + r, p > pos0 + r - window (window 0: no lower bound) and k_lo <= p < k_hi. Output (r, h) goes to
   out + r * out_row_stride + h * hd (normalised), its log-sum-exp to lse[r * heads + h] (-infinity and zeros when
   nothing is visible). `work` holds tern_attn_tiled_work_floats(hd, rows * heads) floats. Tiles are cut at
   absolute positions, so the result does not depend on how the rows are split into segments. */
size_t tern_attn_tiled_work_floats(int64_t hd, int64_t nq);
void tern_attn_tiled(int kv_type, int64_t hd, float scale, const float *q, int64_t rows, int64_t heads,
                     size_t q_row_stride, int64_t pos0, int64_t window, const tern_kv_segment *segs, int64_t nseg,
                     size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t k_lo, int64_t k_hi,
                     float *work, float *out, size_t out_row_stride, float *lse);
/* The same, with the running softmax state of each query i = r * heads + h as [max, sum, unnormalised output[hd]]
   at state + i * (hd + 2): `state_in` (if not NULL) is where the computation starts instead of nothing seen, and
   `state_out` (if not NULL) receives the state instead of `out` and `lse` getting the result. A call over keys
   [a, b) with state_out followed by one over [b, c) with that state_in equals one call over [a, c) bit for bit,
   when b is a multiple of 16 (tiles are cut at multiples of 16). */
void tern_attn_tiled_state(int kv_type, int64_t hd, float scale, const float *q, int64_t rows, int64_t heads,
                           size_t q_row_stride, int64_t pos0, int64_t window, const tern_kv_segment *segs, int64_t nseg,
                           size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t k_lo, int64_t k_hi,
                           float *work, float *out, size_t out_row_stride, float *lse, const float *state_in,
                           float *state_out);

/* Merges a partial result (o_b, lse_b) over one key set into (o_a, *lse_a) over a disjoint key set, in place:
   o = w o_a + (1 - w) o_b with w = 1 / (1 + exp(lse_b - lse_a)); lse = log(exp(lse_a) + exp(lse_b)). */
void tern_attn_merge(int64_t hd, float *o_a, float *lse_a, const float *o_b, float lse_b);

#ifdef __cplusplus
}
#endif

#endif
