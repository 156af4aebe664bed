/* Tiled attention (FlashAttention-style) for many query vectors at once: the query heads of a GQA group, over one
   or many query rows (a prefill chunk, or the decoding rows of sequences that share a prefix). Keys and values are
   taken 16 positions at a time into a small f32 tile — keys transposed, so the scores of four queries against the
   sixteen keys are eight independent FMA chains — and each query keeps a running maximum and sum (online
   softmax), so the tile is read from the cache once for every query, not once per query head and row.

   Tiles are cut at absolute positions (multiples of 16), whatever the segments look like, so a paged cache with
   any block size computes exactly what a contiguous one does. The scalar loops are the reference the tests hold
   the AVX2 path to (AVX-512 machines run the AVX2 path: the tile, not the vector width, is what saves memory
   traffic here). */
#include "tern_attention.h"
#include "kernels_internal.h"
#include <math.h>

#define TT 16

size_t tern_attn_tiled_work_floats(int64_t hd, int64_t nq) {
    return (size_t)(2 * TT * hd + nq * hd + nq * TT + 2 * nq + hd + 64);
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

/* Fills the tile at positions [a, a + TT): kt[d * TT + j] = key j's element d, v[j * hd + d], and returns the mask of
   positions present (in a segment and in [k_lo, k_hi)). Absent positions are zero, so no NaN reaches the sums. */
static uint32_t load_tile(int t, int64_t hd, const tern_kv_segment *segs, int64_t nseg, int64_t *cursor,
                          size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t a, int64_t k_lo,
                          int64_t k_hi, float *kt, float *v, float *tmp) {
    uint32_t valid = 0;
    memset(kt, 0, (size_t)(TT * hd) * sizeof(float));
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
            decode_row(t, (const uint8_t *)segs[s].keys + off, hd, tmp);
            for (int64_t d = 0; d < hd; d++) kt[d * TT + j] = tmp[d];
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

/* Lays the work buffer out (key tile, value tile, accumulators, scores, running max and sum, a row), clears the
   running state, and finds the key positions any query row sees. */
static void begin(float *work, int64_t hd, int64_t nq, int64_t rows, int64_t pos0, int64_t window, int64_t k_lo,
                  int64_t k_hi, float **kt, float **v, float **acc, float **sc, float **m, float **l, float **tmp,
                  int64_t *first, int64_t *last) {
    *kt = work;
    *v = *kt + TT * hd;
    *acc = *v + TT * hd;
    *sc = *acc + nq * hd;
    *m = *sc + nq * TT;
    *l = *m + nq;
    *tmp = *l + nq;
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
    float *kt, *v, *acc, *sc, *m, *l, *tmp;
    int64_t first, last;
    begin(work, hd, nq, rows, pos0, window, k_lo, k_hi, &kt, &v, &acc, &sc, &m, &l, &tmp, &first, &last);
    if (state_in) load_state(hd, nq, state_in, acc, m, l);
    int64_t cursor = 0;
    for (int64_t a = first - first % TT; a < last; a += TT) {
        const uint32_t valid = load_tile(t, hd, segs, nseg, &cursor, layer_offset, row_bytes, head_offset, a, k_lo, k_hi, kt, v, tmp);
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
                for (int64_t k = 0; k < hd; k++) d += qi[k] * kt[k * TT + j];
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
#include <immintrin.h>
#define TGT2 __attribute__((target("avx2,fma,f16c")))
#define INL2 static inline __attribute__((always_inline)) TGT2
#include "avx2_exp.h"

INL2 float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

INL2 float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Lane masks (all ones where kept) for 8 positions starting at tile column c. */
INL2 __m256 lane_mask(uint32_t bits) {
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

/* 8 rows × 8 values (f32 or f16 at `row`, rows `stride` bytes apart) transposed into dst[i * TT + r]. */
INL2 void transpose8(int t, const uint8_t *row, size_t stride, float *dst) {
    __m256 r[8];
    for (int i = 0; i < 8; i++) {
        const uint8_t *p = row + (size_t)i * stride;
        r[i] = t == TERN_F32 ? _mm256_loadu_ps((const float *)(const void *)p)
                             : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)p));
    }
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0)), u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0)), u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps(dst + 0 * TT, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(dst + 1 * TT, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(dst + 2 * TT, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(dst + 3 * TT, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(dst + 4 * TT, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(dst + 5 * TT, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(dst + 6 * TT, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(dst + 7 * TT, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* The common tile: all sixteen positions inside one segment and the key range, f32 or f16, hd a multiple of 8 —
   keys go in by 8×8 register transposes and values by vector conversion, with no scalar stores. Returns 0 when
   the tile is not of that kind (the caller then uses load_tile). */
INL2 int load_full_tile_avx2(int t, int64_t hd, const tern_kv_segment *segs, int64_t nseg, int64_t *cursor,
                             size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t a, int64_t k_lo,
                             int64_t k_hi, float *kt, float *v) {
    if ((t != TERN_F32 && t != TERN_F16) || hd % 8 || a < k_lo || a + TT > k_hi) return 0;
    int64_t s = *cursor;
    while (s < nseg && segs[s].first + segs[s].count <= a) s++;
    *cursor = s;
    if (s >= nseg || segs[s].first > a || segs[s].first + segs[s].count < a + TT) return 0;
    const size_t off = layer_offset + (size_t)(a - segs[s].first) * row_bytes + head_offset;
    const uint8_t *k = (const uint8_t *)segs[s].keys + off, *vv = (const uint8_t *)segs[s].values + off;
    const int es = t == TERN_F32 ? 4 : 2;
    for (int64_t d = 0; d < hd; d += 8) {
        transpose8(t, k + (size_t)d * es, row_bytes, kt + d * TT);
        transpose8(t, k + 8 * row_bytes + (size_t)d * es, row_bytes, kt + d * TT + 8);
    }
    for (int j = 0; j < TT; j++) {
        const uint8_t *r = vv + (size_t)j * row_bytes;
        for (int64_t d = 0; d < hd; d += 8) {
            const __m256 x = t == TERN_F32 ? _mm256_loadu_ps((const float *)(const void *)(r + 4 * d))
                                           : _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(r + 2 * d)));
            _mm256_storeu_ps(v + j * hd + d, x);
        }
    }
    return 1;
}

TGT2 static void tiled_avx2(int t, int64_t hd, float scale, const float *q, int64_t rows, int64_t heads,
                            size_t q_row_stride, int64_t pos0, int64_t window, const tern_kv_segment *segs, int64_t nseg,
                            size_t layer_offset, size_t row_bytes, size_t head_offset, int64_t k_lo, int64_t k_hi,
                            float *work, float *out, size_t out_row_stride, float *lse, const float *state_in,
                            float *state_out) {
    const int64_t nq = rows * heads;
    float *kt, *v, *acc, *sc, *m, *l, *tmp;
    int64_t first, last;
    begin(work, hd, nq, rows, pos0, window, k_lo, k_hi, &kt, &v, &acc, &sc, &m, &l, &tmp, &first, &last);
    if (state_in) load_state(hd, nq, state_in, acc, m, l);
    const __m256 vscale = _mm256_set1_ps(scale);
    int64_t cursor = 0;
    for (int64_t a = first - first % TT; a < last; a += TT) {
        const uint32_t valid = load_full_tile_avx2(t, hd, segs, nseg, &cursor, layer_offset, row_bytes, head_offset, a, k_lo,
                                                   k_hi, kt, v)
                                   ? 0xffffu
                                   : load_tile(t, hd, segs, nseg, &cursor, layer_offset, row_bytes, head_offset, a, k_lo, k_hi, kt, v, tmp);
        if (!valid) continue;
        /* Raw scores, four queries at a time against the sixteen keys. */
        int64_t i = 0;
        for (; i + 4 <= nq; i += 4) {
            const float *qp[4];
            for (int u = 0; u < 4; u++) qp[u] = q + (size_t)((i + u) / heads) * q_row_stride + (size_t)((i + u) % heads) * hd;
            __m256 s0[4], s1[4];
            for (int u = 0; u < 4; u++) { s0[u] = _mm256_setzero_ps(); s1[u] = _mm256_setzero_ps(); }
            for (int64_t d = 0; d < hd; d++) {
                const __m256 k0 = _mm256_loadu_ps(kt + d * TT), k1 = _mm256_loadu_ps(kt + d * TT + 8);
                for (int u = 0; u < 4; u++) {
                    const __m256 b = _mm256_broadcast_ss(qp[u] + d);
                    s0[u] = _mm256_fmadd_ps(b, k0, s0[u]);
                    s1[u] = _mm256_fmadd_ps(b, k1, s1[u]);
                }
            }
            for (int u = 0; u < 4; u++) {
                _mm256_storeu_ps(sc + (i + u) * TT, _mm256_mul_ps(s0[u], vscale));
                _mm256_storeu_ps(sc + (i + u) * TT + 8, _mm256_mul_ps(s1[u], vscale));
            }
        }
        for (; i < nq; i++) {
            const float *qi = q + (size_t)(i / heads) * q_row_stride + (size_t)(i % heads) * hd;
            __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
            for (int64_t d = 0; d < hd; d++) {
                const __m256 b = _mm256_broadcast_ss(qi + d);
                s0 = _mm256_fmadd_ps(b, _mm256_loadu_ps(kt + d * TT), s0);
                s1 = _mm256_fmadd_ps(b, _mm256_loadu_ps(kt + d * TT + 8), s1);
            }
            _mm256_storeu_ps(sc + i * TT, _mm256_mul_ps(s0, vscale));
            _mm256_storeu_ps(sc + i * TT + 8, _mm256_mul_ps(s1, vscale));
        }
        /* Online softmax and the weighted values, query by query. */
        const __m256 ninf = _mm256_set1_ps(-INFINITY);
        for (i = 0; i < nq; i++) {
            const int64_t r = i / heads;
            int64_t lo, hi;
            visible(pos0, r, window, k_lo, k_hi, &lo, &hi);
            const uint32_t keep = valid & range_bits(a, lo, hi);
            if (!keep) continue;
            const __m256 mk0 = lane_mask(keep & 0xff), mk1 = lane_mask(keep >> 8);
            const __m256 x0 = _mm256_blendv_ps(ninf, _mm256_loadu_ps(sc + i * TT), mk0);
            const __m256 x1 = _mm256_blendv_ps(ninf, _mm256_loadu_ps(sc + i * TT + 8), mk1);
            const float mt = hmax8(_mm256_max_ps(x0, x1));
            const float mn = m[i] > mt ? m[i] : mt;
            const float alpha = m[i] == -INFINITY ? 0.0f : expf(m[i] - mn);
            const __m256 vm = _mm256_set1_ps(mn);
            const __m256 p0 = _mm256_and_ps(exp256(_mm256_sub_ps(x0, vm)), mk0);
            const __m256 p1 = _mm256_and_ps(exp256(_mm256_sub_ps(x1, vm)), mk1);
            float p[TT];
            _mm256_storeu_ps(p, p0);
            _mm256_storeu_ps(p + 8, p1);
            l[i] = l[i] * alpha + hsum8(_mm256_add_ps(p0, p1));
            m[i] = mn;
            float *ai = acc + i * hd;
            const __m256 va = _mm256_set1_ps(alpha);
            int64_t c = 0;
            for (; c + 8 <= hd; c += 8) {
                __m256 x = _mm256_mul_ps(_mm256_loadu_ps(ai + c), va);
                __m256 y = _mm256_setzero_ps();
                for (int j = 0; j < TT; j += 2) {
                    x = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(v + j * hd + c), x);
                    y = _mm256_fmadd_ps(_mm256_set1_ps(p[j + 1]), _mm256_loadu_ps(v + (j + 1) * hd + c), y);
                }
                _mm256_storeu_ps(ai + c, _mm256_add_ps(x, y));
            }
            for (; c < hd; c++) {
                float x = ai[c] * alpha;
                for (int j = 0; j < TT; j++) x += p[j] * v[j * hd + c];
                ai[c] = x;
            }
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
    if (tern_active_path() >= TERN_PATH_AVX2) {
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
