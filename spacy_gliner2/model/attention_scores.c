/* Disentangled attention scores of one sequence (DeBERTa-v2/v3, fast mode), from bf16 values:
 *
 *   out[h][i][j] = (q_i . k_j + q_i . c2p[j - i + n - 1] + k_j . p2c[i - j + n - 1]) * scale
 *
 * for the n tokens of one sequence and every head h; c2p and p2c hold one position row per
 * distance (2n - 1 rows, from distance n - 1 down). Products take bf16 pairs and sum in fp32
 * (AVX512-BF16 vdpbf16ps): the same sums as fp32 arithmetic on these bf16 values, in
 * another order, at twice its speed. Compiled and loaded at run time by native.py; the heads
 * run on the OpenMP threads of the process (torch's own runtime when it is libgomp). */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

typedef uint16_t bf16;

#define MR 8      /* rows per micro-tile */
#define PANEL 16  /* columns per zmm register */
#ifndef BLOCK
#define BLOCK 32  /* query rows per relative-position table (a multiple of PANEL) */
#endif

/* Rows of x (rows x k, row stride ld) packed in panels of PANEL rows: for each pair t of
   features, PANEL (x[r][2t], x[r][2t + 1]) pairs; rows past the end are zero. */
static void pack_panels(const bf16 *x, long ld, int rows, int k, bf16 *out) {
    int panels = (rows + PANEL - 1) / PANEL, half = k / 2;
    uint32_t *dst = (uint32_t *)out;
    for (int p = 0; p < panels; p++)
        for (int t = 0; t < half; t++)
            for (int r = 0; r < PANEL; r++) {
                int row = p * PANEL + r;
                *dst++ = row < rows ? *(const uint32_t *)(x + row * ld + 2 * t) : 0;
            }
}

static inline __mmask16 cols_mask(int valid) {
    return valid >= PANEL ? (__mmask16)0xFFFF : valid <= 0 ? 0 : (__mmask16)((1u << valid) - 1);
}

/* c[i][j] = a[i] . b[j] for i < m, j < n, with b packed by pack_panels. */
static void gemm_nt(const bf16 *a, long lda, int m, const bf16 *bp, int n, int k, float *c, long ldc) {
    int panels = (n + PANEL - 1) / PANEL, half = k / 2;
    for (int p = 0; p < panels; p += 2) {
        int two = p + 1 < panels;
        __mmask16 m0 = cols_mask(n - p * PANEL), m1 = cols_mask(n - (p + 1) * PANEL);
        const bf16 *b0p = bp + (long)p * half * 32, *b1p = b0p + (long)half * 32;
        for (int i = 0; i < m; i += MR) {
            int mr = m - i < MR ? m - i : MR;
            const bf16 *rows[MR];
            for (int r = 0; r < MR; r++) rows[r] = a + (long)(i + (r < mr ? r : mr - 1)) * lda;
            __m512 acc0[MR], acc1[MR];
            for (int r = 0; r < MR; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
            for (int t = 0; t < half; t++) {
                __m512bh b0 = (__m512bh)_mm512_loadu_si512(b0p + t * 32);
                __m512bh b1 = two ? (__m512bh)_mm512_loadu_si512(b1p + t * 32) : (__m512bh)_mm512_setzero_si512();
                for (int r = 0; r < MR; r++) {
                    __m512bh av = (__m512bh)_mm512_set1_epi32(*(const int32_t *)(rows[r] + 2 * t));
                    acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
                    acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
                }
            }
            for (int r = 0; r < mr; r++) {
                float *out = c + (long)(i + r) * ldc + p * PANEL;
                _mm512_mask_storeu_ps(out, m0, acc0[r]);
                if (two) _mm512_mask_storeu_ps(out + PANEL, m1, acc1[r]);
            }
        }
    }
}

/* dst[i][j] (+)= x[i] . table[j - i + n - 1] for i, j < n, table packed by pack_panels: per
   block of query rows [r0, r1), one product with the n + r1 - r0 - 1 table rows it reads (from
   row n - r1), read skewed. Blocks are laid from the end, so that they start on a panel. */
static void skewed(const bf16 *x, long ld, int n, int k, const bf16 *table, float *dst, int add, float *tmp) {
    int half = k / 2;
    for (int r1 = n; r1 > 0; r1 -= BLOCK) {
        int r0 = r1 > BLOCK ? r1 - BLOCK : 0, first = n - r1, cols = 2 * n - 1 - r0 - first;
        int ldt = (cols + PANEL - 1) / PANEL * PANEL;
        gemm_nt(x + (long)r0 * ld, ld, r1 - r0, table + (long)(first / PANEL) * half * 32, cols, k, tmp, ldt);
        for (int i = r0; i < r1; i++) {
            const float *src = tmp + (long)(i - r0) * ldt + (n - 1 - i - first);
            float *row = dst + (long)i * n;
            if (add)
                for (int j = 0; j < n; j++) row[j] += src[j];
            else
                for (int j = 0; j < n; j++) row[j] = src[j];
        }
    }
}

/* One head's scores (see the top); scratch: packed panels, one table block, the p2c part. */
static void head_scores(const bf16 *q, const bf16 *k, long ld, int n, int dh, const bf16 *c2p, long c2p_ld,
                        const bf16 *p2c, long p2c_ld, float scale, float *out, bf16 *packed, float *tmp,
                        float *by_key) {
    pack_panels(k, ld, n, dh, packed);
    gemm_nt(q, ld, n, packed, n, dh, out, n);
    if (c2p) {
        pack_panels(c2p, c2p_ld, 2 * n - 1, dh, packed);
        skewed(q, ld, n, dh, packed, out, 1, tmp);
    }
    if (p2c) { /* by_key[j][i] = k_j . p2c[i - j + n - 1]: the c2p form with keys as rows */
        pack_panels(p2c, p2c_ld, 2 * n - 1, dh, packed);
        skewed(k, ld, n, dh, packed, by_key, 0, tmp);
    }
    /* out = (out + by_key^T) * scale, 16 columns at a time: column i of 16 by_key rows is one gather */
    const __m512i down = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32(n));
    const __m512 factor = _mm512_set1_ps(scale);
    for (int j0 = 0; j0 < n; j0 += PANEL) {
        __mmask16 mask = cols_mask(n - j0);
        for (int i = 0; i < n; i++) {
            float *row = out + (long)i * n + j0;
            __m512 sum = _mm512_maskz_loadu_ps(mask, row);
            if (p2c) sum = _mm512_add_ps(sum, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mask, down, by_key + (long)j0 * n + i, 4));
            _mm512_mask_storeu_ps(row, mask, _mm512_mul_ps(sum, factor));
        }
    }
}

/* All heads of one sequence: q, k are (n, heads * dh) rows (row stride ld); c2p / p2c (or
   NULL) are per head (2n - 1, dh) tables (head stride, row stride); out is (heads, n, n).
   Returns 0, -1 for bad sizes, -2 when scratch memory cannot be allocated. */
int disentangled_scores(const bf16 *q, const bf16 *k, long ld, int n, int heads, int dh, const bf16 *c2p,
                        long c2p_head, long c2p_ld, const bf16 *p2c, long p2c_head, long p2c_ld, float scale,
                        float *out, int threads) {
    if (dh <= 0 || dh % 2 || n <= 0 || heads <= 0 || threads <= 0) return -1;
    long rows = (2L * n + PANEL) / PANEL * PANEL; /* table rows, padded to panels */
    long packed = (rows * dh + 1) / 2, tmp = BLOCK * (rows + PANEL), by_key = (long)n * n; /* in floats */
    long worker = packed + tmp + by_key;
    /* scratch of the calling thread, kept for its next call (fresh pages would fault in each time) */
    static __thread float *scratch = 0;
    static __thread long capacity = 0;
    if (worker * threads > capacity) {
        free(scratch);
        scratch = malloc(sizeof(float) * worker * threads);
        capacity = scratch ? worker * threads : 0;
        if (!scratch) return -2;
    }
    float *base = scratch; /* OpenMP workers see their own (empty) thread-locals */
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int h = 0; h < heads; h++) {
        float *mine = base + worker * omp_get_thread_num();
        head_scores(q + (long)h * dh, k + (long)h * dh, ld, n, dh, c2p ? c2p + h * c2p_head : 0, c2p_ld,
                    p2c ? p2c + h * p2c_head : 0, p2c_ld, scale, out + (long)h * n * n, (bf16 *)mine,
                    mine + packed, mine + packed + tmp);
    }
    return 0;
}
