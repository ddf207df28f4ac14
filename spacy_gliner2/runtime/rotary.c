/* Rotary position embedding in place (ModernBERT's queries and keys): for each row r and each of
 * its count vectors x of dh values (halves x1, x2), with the row's angles' cosines c and sines s
 * (dh / 2 each: the two halves of transformers' repeated angles are equal),
 *
 *   x1 <- x1 * c - x2 * s,   x2 <- x2 * c + x1 * s
 *
 * which is transformers' x * cos + rotate_half(x) * sin, in one pass over x. fp32; rows run on
 * the OpenMP threads of the process. Compiled and loaded at run time by native.py. */
#include <immintrin.h>

#include "vectors.h"

/* x: rows of count vectors of dh values (row stride ld, vectors dh apart); angles: per row, dh / 2
   cosines then dh / 2 sines (row stride angles_ld). Returns 0, or -1 for bad sizes. */
int rotate_halves_fp32(float *x, long rows, long ld, int count, int dh, const float *angles, long angles_ld,
                       int threads) {
    if (rows < 0 || count < 0 || dh <= 0 || dh % 2 || threads <= 0) return -1;
    const int half = dh / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *cosines = angles + r * angles_ld, *sines = cosines + half;
        for (int v = 0; v < count; v++) {
            float *x1 = x + r * ld + (long)v * dh, *x2 = x1 + half;
            for (int j = 0; j < half; j += LANES) {
                __mmask16 mask = lanes_mask(half - j);
                __m512 a = _mm512_maskz_loadu_ps(mask, x1 + j), b = _mm512_maskz_loadu_ps(mask, x2 + j);
                __m512 c = _mm512_maskz_loadu_ps(mask, cosines + j), s = _mm512_maskz_loadu_ps(mask, sines + j);
                _mm512_mask_storeu_ps(x1 + j, mask, _mm512_sub_ps(_mm512_mul_ps(a, c), _mm512_mul_ps(b, s)));
                _mm512_mask_storeu_ps(x2 + j, mask, _mm512_add_ps(_mm512_mul_ps(b, c), _mm512_mul_ps(a, s)));
            }
        }
    }
    return 0;
}
