/* Deterministic parallel loops and reductions for climp's CPU kernels.
 *
 * A kernel whose threads accumulate into shared sums (gradients of parameters shared across the
 * batch, or across channels of a group) gives bit-identical results run after run only if
 *   1. each thread's share of the work is fixed: climp_static_range() splits items 0..n-1 into
 *      contiguous ranges by thread number (never a dynamic schedule, whose item-to-thread map
 *      changes between runs);
 *   2. each thread sums its items in order into its own partial buffer (never atomics or a shared
 *      accumulator, whose summation order depends on timing);
 *   3. the partials are added in thread order: climp_sum_partials_f32/f64().
 * Same inputs and the same team size then give the same bits. Loops without a reduction (each
 * output element written by one item) may use any schedule.
 */
#ifndef CLIMP_PARALLEL_H
#define CLIMP_PARALLEL_H

#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
#endif

/* Items [*begin, *end) of 0..n-1 for part `part` of `parts` (contiguous, sizes differ by <= 1). */
static inline void climp_static_range(int64_t n, int part, int parts, int64_t *begin, int64_t *end) {
    int64_t base = n / parts, extra = n % parts;
    *begin = part * base + (part < extra ? part : extra);
    *end = *begin + base + (part < extra ? 1 : 0);
}

/* This thread's range of 0..n-1 inside a parallel region. */
static inline void climp_thread_range(int64_t n, int64_t *begin, int64_t *end) {
    climp_static_range(n, omp_get_thread_num(), omp_get_num_threads(), begin, end);
}

/* dst[i] (+)= partials[0][i] + partials[1][i] + ... in that order, for i in [begin, end);
 * partial p starts at partials + p * stride. accumulate = 0 overwrites dst. */
#define CLIMP_DEFINE_SUM_PARTIALS(REAL_T, SUFFIX)                                                          \
    static inline void climp_sum_partials_##SUFFIX(REAL_T *dst, const REAL_T *partials, int parts,         \
                                                   int64_t stride, int64_t begin, int64_t end,             \
                                                   int accumulate) {                                      \
        for (int64_t i = begin; i < end; ++i) {                                                            \
            REAL_T s = accumulate ? dst[i] : 0;                                                            \
            for (int p = 0; p < parts; ++p) s += partials[p * stride + i];                                 \
            dst[i] = s;                                                                                    \
        }                                                                                                  \
    }
CLIMP_DEFINE_SUM_PARTIALS(float, f32)
CLIMP_DEFINE_SUM_PARTIALS(double, f64)
#undef CLIMP_DEFINE_SUM_PARTIALS

#endif
