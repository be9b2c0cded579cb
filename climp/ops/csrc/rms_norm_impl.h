/* RMSNorm over the last dim, included by selective_scan.c once per REAL type.
 *
 * x, y, dy, dx are contiguous (rows, width); weight (width); rstd (rows).
 * Forward: rstd = 1 / sqrt(mean(x^2) + eps), y = x * rstd * weight, rows split over threads.
 * Backward, with g = dy * weight and s = sum(g * x) over a row:
 *   dx = rstd * (g - x * rstd^2 * s / width),  dweight = sum over rows of dy * x * rstd.
 * Row sums run in RMS_LANES vector lanes, the lanes then added in order, the tail last, so a
 * row's result does not depend on the thread count. dweight is deterministic (parallel.h): each
 * thread sums its fixed contiguous range of rows in order into its own partial row, and the
 * partials are added in thread order.
 */

#ifndef RMS_VEC_BYTES
#ifdef __AVX512F__
#define RMS_VEC_BYTES 64 /* 16 floats or 8 doubles per vector */
#else
#define RMS_VEC_BYTES 32
#endif
#endif

typedef REAL FN(rms_vec) __attribute__((vector_size(RMS_VEC_BYTES)));
#define RMS_LANES ((int64_t)(RMS_VEC_BYTES / sizeof(REAL)))

static inline FN(rms_vec) FN(rms_load)(const REAL *p) {
    FN(rms_vec) v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void FN(rms_store)(REAL *p, FN(rms_vec) v) { memcpy(p, &v, sizeof v); }

/* sum_i a[i] b[i] over n elements: vector lanes, lanes in order, then the tail. */
static inline REAL FN(rms_dot)(const REAL *a, const REAL *b, int64_t n) {
    FN(rms_vec) acc = {0};
    int64_t i = 0;
    for (; i + RMS_LANES <= n; i += RMS_LANES) acc += FN(rms_load)(a + i) * FN(rms_load)(b + i);
    REAL sum = 0;
    for (int k = 0; k < RMS_LANES; ++k) sum += acc[k];
    for (; i < n; ++i) sum += a[i] * b[i];
    return sum;
}

void FN(rms_norm_fwd)(const REAL *x, const REAL *weight, REAL *y, REAL *rstd, int64_t rows, int64_t width,
                      double eps, int nthreads) {
    advise_huge_pages(y, (size_t)(rows * width) * sizeof(REAL));
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        climp_thread_range(rows, &begin, &end);
        for (int64_t r = begin; r < end; ++r) {
            const REAL *restrict xr = x + r * width;
            REAL *restrict yr = y + r * width;
            REAL inv = (REAL)(1 / sqrt((double)FN(rms_dot)(xr, xr, width) / (double)width + eps));
            rstd[r] = inv;
            int64_t i = 0;
            for (; i + RMS_LANES <= width; i += RMS_LANES)
                FN(rms_store)(yr + i, FN(rms_load)(xr + i) * inv * FN(rms_load)(weight + i));
            for (; i < width; ++i) yr[i] = xr[i] * inv * weight[i];
        }
    }
}

void FN(rms_norm_bwd)(const REAL *x, const REAL *weight, const REAL *rstd, const REAL *dy, REAL *dx, REAL *dweight,
                      int64_t rows, int64_t width, int nthreads) {
    REAL *partials = scratch_alloc((size_t)nthreads * width * sizeof(REAL));
    advise_huge_pages(dx, (size_t)(rows * width) * sizeof(REAL));
#pragma omp parallel num_threads(nthreads)
    {
        REAL *restrict g = scratch_alloc(width * sizeof(REAL));
        REAL *restrict dw = partials + (int64_t)omp_get_thread_num() * width;
        for (int64_t i = 0; i < width; ++i) dw[i] = 0;
        int64_t begin, end;
        climp_thread_range(rows, &begin, &end);
        for (int64_t r = begin; r < end; ++r) {
            const REAL *restrict xr = x + r * width, *restrict dyr = dy + r * width;
            REAL *restrict dxr = dx + r * width;
            const REAL inv = rstd[r];
            int64_t i = 0;
            for (; i + RMS_LANES <= width; i += RMS_LANES) {
                FN(rms_vec) d = FN(rms_load)(dyr + i), v = FN(rms_load)(xr + i);
                FN(rms_store)(g + i, d * FN(rms_load)(weight + i));
                FN(rms_store)(dw + i, FN(rms_load)(dw + i) + d * v * inv);
            }
            for (; i < width; ++i) {
                g[i] = dyr[i] * weight[i];
                dw[i] += dyr[i] * xr[i] * inv;
            }
            const REAL c = inv * inv * inv * FN(rms_dot)(g, xr, width) / (REAL)width;
            for (i = 0; i + RMS_LANES <= width; i += RMS_LANES)
                FN(rms_store)(dxr + i, FN(rms_load)(g + i) * inv - FN(rms_load)(xr + i) * c);
            for (; i < width; ++i) dxr[i] = g[i] * inv - xr[i] * c;
        }
        free(g);
#pragma omp barrier
        int64_t cbegin, cend;
        climp_thread_range(width, &cbegin, &cend);
        SUM_PARTIALS(dweight, partials, omp_get_num_threads(), width, cbegin, cend, 0);
    }
    free(partials);
}
