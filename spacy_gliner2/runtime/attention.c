/* Attention of packed sequences: DeBERTa-v2/v3's disentangled attention, per head h of one sequence,
 *
 *   s[i][j] = (q_i . k_j + q_i . c2p[j - i + n - 1] + k_j . p2c[i - j + n - 1]) * scale
 *   out[i][h * dv : (h + 1) * dv] = softmax_j(s[i]) . v
 *
 * for the n tokens of one sequence (or a chosen subset of query rows i); c2p and p2c hold one
 * position row per distance (2n - 1 rows, from distance n - 1 down). Without them it is plain
 * scaled dot-product attention (ModernBERT's), optionally within a sliding window. Inputs are fp32 (exact
 * mode: FMA) or bf16 (fast mode: products of bf16 pairs summed in fp32 with AVX512-BF16, the
 * same sums as fp32 arithmetic on these values in another order, at twice its speed). Both
 * read their rows as 32-bit words (one fp32 value or a pair of bf16 values), so one blocking
 * serves both. Softmax and the product with the values run in fp32 (bf16 values widen
 * exactly); the output has the inputs' type (bf16: rounded to nearest even).
 * Compiled and loaded at run time by native.py; the heads run on the OpenMP threads of the
 * process (torch's own runtime when it is libgomp). */
#include <immintrin.h>
#include <omp.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "vectors.h"

typedef uint32_t word;

#define MR 8      /* rows per micro-tile */
#define PANEL LANES  /* columns per zmm register */
#ifndef BLOCK
#define BLOCK 32  /* query rows per relative-position table (a multiple of PANEL) */
#endif
#define BAND_ROWS 32  /* query rows per block of banded attention */

/* r[c] <- lane c of r[0..15] (a 16 x 16 transpose of 32-bit lanes; bitwise, so for words too) */
static inline void transpose16(__m512 r[PANEL]) {
    __m512 t[PANEL];
    for (int i = 0; i < PANEL; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < PANEL; i += 4) {
        r[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i]), _mm512_castps_pd(t[i + 2])));
        r[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
        r[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[i + 1]), _mm512_castps_pd(t[i + 3])));
    }
    for (int i = 0; i < PANEL; i += 8)
        for (int j = 0; j < 4; j++) {
            t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
            t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
    }
}

/* r[i] <- 16 words from row i of x (row stride ld words), for the valid rows and words; zeros elsewhere */
static inline void load_block(const word *x, long ld, int rows, __mmask16 words, __m512 r[PANEL]) {
    for (int i = 0; i < PANEL; i++)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(words, (const float *)(x + (long)i * ld)) : _mm512_setzero_ps();
}

/* Rows of x (rows x k words, row stride ld words) packed in panels of PANEL rows: for each
   word t, the PANEL rows' words t; rows past the end are zero. 16 x 16 blocks, transposed in registers. */
static void pack_panels(const word *x, long ld, int rows, int k, word *out) {
    __m512 r[PANEL];
    for (int p = 0; p * PANEL < rows; p++, out += (long)k * PANEL) {
        int valid = rows - p * PANEL;
        for (int t = 0; t < k; t += PANEL) {
            load_block(x + (long)p * PANEL * ld + t, ld, valid, lanes_mask(k - t), r);
            transpose16(r);
            for (int c = 0; c < PANEL && t + c < k; c++) _mm512_storeu_ps((float *)(out + (long)(t + c) * PANEL), r[c]);
        }
    }
}

/* acc + a * b, lane by lane: fp32 values, or the two bf16 products of each lane summed. */
static inline __attribute__((always_inline)) __m512 multiply_add(__m512 acc, __m512i a, __m512i b, const int bf16) {
    return bf16 ? _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b)
                : _mm512_fmadd_ps(_mm512_castsi512_ps(a), _mm512_castsi512_ps(b), acc);
}

/* c[i][j] = a[i] . b[j] for i < m, j < n (rows of k words), with b packed by pack_panels (panel p
   at bp + p * bs words: bs = k * PANEL, or more for the first k words of longer panels). */
static inline __attribute__((always_inline)) void gemm_nt(const word *a, long lda, int m, const word *bp, long bs,
                                                           int n, int k, float *c, long ldc, const int bf16) {
    int panels = (n + PANEL - 1) / PANEL;
    for (int p = 0; p < panels; p += 2) {
        int two = p + 1 < panels;
        __mmask16 m0 = lanes_mask(n - p * PANEL), m1 = lanes_mask(n - (p + 1) * PANEL);
        const word *b0p = bp + p * bs, *b1p = b0p + bs;
        for (int i = 0; i < m; i += MR) {
            int mr = m - i < MR ? m - i : MR;
            const word *rows[MR];
            for (int r = 0; r < MR; r++) rows[r] = a + (long)(i + (r < mr ? r : mr - 1)) * lda;
            __m512 acc0[MR], acc1[MR];
            for (int r = 0; r < MR; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
            if (two) /* two panels: 2 * MR accumulators */
                for (int t = 0; t < k; t++) {
                    __m512i b0 = _mm512_loadu_si512(b0p + t * PANEL), b1 = _mm512_loadu_si512(b1p + t * PANEL);
                    for (int r = 0; r < MR; r++) {
                        __m512i av = _mm512_set1_epi32((int)rows[r][t]);
                        acc0[r] = multiply_add(acc0[r], av, b0, bf16);
                        acc1[r] = multiply_add(acc1[r], av, b1, bf16);
                    }
                }
            else
                for (int t = 0; t < k; t++) {
                    __m512i b0 = _mm512_loadu_si512(b0p + t * PANEL);
                    for (int r = 0; r < MR; r++) acc0[r] = multiply_add(acc0[r], _mm512_set1_epi32((int)rows[r][t]), b0, bf16);
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
static inline __attribute__((always_inline)) void skewed(const word *x, long ld, int n, int k, const word *table,
                                                          float *dst, int add, float *tmp, const int bf16) {
    for (int r1 = n; r1 > 0; r1 -= BLOCK) {
        int r0 = r1 > BLOCK ? r1 - BLOCK : 0, first = n - r1, cols = 2 * n - 1 - r0 - first;
        int ldt = (cols + PANEL - 1) / PANEL * PANEL;
        gemm_nt(x + (long)r0 * ld, ld, r1 - r0, table + (long)(first / PANEL) * k * PANEL, (long)k * PANEL, cols, k,
                tmp, ldt, bf16);
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

/* One head's scores s (see the top) into out (n x n); scratch: packed panels, one table block, the p2c part. */
static inline __attribute__((always_inline)) void head_scores(
        const word *q, const word *k, long ld, int n, int dh, const word *c2p, long c2p_ld, const word *p2c,
        long p2c_ld, float scale, float *out, word *packed, float *tmp, float *by_key, const int bf16) {
    pack_panels(k, ld, n, dh, packed);
    gemm_nt(q, ld, n, packed, (long)dh * PANEL, n, dh, out, n, bf16);
    if (c2p) {
        pack_panels(c2p, c2p_ld, 2 * n - 1, dh, packed);
        skewed(q, ld, n, dh, packed, out, 1, tmp, bf16);
    }
    if (p2c) { /* by_key[j][i] = k_j . p2c[i - j + n - 1]: the c2p form with keys as rows */
        pack_panels(p2c, p2c_ld, 2 * n - 1, dh, packed);
        skewed(k, ld, n, dh, packed, by_key, 0, tmp, bf16);
    }
    /* out = (out + by_key^T) * scale, by 16 x 16 blocks: a block of by_key rows, transposed in registers */
    const __m512 factor = _mm512_set1_ps(scale);
    __m512 r[PANEL];
    for (int i0 = 0; i0 < n; i0 += PANEL)
        for (int j0 = 0; j0 < n; j0 += PANEL) {
            __mmask16 columns = lanes_mask(n - j0);
            /* r[c]: by_key[j0 .. j0 + 15][i0 + c] (zeros without p2c) */
            load_block((const word *)by_key + (long)j0 * n + i0, n, p2c ? n - j0 : 0, lanes_mask(n - i0), r);
            if (p2c) transpose16(r);
            for (int c = 0; c < PANEL && i0 + c < n; c++) {
                float *row = out + (long)(i0 + c) * n + j0;
                _mm512_mask_storeu_ps(row, columns, _mm512_mul_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(columns, row), r[c]), factor));
            }
        }
}

/* e^x, 16 lanes, within 2 ulp for x <= 0 (x below -104 gives 0): x = m ln2 + r, |r| <= ln2 / 2,
   e^r by its Taylor series to r^7 (truncation below 6e-9), times 2^m. */
static inline __m512 exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    __m512 m = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(m, _mm512_set1_ps(0.693145751953125f), x); /* ln 2 in two parts: m * high is exact */
    r = _mm512_fnmadd_ps(m, _mm512_set1_ps(1.42860682030941723212e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    static const float taylor[] = {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};
    for (int t = 0; t < 7; t++) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(taylor[t]));
    return _mm512_scalef_ps(p, m);
}

/* dst[j] = e^(src[j] - max src) for j < n (dst may be src); returns 1 / sum_j dst[j]. */
static float softmax_row(const float *src, float *dst, int n) {
    __m512 top = _mm512_set1_ps(-INFINITY), sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += PANEL) top = _mm512_max_ps(top, _mm512_mask_loadu_ps(top, lanes_mask(n - j), src + j));
    const __m512 shift = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    for (int j = 0; j < n; j += PANEL) {
        __mmask16 mask = lanes_mask(n - j);
        __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, src + j), shift));
        sum = _mm512_mask_add_ps(sum, mask, sum, e);
        _mm512_mask_storeu_ps(dst + j, mask, e);
    }
    return 1.0f / _mm512_reduce_add_ps(sum);
}

/* The n rows of dv values (row stride ld words) as fp32 panels for gemm_nt: for each panel of
   PANEL value columns, each row's PANEL values; columns past dv are zero. */
static void pack_values(const word *v, long ld, int n, int dv, float *out, const int bf16) {
    for (int p = 0; p * PANEL < dv; p++, out += (long)n * PANEL) {
        __mmask16 mask = lanes_mask(dv - p * PANEL);
        for (int t = 0; t < n; t++)
            _mm512_storeu_ps(out + (long)t * PANEL, load_values(v + (long)t * ld, p * PANEL, mask, bf16));
    }
}

/* out rows first .. first + m - 1 (row stride out_ld values of the inputs' type, from column col) <-
   context rows (m x dv fp32) times their inverse row sums, rounded to bf16 for bf16 inputs. */
static inline void store_rows(const float *context, int m, int dv, const float *inverse, void *out, long first,
                              long out_ld, long col, const int bf16) {
    for (int i = 0; i < m; i++) {
        const __m512 factor = _mm512_set1_ps(inverse[i]);
        long row = (first + i) * out_ld + col;
        for (int d = 0; d < dv; d += PANEL) {
            __mmask16 mask = lanes_mask(dv - d);
            __m512 x = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, context + (long)i * dv + d), factor);
            if (bf16)
                _mm256_mask_storeu_epi16((uint16_t *)out + row + d, mask, (__m256i)_mm512_cvtneps_pbh(x));
            else
                _mm512_mask_storeu_ps((float *)out + row + d, mask, x);
        }
    }
}

/* One head's scratch over n tokens (dh, dv in words / values), in words: the packed operands,
   then (fp32) the panel rows, the scores by key (later the context), the scores, the packed
   values and the inverse row sums. Fills at[0..5] (unless NULL) with where each starts; returns
   the total. */
static long scratch_layout(int n, int dh, int dv, long at[6]) {
    long dv_padded = (dv + PANEL - 1) / PANEL * PANEL, square = (long)n * n;
    long rows_padded = (2L * n + PANEL) / PANEL * PANEL; /* table rows, padded to panels */
    long by_key = square > (long)n * dv ? square : (long)n * dv; /* then the context */
    long sizes[6] = {rows_padded * dh, BLOCK * (rows_padded + PANEL), by_key, square, n * dv_padded, n};
    long total = 0;
    for (int i = 0; i < 6; total += sizes[i++])
        if (at) at[i] = total;
    return total;
}

/* One head's attention output for the m query rows rows[] (all n when rows is NULL), into
   out (row stride out_ld values of the inputs' type, from column col); its scratch is carved
   out of mine (scratch_layout). */
static inline __attribute__((always_inline)) void head_attention(
        const word *q, const word *k, const word *v, long ld, long v_ld, int n, int dh, const word *c2p,
        long c2p_ld, const word *p2c, long p2c_ld, float scale, const int *rows, int m, void *out, long out_ld,
        long col, word *mine, const int bf16) {
    long at[6];
    scratch_layout(n, dh, bf16 ? 2 * dh : dh, at);
    word *packed = mine;
    float *tmp = (float *)mine + at[1], *by_key = (float *)mine + at[2], *scores = (float *)mine + at[3];
    float *values = (float *)mine + at[4], *inverse = (float *)mine + at[5];
    head_scores(q, k, ld, n, dh, c2p, c2p_ld, p2c, p2c_ld, scale, scores, packed, tmp, by_key, bf16);
    for (int i = 0; i < m; i++) /* row i of the chosen rows: rows[i] >= i, so no row is read after it is written */
        inverse[i] = softmax_row(scores + (long)(rows ? rows[i] : i) * n, scores + (long)i * n, n);
    int dv = bf16 ? 2 * dh : dh;
    pack_values(v, v_ld, n, dv, values, bf16);
    float *context = by_key; /* the p2c part is used up; it holds n * max(n, dv) words */
    gemm_nt((const word *)scores, n, m, (const word *)values, (long)n * PANEL, dv, n, context, dv, 0);
    store_rows(context, m, dv, inverse, out, 0, out_ld, col, bf16);
}

/* One head's attention where query row i reads the keys j with |i - j| <= reach only (no position
   tables), for the m query rows rows[] (all n when NULL), written as head_attention writes them. Per
   block of BAND_ROWS query rows that holds chosen rows: the scores over the keys the block reads
   (from a panel boundary), each chosen row's softmax over its own band (zeros in the block's other
   columns, which add nothing), then the product with those keys' values. */
static inline __attribute__((always_inline)) void band_attention(
        const word *q, const word *k, const word *v, long ld, long v_ld, int n, int dh, int reach, float scale,
        const int *rows, int m, void *out, long out_ld, long col, word *mine, const int bf16) {
    long at[6];
    int dv = bf16 ? 2 * dh : dh;
    scratch_layout(n, dh, dv, at);
    word *packed = mine;
    float *context = (float *)mine + at[2], *scores = (float *)mine + at[3], *values = (float *)mine + at[4];
    float *inverse = (float *)mine + at[5];
    pack_panels(k, ld, n, dh, packed);
    pack_values(v, v_ld, n, dv, values, bf16);
    for (int r0 = 0, next = 0; r0 < n && next < m; r0 += BAND_ROWS) {
        int r1 = r0 + BAND_ROWS < n ? r0 + BAND_ROWS : n, first = next;
        while (next < m && (rows ? rows[next] : next) < r1) next++;
        int count = next - first;
        if (count == 0) continue;
        int lo = (r0 > reach ? r0 - reach : 0) / PANEL * PANEL, hi = r1 + reach < n ? r1 + reach : n;
        int width = hi - lo;
        gemm_nt(q + (long)r0 * ld, ld, r1 - r0, packed + (long)(lo / PANEL) * dh * PANEL, (long)dh * PANEL, width, dh,
                scores, width, bf16);
        for (int c = 0; c < count; c++) { /* chosen row i to row c: i - r0 >= c, so no row is read after it is written */
            int i = rows ? rows[first + c] : first + c;
            int a = (i > lo + reach ? i - reach : lo) - lo, b = (i + reach + 1 < hi ? i + reach + 1 : hi) - lo;
            float *src = scores + (long)(i - r0) * width, *dst = scores + (long)c * width;
            for (int j = a; j < b; j++) src[j] *= scale;
            inverse[c] = softmax_row(src + a, dst + a, b - a);
            for (int j = 0; j < a; j++) dst[j] = 0.0f;
            for (int j = b; j < width; j++) dst[j] = 0.0f;
        }
        gemm_nt((const word *)scores, width, count, (const word *)(values + (long)lo * PANEL), (long)n * PANEL, dv,
                width, context, dv, 0);
        store_rows(context, count, dv, inverse, out, first, out_ld, col, bf16);
    }
}

/* All heads of count sequences whose rows follow one another in q, k, v ((tokens, heads * dh)
   rows of words, row strides ld, v_ld): sequence s has lengths[s] tokens. c2p / p2c (or NULL)
   are per head (2L - 1, dh) tables for L the longest length (head stride, row stride), one row
   per distance L - 1 .. -(L - 1): a sequence of n tokens reads the middle 2n - 1. rows (or NULL:
   all) lists each sequence's query rows to output, row_counts[s] of them, increasing, one
   sequence after another. reach >= 0 (only without tables): query row i reads the keys j with
   |i - j| <= reach only (a sliding window); -1: all keys. out gets the sequences' output rows one
   after another: (rows, heads * dv) values of the inputs' type, row stride out_ld values. Sizes and strides count
   32-bit words but out's. Returns 0, -1 for bad sizes, -2 when memory cannot be allocated.
   (head, sequence) pairs are shared out dynamically, the longest sequences first. One function
   per input type (a macro: OpenMP outlines the loop before inlining could make the type a constant). */
#define DEFINE_ATTENTION(NAME, BF16)                                                                        \
    int NAME(const word *q, const word *k, const word *v, long ld, long v_ld, int count, const int *lengths, \
             int heads, int dh, const word *c2p, long c2p_head, long c2p_ld, const word *p2c, long p2c_head, \
             long p2c_ld, float scale, int reach, const int *rows, const int *row_counts, void *out,        \
             long out_ld, int threads) {                                                                    \
        if (dh <= 0 || heads <= 0 || threads <= 0 || count < 0 || reach < -1) return -1;                    \
        if (reach >= 0 && (c2p || p2c)) return -1;                                                          \
        int dv = BF16 ? 2 * dh : dh, longest = 0;                                                           \
        for (int s = 0; s < count; s++) {                                                                   \
            int n = lengths[s], m = row_counts ? row_counts[s] : n;                                         \
            if (n < 0 || m < 0 || m > n) return -1;                                                         \
            if (n > longest) longest = n;                                                                   \
        }                                                                                                   \
        long *at = malloc(sizeof(long) * 3 * (count + 1)); /* token row, first chosen row, output row */    \
        long each = scratch_layout(longest, dh, dv, 0);                                                     \
        word *base = at ? scratch_for(each, threads) : 0;                                                   \
        if (!base) { free(at); return -2; }                                                                 \
        at[0] = at[1] = at[2] = 0;                                                                          \
        for (int s = 0; s < count; s++) {                                                                   \
            int m = row_counts ? row_counts[s] : lengths[s];                                                \
            at[3 * s + 3] = at[3 * s] + lengths[s];                                                         \
            at[3 * s + 4] = at[3 * s + 1] + (rows ? m : 0);                                                 \
            at[3 * s + 5] = at[3 * s + 2] + m;                                                              \
        }                                                                                                   \
        long tasks = (long)count * heads;                                                                   \
        _Pragma("omp parallel for num_threads(threads) schedule(dynamic)")                                  \
        for (long t = 0; t < tasks; t++) {                                                                  \
            int s = count - 1 - (int)(t / heads), h = (int)(t % heads), n = lengths[s];                     \
            int m = (int)(at[3 * s + 5] - at[3 * s + 2]);                                                   \
            if (m == 0) continue;                                                                           \
            long first = at[3 * s], skip = longest - n; /* the table rows before the middle 2n - 1 */       \
            const word *qh = q + first * ld + (long)h * dh, *kh = k + first * ld + (long)h * dh;            \
            const word *vh = v + first * v_ld + (long)h * dh;                                               \
            const int *chosen = rows ? rows + at[3 * s + 1] : 0;                                            \
            void *to = BF16 ? (void *)((uint16_t *)out + at[3 * s + 2] * out_ld)                            \
                            : (void *)((float *)out + at[3 * s + 2] * out_ld);                              \
            word *mine = base + each * omp_get_thread_num();                                                \
            if (reach >= 0 && n > reach + 1)                                                                \
                band_attention(qh, kh, vh, ld, v_ld, n, dh, reach, scale, chosen, m, to, out_ld, (long)h * dv, \
                               mine, BF16);                                                                 \
            else                                                                                            \
                head_attention(qh, kh, vh, ld, v_ld, n, dh, c2p ? c2p + h * c2p_head + skip * c2p_ld : 0,   \
                               c2p_ld, p2c ? p2c + h * p2c_head + skip * p2c_ld : 0, p2c_ld, scale, chosen, m, \
                               to, out_ld, (long)h * dv, mine, BF16);                                       \
        }                                                                                                   \
        free(at);                                                                                           \
        return 0;                                                                                           \
    }

/* words of scratch for each of threads workers, kept by the calling thread for its next call
   (fresh pages would fault in every time); NULL when out of memory */
static word *scratch_for(long words, int threads) {
    static __thread word *scratch = 0;
    static __thread long capacity = 0;
    if (words * threads > capacity) {
        free(scratch);
        scratch = malloc(sizeof(word) * words * threads);
        capacity = scratch ? words * threads : 0;
    }
    return scratch; /* the workers use the caller's buffer: their own thread-locals are empty */
}

DEFINE_ATTENTION(packed_attention_fp32, 0)
DEFINE_ATTENTION(packed_attention_bf16, 1)
