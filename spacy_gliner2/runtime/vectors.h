/* What the kernels read with: 16-lane AVX-512 masks and loads of fp32 or bf16 values. */
#ifndef SPACY_GLINER2_VECTORS_H
#define SPACY_GLINER2_VECTORS_H
#include <immintrin.h>
#include <stdint.h>

#define LANES 16 /* fp32 values per zmm register */

/* the first valid lanes (all 16 from 16 on, none below 1) */
static inline __mmask16 lanes_mask(int valid) {
    return valid >= LANES ? (__mmask16)0xFFFF : valid <= 0 ? 0 : (__mmask16)((1u << valid) - 1);
}

/* values at..at + 15 of x (the masked lanes; zeros elsewhere) as fp32: x holds fp32 values, or
   bf16 ones (widened exactly) */
static inline __attribute__((always_inline)) __m512 load_values(const void *x, long at, __mmask16 mask, const int bf16) {
    return bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)x + at)), 16))
                : _mm512_maskz_loadu_ps(mask, (const float *)x + at);
}
#endif
