/* Private to the AVX2 files (avx2.c, avx2_packed.c, avx2_sparse.c, attention_tiled.c): their target attribute and the small inline
   pieces they share. Included inside their TERN_X86 sections, after kernels_internal.h. */
#ifndef TERN_AVX2_INLINE_H
#define TERN_AVX2_INLINE_H

#include <immintrin.h>
#include "kernels_internal.h"

#define TGT __attribute__((target("avx2,fma,f16c")))
#define INL static inline __attribute__((always_inline)) TGT

INL float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The 16 nibble bytes of a Q4_0/Q4_1 block as 32 unsigned values in block order: value j is the low nibble of
   byte j, value j + 16 its high nibble. */
INL __m256i nibbles(const uint8_t *q) {
    __m128i x = _mm_loadu_si128((const __m128i *)q);
    __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(x), _mm_srli_epi16(x, 4), 1);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0f));
}

/* Activation bytes 4k..4k+3 of a block in every 32-bit lane. */
INL __m256i bcast(const tern_q8_block *ab, int k) {
    return _mm256_set1_epi32((int)tern_rd32((const uint8_t *)ab->q + 4 * k));
}

#endif
