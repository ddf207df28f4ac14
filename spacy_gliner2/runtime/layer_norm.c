/* A transformer's residual step: out[i] = LayerNorm(x[i] + residual[i]) * gamma + beta, row by
 * row (fp32 sums, two passes for the variance), for x in fp32 (exact mode) or bf16 (fast mode:
 * the output of a bf16 layer). It can also write the output rounded to bf16 (nearest even):
 * the next bf16 layer's input, without another pass. Compiled and loaded at run time by
 * native.py; rows run on the OpenMP threads of the process. */
#include <math.h>
#include <stdint.h>

#include "vectors.h"

/* one row; low (or NULL) takes the output in bf16 */
static inline __attribute__((always_inline)) void norm_row(const void *x, long x_at, const float *residual, int d,
                                                            const float *gamma, const float *beta, float eps, float *out,
                                                            uint16_t *low, const int bf16) {
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < d; j += LANES) { /* out may be residual: each value is read before it is written */
        __mmask16 mask = lanes_mask(d - j);
        __m512 s = _mm512_add_ps(load_values(x, x_at + j, mask, bf16), _mm512_maskz_loadu_ps(mask, residual + j));
        sum = _mm512_add_ps(sum, s);
        _mm512_mask_storeu_ps(out + j, mask, s);
    }
    const __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / d);
    __m512 squares = _mm512_setzero_ps();
    for (int j = 0; j < d; j += LANES) {
        __mmask16 mask = lanes_mask(d - j);
        __m512 c = _mm512_maskz_sub_ps(mask, _mm512_maskz_loadu_ps(mask, out + j), mean);
        squares = _mm512_fmadd_ps(c, c, squares);
    }
    const __m512 scale = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(squares) / d + eps));
    for (int j = 0; j < d; j += LANES) {
        __mmask16 mask = lanes_mask(d - j);
        __m512 c = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, out + j), mean), scale);
        __m512 y = _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(mask, gamma + j), _mm512_maskz_loadu_ps(mask, beta + j));
        _mm512_mask_storeu_ps(out + j, mask, y);
        if (low) _mm256_mask_storeu_epi16(low + j, mask, (__m256i)_mm512_cvtneps_pbh(y));
    }
}

/* rows x d values (row strides in values): x (fp32, or bf16 in the _bf16 variant), residual and
   out (fp32), low (bf16, or NULL: not written; only where the CPU has AVX512-BF16); returns 0,
   or -1 for bad sizes. */
#define DEFINE_ADD_NORM(NAME, BF16)                                                                          \
    int NAME(const void *x, long x_ld, const float *residual, long r_ld, int rows, int d, const float *gamma,  \
             const float *beta, float eps, float *out, long out_ld, uint16_t *low, long low_ld, int threads) { \
        if (rows < 0 || d <= 0 || threads <= 0) return -1;                                                   \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                   \
        for (int i = 0; i < rows; i++)                                                                      \
            norm_row(x, i * x_ld, residual + i * r_ld, d, gamma, beta, eps, out + i * out_ld,               \
                     low ? low + i * low_ld : 0, BF16);                                               \
        return 0;                                                                                           \
    }

DEFINE_ADD_NORM(add_layer_norm_fp32, 0)
DEFINE_ADD_NORM(add_layer_norm_bf16, 1)
