/* Tiled attention (FlashAttention-style) for many query vectors at once: the query heads of a GQA group, over one
   or many query rows (a prefill chunk, or the decoding rows of sequences that share a prefix). Keys and values are
   taken 16 positions at a time and each query keeps a running maximum and sum (online softmax), so a tile is read
   from the cache once for every query, not once per query head and row.

   The AVX2 path keeps keys row-major: a score is eight lane chains over the head dimension's 8-wide chunks, summed
   in one fixed tree, and the weighted values are one chain per 8 columns over the tile's keys in order. Those
   operations are the same whatever register tile a query shares (3 queries × 4 keys for a prefill chunk, all
   heads of one decoding row straight from the cache without a copy), so relay passes, split keys and plain calls
   agree bit for bit. The next tile's cache lines are requested a tile ahead.

   Tiles are cut at absolute positions (multiples of 16), whatever the segments look like, so a paged cache with
   any block size computes exactly what a contiguous one does. The scalar loops are the reference the tests hold
   the AVX2 path to (AVX-512 machines run the AVX2 path: the tile, not the vector width, is what saves memory
   traffic here). */
#include "tern_attention.h"
#include "kernels_internal.h"
#include <math.h>

#define TT 16

size_t tern_attn_tiled_work_floats(int64_t hd, int64_t nq) {
    /* Rounded up to 16 floats, so consecutive work buffers stay 64-byte aligned. */
    return ((size_t)(2 * TT * hd + nq * hd + nq * TT + 8 * nq + 64) + 15) & ~(size_t)15;
}

/* Decodes row `r` (hd values of this head's slice) into f32. */
static void decode_row(int t, const uint8_t *r, int64_t hd, float *out) {
    if (t == TERN_F32) { memcpy(out, r, (size_t)hd * 4); return; }
    if (t == TERN_F16) { tern_f16_to_f32((const uint16_t *)(const void *)r, out, hd); return; }
    for (int64_t b = 0; b < hd / TERN_QK; b++) {
        const uint8_t *blk = r + b * Q8_0_BYTES;
        const float d = tern_h2f(tern_rd16(blk));
        const int8_t *qs = (const int8_t *)(blk + 2);
        for (int k = 0; k < TERN_QK; k++) out[b * TERN_QK + k] = d * (float)qs[k];
    }
}

/* Fills the tile at positions [a, a + TT) row-major, kf[j * hd + d] = key j's element d and v[j * hd + d] likewise,
   and returns the mask of positions present (in a segment and in [k_lo, k_hi)). Absent positions are zero, so no
   NaN reaches the sums. */
static uint32_t load_tile(int t, int64_t hd, const tern_kv_segment *segs, int64_t nseg, int64_t *cursor,
                          size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t a, int64_t k_lo,
                          int64_t k_hi, float *kf, float *v) {
    uint32_t valid = 0;
    memset(kf, 0, (size_t)(TT * hd) * sizeof(float));
    memset(v, 0, (size_t)(TT * hd) * sizeof(float));
    int64_t s = *cursor;
    while (s < nseg && segs[s].first + segs[s].count <= a) s++;
    *cursor = s;
    for (; s < nseg && segs[s].first < a + TT; s++) {
        int64_t lo = segs[s].first > a ? segs[s].first : a;
        int64_t hi = segs[s].first + segs[s].count < a + TT ? segs[s].first + segs[s].count : a + TT;
        if (lo < k_lo) lo = k_lo;
        if (hi > k_hi) hi = k_hi;
        for (int64_t p = lo; p < hi; p++) {
            const size_t off = layer_offset + (size_t)(p - segs[s].first) * row_bytes + head_offset;
            const int j = (int)(p - a);
            decode_row(t, (const uint8_t *)segs[s].keys + off, hd, kf + j * hd);
            decode_row(t, (const uint8_t *)segs[s].values + off, hd, v + j * hd);
            valid |= 1u << j;
        }
    }
    return valid;
}

/* The visible key positions of query row r. */
static inline void visible(int64_t pos0, int64_t r, int64_t window, int64_t k_lo, int64_t k_hi, int64_t *lo, int64_t *hi) {
    const int64_t p = pos0 + r;
    int64_t l = window > 0 ? p - window + 1 : 0, h = p + 1;
    if (l < k_lo) l = k_lo;
    if (h > k_hi) h = k_hi;
    *lo = l;
    *hi = h;
}

/* Lays the work buffer out (key tile, value tile, accumulators, scores, running max and sum, then room for each
   query's rescale factor and the list of queries a tile touches), clears the running state, and finds the key
   positions any query row sees. */
static void begin(float *work, int64_t hd, int64_t nq, int64_t rows, int64_t pos0, int64_t window, int64_t k_lo,
                  int64_t k_hi, float **kf, float **v, float **acc, float **sc, float **m, float **l, float **alpha,
                  int64_t *first, int64_t *last) {
    *kf = work;
    *v = *kf + TT * hd;
    *acc = *v + TT * hd;
    *sc = *acc + nq * hd;
    *m = *sc + nq * TT;
    *l = *m + nq;
    *alpha = *l + nq;
    for (int64_t i = 0; i < nq; i++) { (*m)[i] = -INFINITY; (*l)[i] = 0; }
    memset(*acc, 0, (size_t)(nq * hd) * sizeof(float));
    visible(pos0, 0, window, k_lo, k_hi, first, last);
    int64_t a, b;
    visible(pos0, rows - 1, window, k_lo, k_hi, &a, &b);
    if (b > *last) *last = b;
}

/* Normalised outputs and log-sum-exps from the running state (zeros and -infinity where nothing was visible). */
static void finish(int64_t hd, int64_t nq, int64_t heads, const float *acc, const float *m, const float *l, float *out,
                   size_t out_row_stride, float *lse) {
    for (int64_t i = 0; i < nq; i++) {
        float *oi = out + (size_t)(i / heads) * out_row_stride + (size_t)(i % heads) * hd;
        if (l[i] == 0) { memset(oi, 0, (size_t)hd * sizeof(float)); lse[i] = -INFINITY; continue; }
        const float inv = 1.0f / l[i];
        for (int64_t k = 0; k < hd; k++) oi[k] = acc[i * hd + k] * inv;
        lse[i] = m[i] + logf(l[i]);
    }
}

/* The running state of query i as [m, l, acc[0..hd)] at state + i * (hd + 2): handed from one call to the next, the
   second continues the online softmax exactly where the first stopped (RelayAttention's shared prefix, then each
   member's own positions), so the result is the same, bit for bit, as one call over both key ranges. */
static void load_state(int64_t hd, int64_t nq, const float *state, float *acc, float *m, float *l) {
    for (int64_t i = 0; i < nq; i++) {
        const float *s = state + i * (hd + 2);
        m[i] = s[0];
        l[i] = s[1];
        memcpy(acc + i * hd, s + 2, (size_t)hd * sizeof(float));
    }
}

static void save_state(int64_t hd, int64_t nq, const float *acc, const float *m, const float *l, float *state) {
    for (int64_t i = 0; i < nq; i++) {
        float *s = state + i * (hd + 2);
        s[0] = m[i];
        s[1] = l[i];
        memcpy(s + 2, acc + i * hd, (size_t)hd * sizeof(float));
    }
}

/* ---------- scalar ---------- */

static void tiled_scalar(int t, int64_t hd, float scale, const float *q, int64_t rows, int64_t heads,
                         size_t q_row_stride, int64_t pos0, int64_t window, const tern_kv_segment *segs, int64_t nseg,
                         size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t k_lo, int64_t k_hi,
                         float *work, float *out, size_t out_row_stride, float *lse, const float *state_in,
                         float *state_out) {
    const int64_t nq = rows * heads;
    float *kf, *v, *acc, *sc, *m, *l, *alpha;
    int64_t first, last;
    begin(work, hd, nq, rows, pos0, window, k_lo, k_hi, &kf, &v, &acc, &sc, &m, &l, &alpha, &first, &last);
    if (state_in) load_state(hd, nq, state_in, acc, m, l);
    int64_t cursor = 0;
    for (int64_t a = first - first % TT; a < last; a += TT) {
        const uint32_t valid = load_tile(t, hd, segs, nseg, &cursor, layer_offset, row_bytes, head_offset, a, k_lo, k_hi, kf, v);
        if (!valid) continue;
        for (int64_t i = 0; i < nq; i++) {
            const int64_t r = i / heads;
            const float *qi = q + (size_t)r * q_row_stride + (size_t)(i % heads) * hd;
            int64_t lo, hi;
            visible(pos0, r, window, k_lo, k_hi, &lo, &hi);
            float s[TT], mt = -INFINITY;
            for (int j = 0; j < TT; j++) {
                const int64_t p = a + j;
                if (!(valid >> j & 1) || p < lo || p >= hi) { s[j] = -INFINITY; continue; }
                float d = 0;
                for (int64_t k = 0; k < hd; k++) d += qi[k] * kf[j * hd + k];
                s[j] = d * scale;
                if (s[j] > mt) mt = s[j];
            }
            if (mt == -INFINITY) continue;
            const float mn = m[i] > mt ? m[i] : mt;
            const float alpha = m[i] == -INFINITY ? 0.0f : expf(m[i] - mn);
            float *ai = acc + i * hd;
            float sum = 0;
            for (int64_t k = 0; k < hd; k++) ai[k] *= alpha;
            for (int j = 0; j < TT; j++) {
                const float pj = s[j] == -INFINITY ? 0.0f : expf(s[j] - mn);
                sum += pj;
                if (pj != 0.0f) for (int64_t k = 0; k < hd; k++) ai[k] += pj * v[j * hd + k];
            }
            l[i] = l[i] * alpha + sum;
            m[i] = mn;
        }
    }
    if (state_out) save_state(hd, nq, acc, m, l, state_out);
    else finish(hd, nq, heads, acc, m, l, out, out_row_stride, lse);
}

#ifdef TERN_X86
#include "avx2_inline.h"
#include "avx2_exp.h"

INL float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lane masks (all ones where kept) for 8 positions starting at tile column c. */
INL __m256 lane_mask(uint32_t bits) {
    const __m256i sel = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)bits), sel), sel));
}

/* Bits of tile columns j with a + j in [lo, hi). */
static inline uint32_t range_bits(int64_t a, int64_t lo, int64_t hi) {
    int64_t s = lo - a, e = hi - a;
    if (s < 0) s = 0;
    if (e > TT) e = TT;
    if (s >= e) return 0;
    return (uint32_t)(((1ull << e) - 1) & ~((1ull << s) - 1));
}

/* 8 values of a cache row at element d, as f32. */
INL __m256 cache8(int t, const uint8_t *row, int64_t d) {
    return t == TERN_F32 ? _mm256_loadu_ps((const float *)(const void *)(row + 4 * d))
                         : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + 2 * d)));
}

/* Converts hd values of one f32 or f16 cache row to f32 (hd a multiple of 8). */
INL void convert_row(int t, const uint8_t *r, int64_t hd, float *out) {
    for (int64_t d = 0; d < hd; d += 8) _mm256_storeu_ps(out + d, cache8(t, r, d));
}

/* The cache rows of a whole f32/f16 tile at [a, a + TT), or NULL when the tile is not of that kind. */
INL const uint8_t *whole_tile(int t, const tern_kv_segment *segs, int64_t nseg, int64_t *cursor, size_t layer_offset,
                              size_t row_bytes, size_t head_offset, int64_t a, int64_t k_lo, int64_t k_hi,
                              const uint8_t **values) {
    int64_t s = *cursor;
    while (s < nseg && segs[s].first + segs[s].count <= a) s++;
    *cursor = s;
    if ((t != TERN_F32 && t != TERN_F16) || a < k_lo || a + TT > k_hi || s >= nseg || segs[s].first > a ||
        segs[s].first + segs[s].count < a + TT)
        return NULL;
    const size_t off = layer_offset + (size_t)(a - segs[s].first) * row_bytes + head_offset;
    *values = (const uint8_t *)segs[s].values + off;
    return (const uint8_t *)segs[s].keys + off;
}

/* load_tile, with the common tile (all sixteen in one segment and in the key range, f32 or f16) converted by vector
   loads. */
INL uint32_t load_tile_rows(int t, int64_t hd, const tern_kv_segment *segs, int64_t nseg, int64_t *cursor,
                            size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t a, int64_t k_lo,
                            int64_t k_hi, float *kf, float *v) {
    const uint8_t *vv = NULL;
    const uint8_t *k = whole_tile(t, segs, nseg, cursor, layer_offset, row_bytes, head_offset, a, k_lo, k_hi, &vv);
    if (!k) return load_tile(t, hd, segs, nseg, cursor, layer_offset, row_bytes, head_offset, a, k_lo, k_hi, kf, v);
    for (int j = 0; j < TT; j++) {
        convert_row(t, k + (size_t)j * row_bytes, hd, kf + j * hd);
        convert_row(t, vv + (size_t)j * row_bytes, hd, v + j * hd);
    }
    return 0xffffu;
}

/* Asks for the cache lines of the tile at [a, a + TT) ahead of its use: consecutive tiles usually lie in different
   cache blocks (separate allocations, every layer's rows between them), which the hardware prefetchers do not
   follow, so without this one decoding row waits on memory latency, not bandwidth. */
INL void prefetch_tile(int t, int64_t hd, const tern_kv_segment *segs, int64_t nseg, int64_t s, size_t layer_offset,
                       size_t row_bytes, size_t head_offset, int64_t a, int64_t k_hi) {
    while (s < nseg && segs[s].first + segs[s].count <= a) s++;
    if (s >= nseg || segs[s].first > a || a >= k_hi) return;
    const size_t bytes = (size_t)hd * (t == TERN_F32 ? 4 : t == TERN_F16 ? 2 : 1) + (t == TERN_Q8_0 ? (size_t)hd / 16 : 0);
    int64_t end = segs[s].first + segs[s].count;
    if (end > a + TT) end = a + TT;
    if (end > k_hi) end = k_hi;
    const size_t off = layer_offset + (size_t)(a - segs[s].first) * row_bytes + head_offset;
    const char *k = (const char *)segs[s].keys + off, *v = (const char *)segs[s].values + off;
    for (int64_t p = a; p < end; p++, k += row_bytes, v += row_bytes)
        for (size_t b = 0; b < bytes; b += 64) {
            _mm_prefetch(k + b, _MM_HINT_T0);
            _mm_prefetch(v + b, _MM_HINT_T0);
        }
}

/* Four scores from four accumulators of 8 lanes: lane sums in one fixed tree, ((l0+l1)+(l2+l3))+((l4+l5)+(l6+l7)),
   so a score is the same whichever queries and keys share its register tile. */
INL __m128 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* acc·alpha, skipping the product when the running maximum did not move (alpha exactly 1, and x·1 = x): after the
   first tiles it rarely moves, and the multiply of every accumulator was a tenth of a tile's work. */
INL __m256 rescale(__m256 x, float alpha, __m256 al) { return alpha == 1.0f ? x : _mm256_mul_ps(x, al); }

/* Scores of N ≤ 3 queries against the four keys j0..j0+3 of a tile whose rows lie rs bytes apart (the f32 tile copy,
   or f32/f16 cache rows): per key, lane l sums q[8c+l]·k[8c+l] over the chunks c in order, then reduce4 — the
   arithmetic of direct_scores, so a score does not depend on which queries share the register tile. Three queries
   × four keys keep twelve chains in flight, seven loads feeding twelve multiply-adds. */
INL void score_block(int t, int N, const float *const *qp, const uint8_t *k, size_t rs, int64_t hd, int j0,
                     __m128 scale, float *const *sp) {
    __m256 a[3][4];
    for (int u = 0; u < N; u++)
        for (int j = 0; j < 4; j++) a[u][j] = _mm256_setzero_ps();
    const uint8_t *k0 = k + (size_t)j0 * rs;
    for (int64_t c = 0; c < hd; c += 8) {
        __m256 y[3];
        for (int u = 0; u < N; u++) y[u] = _mm256_loadu_ps(qp[u] + c);
        for (int j = 0; j < 4; j++) {
            const __m256 x = cache8(t, k0 + (size_t)j * rs, c);
            for (int u = 0; u < N; u++) a[u][j] = _mm256_fmadd_ps(y[u], x, a[u][j]);
        }
    }
    for (int u = 0; u < N; u++) _mm_storeu_ps(sp[u] + j0, _mm_mul_ps(reduce4(a[u][0], a[u][1], a[u][2], a[u][3]), scale));
}

/* Few queries (N ≤ 4: one decoding row's heads) over a whole f32/f16 tile straight from the cache, with no tile
   copy: each key chunk is converted once for all N queries. The arithmetic is score_block's, so a query gets the
   same bits here as in a tile of many. */
INL void direct_scores(int t, int N, const float *const *qp, const uint8_t *k, size_t row_bytes, int64_t hd,
                       __m128 scale, float *const *sp) {
    for (int j = 0; j < TT; j += 2) {
        const uint8_t *k0 = k + (size_t)j * row_bytes, *k1 = k0 + row_bytes;
        __m256 a0[4], a1[4];
        for (int u = 0; u < 4; u++) { a0[u] = _mm256_setzero_ps(); a1[u] = a0[u]; }
        for (int64_t c = 0; c < hd; c += 8) {
            const __m256 x0 = cache8(t, k0, c), x1 = cache8(t, k1, c);
            for (int u = 0; u < N; u++) {
                const __m256 y = _mm256_loadu_ps(qp[u] + c);
                a0[u] = _mm256_fmadd_ps(y, x0, a0[u]);
                a1[u] = _mm256_fmadd_ps(y, x1, a1[u]);
            }
        }
        for (int u = 0; u < N; u += 2) {
            const int w = u + 1 < N ? u + 1 : u;
            float s4[4];
            _mm_storeu_ps(s4, _mm_mul_ps(reduce4(a0[u], a1[u], a0[w], a1[w]), scale));
            sp[u][j] = s4[0];
            sp[u][j + 1] = s4[1];
            sp[w][j] = s4[2];
            sp[w][j + 1] = s4[3];
        }
    }
}

/* acc = acc·alpha + Σ_j p_j v_j over columns [c, c + n·8) of N ≤ 4 queries (N × n ≤ 12; both constants where
   called, so the tile lives in registers), from value rows rs bytes apart: f32/f16 cache rows, or the f32 tile copy.
   Per 8 columns one chain, acc·alpha then the sixteen keys in order, whichever path runs it and whichever queries
   share the tile, so a query's result does not depend on its neighbours; each value load feeds N multiply-adds. */
INL void values_at(int t, int N, int n, const float *const *pp, const float *alpha, const uint8_t *v, size_t rs,
                   int64_t c, float *const *ap) {
    __m256 x[4][4];
    for (int u = 0; u < N; u++) {
        const __m256 al = _mm256_set1_ps(alpha[u]);
        for (int k = 0; k < n; k++) x[u][k] = rescale(_mm256_loadu_ps(ap[u] + c + 8 * k), alpha[u], al);
    }
    for (int j = 0; j < TT; j++) {
        const uint8_t *vj = v + (size_t)j * rs;
        __m256 b[4];
        for (int u = 0; u < N; u++) b[u] = _mm256_broadcast_ss(pp[u] + j);
        for (int k = 0; k < n; k++) {
            const __m256 y = cache8(t, vj, c + 8 * k);
            for (int u = 0; u < N; u++) x[u][k] = _mm256_fmadd_ps(b[u], y, x[u][k]);
        }
    }
    for (int u = 0; u < N; u++)
        for (int k = 0; k < n; k++) _mm256_storeu_ps(ap[u] + c + 8 * k, x[u][k]);
}

INL void direct_values(int t, int N, const float *const *pp, const float *alpha, const uint8_t *v, size_t row_bytes,
                       int64_t hd, float *const *ap) {
    int64_t c = 0;
    if (N <= 2)
        for (; c + 32 <= hd; c += 32) values_at(t, N, 4, pp, alpha, v, row_bytes, c, ap);
    else
        for (; c + 16 <= hd; c += 16) values_at(t, N, 2, pp, alpha, v, row_bytes, c, ap);
    for (; c < hd; c += 8) values_at(t, N, 1, pp, alpha, v, row_bytes, c, ap);
}

/* The AVX2 tile (hd a multiple of 8): scores with the keys row-major, so a tile needs a conversion, not a transpose,
   and a task of at most four queries (one decoding row's heads) reads whole f32/f16 tiles from the cache without
   a copy; larger tasks copy the tile once and run 3-query × 4-key score tiles and 3-query × 32-column value tiles. */
TGT static void tiled_avx2(int t, int64_t hd, float scale, const float *q, int64_t rows, int64_t heads,
                           size_t q_row_stride, int64_t pos0, int64_t window, const tern_kv_segment *segs, int64_t nseg,
                           size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t k_lo, int64_t k_hi,
                           float *work, float *out, size_t out_row_stride, float *lse, const float *state_in,
                           float *state_out) {
    const int64_t nq = rows * heads;
    float *kf, *v, *acc, *sc, *m, *l, *alpha;
    int64_t first, last;
    begin(work, hd, nq, rows, pos0, window, k_lo, k_hi, &kf, &v, &acc, &sc, &m, &l, &alpha, &first, &last);
    /* The queries a tile touches: index, visible columns, query vector (the pointers take two floats' room each). */
    int32_t *active = (int32_t *)(void *)(alpha + nq);
    uint32_t *act_keep = (uint32_t *)(void *)(active + nq);
    const float **act_q = (const float **)(void *)(act_keep + nq + (nq & 1));
    if (state_in) load_state(hd, nq, state_in, acc, m, l);
    const __m128 vscale = _mm_set1_ps(scale);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    int64_t cursor = 0;
    for (int64_t a = first - first % TT; a < last; a += TT) {
        /* At most four queries (one decoding row's heads) read a whole f32/f16 tile where it lies; anything else goes
           through the copy. */
        const uint8_t *vrows = NULL;
        const uint8_t *krows = nq <= 4 ? whole_tile(t, segs, nseg, &cursor, layer_offset, row_bytes, head_offset, a, k_lo,
                                                    k_hi, &vrows)
                                       : NULL;
        const uint32_t valid = krows ? 0xffffu
                                     : load_tile_rows(t, hd, segs, nseg, &cursor, layer_offset, row_bytes, head_offset, a,
                                                      k_lo, k_hi, kf, v);
        if (a + TT < last) prefetch_tile(t, hd, segs, nseg, cursor, layer_offset, row_bytes, head_offset, a + TT, k_hi);
        if (!valid) continue;
        /* Which queries see any key of the tile (a row's visible range found once for its heads, with no division
           per query), then their raw scores. */
        int64_t nact = 0;
        for (int64_t r = 0; r < rows; r++) {
            int64_t lo, hi;
            visible(pos0, r, window, k_lo, k_hi, &lo, &hi);
            const uint32_t keep = valid & range_bits(a, lo, hi);
            if (!keep) continue;
            for (int64_t h = 0; h < heads; h++, nact++) {
                active[nact] = (int32_t)(r * heads + h);
                act_keep[nact] = keep;
                act_q[nact] = q + (size_t)r * q_row_stride + (size_t)h * hd;
            }
        }
        if (!nact) continue;
        int64_t u = 0;
        const float *qp[4], *pp[4];
        float *sp[4], *ap[4], al[4];
        if (krows) {
            for (u = 0; u < nact; u++) {
                qp[u] = act_q[u];
                sp[u] = sc + active[u] * TT;
            }
            switch (nact) {
            case 1: direct_scores(t, 1, qp, krows, row_bytes, hd, vscale, sp); break;
            case 2: direct_scores(t, 2, qp, krows, row_bytes, hd, vscale, sp); break;
            case 3: direct_scores(t, 3, qp, krows, row_bytes, hd, vscale, sp); break;
            default: direct_scores(t, 4, qp, krows, row_bytes, hd, vscale, sp); break;
            }
            u = nact;
        }
        for (; u < nact; u += 3) {
            const int N = nact - u < 3 ? (int)(nact - u) : 3;
            for (int w = 0; w < N; w++) {
                qp[w] = act_q[u + w];
                sp[w] = sc + active[u + w] * TT;
            }
            for (int j0 = 0; j0 < TT; j0 += 4) {
                if (!(valid >> j0 & 15)) continue;
                const uint8_t *kt = (const uint8_t *)kf;
                switch (N) {
                case 1: score_block(TERN_F32, 1, qp, kt, (size_t)hd * 4, hd, j0, vscale, sp); break;
                case 2: score_block(TERN_F32, 2, qp, kt, (size_t)hd * 4, hd, j0, vscale, sp); break;
                default: score_block(TERN_F32, 3, qp, kt, (size_t)hd * 4, hd, j0, vscale, sp); break;
                }
            }
        }
        /* Online softmax, query by query; the scores become the tile's weights in place. */
        for (u = 0; u < nact; u++) {
            const int64_t i = active[u];
            const uint32_t keep = act_keep[u];
            /* A whole visible tile (the common case) needs no masks: blending or and-ing with all ones is the
               identity, so both ways give the same bits. */
            const int whole = keep == 0xffffu;
            const __m256 mk0 = whole ? _mm256_setzero_ps() : lane_mask(keep & 0xff), mk1 = whole ? mk0 : lane_mask(keep >> 8);
            __m256 x0 = _mm256_loadu_ps(sc + i * TT), x1 = _mm256_loadu_ps(sc + i * TT + 8);
            if (!whole) {
                x0 = _mm256_blendv_ps(ninf, x0, mk0);
                x1 = _mm256_blendv_ps(ninf, x1, mk1);
            }
            const float mt = hmax8(_mm256_max_ps(x0, x1));
            const float mn = m[i] > mt ? m[i] : mt;
            /* expf(0) is exactly 1: no call when the maximum stays. */
            alpha[i] = m[i] == -INFINITY ? 0.0f : m[i] == mn ? 1.0f : expf(m[i] - mn);
            const __m256 vm = _mm256_set1_ps(mn);
            __m256 p0 = exp256(_mm256_sub_ps(x0, vm)), p1 = exp256(_mm256_sub_ps(x1, vm));
            if (!whole) {
                p0 = _mm256_and_ps(p0, mk0);
                p1 = _mm256_and_ps(p1, mk1);
            }
            _mm256_storeu_ps(sc + i * TT, p0);
            _mm256_storeu_ps(sc + i * TT + 8, p1);
            l[i] = l[i] * alpha[i] + hsum8(_mm256_add_ps(p0, p1));
            m[i] = mn;
        }
        /* The weighted values, three queries × 32 columns at a time (twelve independent chains; with 16 columns
           they were latency-bound). */
        if (krows) {
            for (u = 0; u < nact; u++) {
                const int64_t i = active[u];
                pp[u] = sc + i * TT;
                ap[u] = acc + i * hd;
                al[u] = alpha[i];
            }
            switch (nact) {
            case 1: direct_values(t, 1, pp, al, vrows, row_bytes, hd, ap); break;
            case 2: direct_values(t, 2, pp, al, vrows, row_bytes, hd, ap); break;
            case 3: direct_values(t, 3, pp, al, vrows, row_bytes, hd, ap); break;
            default: direct_values(t, 4, pp, al, vrows, row_bytes, hd, ap); break;
            }
            continue;
        }
        for (u = 0; u < nact; u += 3) {
            const int N = nact - u < 3 ? (int)(nact - u) : 3;
            for (int w = 0; w < N; w++) {
                const int64_t i = active[u + w];
                pp[w] = sc + i * TT;
                ap[w] = acc + i * hd;
                al[w] = alpha[i];
            }
            int64_t c = 0;
            const uint8_t *vt = (const uint8_t *)v;
            for (; c + 32 <= hd; c += 32) switch (N) {
                case 1: values_at(TERN_F32, 1, 4, pp, al, vt, (size_t)hd * 4, c, ap); break;
                case 2: values_at(TERN_F32, 2, 4, pp, al, vt, (size_t)hd * 4, c, ap); break;
                default: values_at(TERN_F32, 3, 4, pp, al, vt, (size_t)hd * 4, c, ap); break;
                }
            for (; c < hd; c += 8) values_at(TERN_F32, N, 1, pp, al, vt, (size_t)hd * 4, c, ap);
        }
    }
    if (state_out) save_state(hd, nq, acc, m, l, state_out);
    else finish(hd, nq, heads, acc, m, l, out, out_row_stride, lse);
}
#endif

void tern_attn_tiled_state(int kv_type, int64_t hd, float scale, const float *q, int64_t rows, int64_t heads,
                           size_t q_row_stride, int64_t pos0, int64_t window, const tern_kv_segment *segs, int64_t nseg,
                           size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t k_lo, int64_t k_hi,
                           float *work, float *out, size_t out_row_stride, float *lse, const float *state_in,
                           float *state_out) {
    if (rows <= 0 || heads <= 0 || hd <= 0) return;
    if (kv_type == TERN_Q8_0 && hd % TERN_QK != 0) return;
#ifdef TERN_X86
    if (tern_active_path() >= TERN_PATH_AVX2 && hd % 8 == 0) {
        tiled_avx2(kv_type, hd, scale, q, rows, heads, q_row_stride, pos0, window, segs, nseg, layer_offset, row_bytes,
                   head_offset, k_lo, k_hi, work, out, out_row_stride, lse, state_in, state_out);
        return;
    }
#endif
    tiled_scalar(kv_type, hd, scale, q, rows, heads, q_row_stride, pos0, window, segs, nseg, layer_offset, row_bytes,
                 head_offset, k_lo, k_hi, work, out, out_row_stride, lse, state_in, state_out);
}

void tern_attn_tiled(int kv_type, int64_t hd, float scale, const float *q, int64_t rows, int64_t heads,
                     size_t q_row_stride, int64_t pos0, int64_t window, const tern_kv_segment *segs, int64_t nseg,
                     size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t k_lo, int64_t k_hi,
                     float *work, float *out, size_t out_row_stride, float *lse) {
    tern_attn_tiled_state(kv_type, hd, scale, q, rows, heads, q_row_stride, pos0, window, segs, nseg, layer_offset,
                          row_bytes, head_offset, k_lo, k_hi, work, out, out_row_stride, lse, NULL, NULL);
}
