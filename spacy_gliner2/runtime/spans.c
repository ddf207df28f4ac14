/* Span logits of the markerV0 span scorer (layers.py SpanMarker.score), per record b:
 *
 *   out[b][q][i][w] = bias[b][q] + sum_c max(start[i][c] + end[i + w][c], 0) * query[b][q][c]
 *
 * for the spans (i, i + w) inside the record's n words (w < width) and its first m queries, in
 * fp32, without the (spans, C) hidden layer the torch path builds for every width. Tiles of
 * WIDTHS widths by QUERIES queries keep their sums in registers (16 lanes of c at a time) and
 * reduce them at the end. Compiled and loaded at run time by native.py; (record, start word)
 * pairs run on the OpenMP threads of the process. */
#include <immintrin.h>
#include <stdint.h>

#include "vectors.h"

#define WIDTHS 4  /* widths per tile */
#define QUERIES 6 /* queries per tile: 24 sums, 4 hidden values, a query and a start in 30 of 32 registers */

/* the logits of spans (i, i + w0 .. i + w0 + WIDTHS - 1) for queries q0 .. q0 + QUERIES - 1 (past
   the last valid width or query: computed on a repeated one and not written) */
static inline __attribute__((always_inline)) void tile(const float *start, const float *end, long ld, int c_size,
                                                       const float *query, long q_ld, const float *bias, int widths,
                                                       int queries, float *out, long q_stride) {
    const float *ends[WIDTHS], *qs[QUERIES];
    for (int t = 0; t < WIDTHS; t++) ends[t] = end + (long)(t < widths ? t : widths - 1) * ld;
    for (int u = 0; u < QUERIES; u++) qs[u] = query + (long)(u < queries ? u : queries - 1) * q_ld;
    __m512 acc[WIDTHS][QUERIES];
    for (int t = 0; t < WIDTHS; t++)
        for (int u = 0; u < QUERIES; u++) acc[t][u] = _mm512_setzero_ps();
    const __m512 zero = _mm512_setzero_ps();
    for (int c = 0; c < c_size; c += LANES) {
        __mmask16 mask = lanes_mask(c_size - c);
        __m512 s = _mm512_maskz_loadu_ps(mask, start + c), h[WIDTHS];
        for (int t = 0; t < WIDTHS; t++) h[t] = _mm512_max_ps(_mm512_add_ps(s, _mm512_maskz_loadu_ps(mask, ends[t] + c)), zero);
        for (int u = 0; u < QUERIES; u++) {
            __m512 f = _mm512_maskz_loadu_ps(mask, qs[u] + c);
            for (int t = 0; t < WIDTHS; t++) acc[t][u] = _mm512_fmadd_ps(h[t], f, acc[t][u]);
        }
    }
    float sums[WIDTHS][QUERIES]; /* every sum first (fixed bounds: the sums stay in registers in the loop) */
    for (int t = 0; t < WIDTHS; t++)
        for (int u = 0; u < QUERIES; u++) sums[t][u] = _mm512_reduce_add_ps(acc[t][u]);
    for (int u = 0; u < queries; u++)
        for (int t = 0; t < widths; t++) out[u * q_stride + t] = sums[t][u] + bias[u];
}

/* count records; record b has lengths[b] words, rows first[b] .. of start and end ((words, c_size)
   fp32, row stride ld) and queries[b] queries ((c_size) fp32 rows of query from b * b_stride, row
   stride q_ld; bias from b * bias_stride). out[b][q][i][w] sits at b * out_b + q * out_q + i *
   width + w. Returns 0, or -1 for bad sizes. */
int span_scores_fp32(const float *start, const float *end, long ld, int c_size, int count, const long *first,
                     const int *lengths, const float *query, long b_stride, long q_ld, const float *bias,
                     long bias_stride, const int *queries, int width, float *out, long out_b, long out_q,
                     int threads) {
    if (c_size <= 0 || width <= 0 || threads <= 0 || count < 0) return -1;
    long tasks = 0;
    for (int b = 0; b < count; b++) {
        if (lengths[b] < 0 || queries[b] < 0) return -1;
        tasks += lengths[b];
    }
    /* task t: record b, start word i (records in order) */
#pragma omp parallel for num_threads(threads) schedule(dynamic, 16)
    for (long t = 0; t < tasks; t++) {
        int b = 0;
        long i = t;
        while (i >= lengths[b]) i -= lengths[b++];
        int n = lengths[b], widths = n - (int)i < width ? n - (int)i : width;
        const float *row = start + (first[b] + i) * ld;
        for (int q0 = 0; q0 < queries[b]; q0 += QUERIES) {
            int nq = queries[b] - q0 < QUERIES ? queries[b] - q0 : QUERIES;
            for (int w0 = 0; w0 < widths; w0 += WIDTHS) {
                int nw = widths - w0 < WIDTHS ? widths - w0 : WIDTHS;
                tile(row, end + (first[b] + i + w0) * ld, ld, c_size, query + b * b_stride + q0 * q_ld, q_ld,
                     bias + b * bias_stride + q0, nw, nq, out + b * out_b + q0 * out_q + i * width + w0, out_q);
            }
        }
    }
    return 0;
}
