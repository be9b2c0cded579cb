/* Selective scan (mamba_ssm semantics) for the CPU: forward and backward, float32 and float64.
 *
 * Work is split into blocks of LANES consecutive channels of one batch element that share a
 * B/C group; a block's channels run in lock step in one SIMD vector (GCC/Clang vector
 * extensions), which keeps d_state = 1 as efficient as d_state = 16. Blocks are spread over
 * OpenMP threads.
 * Inputs are row-major contiguous: u, delta, z, out (batch, dim, length); A (dim, state);
 * B, C (batch, groups, state, length); D, delta_bias (dim) or NULL.
 * The backward recomputes the states of one (block, state) pair at a time into per-thread
 * scratch, so no (batch, dim, length, state) tensor is ever stored.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#else
static int omp_get_thread_num(void) { return 0; }
#endif

#define LANES 8

typedef float vec_f32 __attribute__((vector_size(LANES * sizeof(float))));
typedef double vec_f64 __attribute__((vector_size(LANES * sizeof(double))));
typedef int32_t vec_i32 __attribute__((vector_size(LANES * sizeof(int32_t))));

static inline vec_f32 vmax_f32(vec_f32 a, vec_f32 b) {
    for (int k = 0; k < LANES; ++k) a[k] = a[k] > b[k] ? a[k] : b[k];
    return a;
}

static inline vec_f32 vmin_f32(vec_f32 a, vec_f32 b) {
    for (int k = 0; k < LANES; ++k) a[k] = a[k] < b[k] ? a[k] : b[k];
    return a;
}

static inline vec_f32 vabs_f32(vec_f32 a) {
    return (vec_f32)((vec_i32)a & 0x7fffffff);
}

/* exp over a float vector: Cephes-style range reduction and degree-6 polynomial (~1 ulp). */
static inline vec_f32 vexp_f32(vec_f32 x) {
    const vec_f32 zero = {0}, magic = zero + 12582912.0f; /* 1.5 * 2^23 */
    x = vmin_f32(vmax_f32(x, zero - 87.0f), zero + 88.0f);
    vec_f32 shifted = x * 1.44269504088896341f + magic; /* round(x / ln 2) lands in the mantissa */
    vec_f32 n = shifted - magic;
    vec_i32 ni = (vec_i32)shifted - (vec_i32)magic;
    vec_f32 r = x - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    vec_f32 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    return p * (vec_f32)((ni + 127) << 23);
}

static inline vec_f32 vsigmoid_f32(vec_f32 x) { return 1.0f / (1.0f + vexp_f32(-x)); }

/* softplus(x) = max(x, 0) + log1p(exp(-|x|)), log1p(y) = 2 atanh(y / (2 + y)) by its series. */
static inline vec_f32 vsoftplus_f32(vec_f32 x) {
    const vec_f32 zero = {0};
    vec_f32 y = vexp_f32(-vabs_f32(x));
    vec_f32 s = y / (2.0f + y), s2 = s * s;
    vec_f32 p = s2 * (1.0f / 15) + 1.0f / 13;
    p = p * s2 + 1.0f / 11;
    p = p * s2 + 1.0f / 9;
    p = p * s2 + 1.0f / 7;
    p = p * s2 + 1.0f / 5;
    p = p * s2 + 1.0f / 3;
    p = p * s2 + 1.0f;
    return vmax_f32(x, zero) + 2.0f * s * p;
}

/* float64 is the precision path (tests, gradcheck): libm lane by lane. */
static inline vec_f64 vexp_f64(vec_f64 x) {
    for (int k = 0; k < LANES; ++k) x[k] = exp(x[k]);
    return x;
}

static inline vec_f64 vsigmoid_f64(vec_f64 x) {
    for (int k = 0; k < LANES; ++k) x[k] = 1 / (1 + exp(-x[k]));
    return x;
}

static inline vec_f64 vsoftplus_f64(vec_f64 x) {
    for (int k = 0; k < LANES; ++k) x[k] = x[k] > 20 ? x[k] : log1p(exp(x[k]));
    return x;
}

/* Sums of the lanes of 8 vectors, as one vector (a transposing add tree). */
#define LANE_SUMS_8(VEC, v, out)                                                               \
    do {                                                                                      \
        VEC s01 = __builtin_shufflevector(v[0], v[1], 0, 8, 2, 10, 4, 12, 6, 14) +             \
                  __builtin_shufflevector(v[0], v[1], 1, 9, 3, 11, 5, 13, 7, 15);              \
        VEC s23 = __builtin_shufflevector(v[2], v[3], 0, 8, 2, 10, 4, 12, 6, 14) +             \
                  __builtin_shufflevector(v[2], v[3], 1, 9, 3, 11, 5, 13, 7, 15);              \
        VEC s45 = __builtin_shufflevector(v[4], v[5], 0, 8, 2, 10, 4, 12, 6, 14) +             \
                  __builtin_shufflevector(v[4], v[5], 1, 9, 3, 11, 5, 13, 7, 15);              \
        VEC s67 = __builtin_shufflevector(v[6], v[7], 0, 8, 2, 10, 4, 12, 6, 14) +             \
                  __builtin_shufflevector(v[6], v[7], 1, 9, 3, 11, 5, 13, 7, 15);              \
        VEC q0 = __builtin_shufflevector(s01, s23, 0, 1, 8, 9, 4, 5, 12, 13) +                 \
                 __builtin_shufflevector(s01, s23, 2, 3, 10, 11, 6, 7, 14, 15);                \
        VEC q1 = __builtin_shufflevector(s45, s67, 0, 1, 8, 9, 4, 5, 12, 13) +                 \
                 __builtin_shufflevector(s45, s67, 2, 3, 10, 11, 6, 7, 14, 15);                \
        out = __builtin_shufflevector(q0, q1, 0, 1, 2, 3, 8, 9, 10, 11) +                      \
              __builtin_shufflevector(q0, q1, 4, 5, 6, 7, 12, 13, 14, 15);                     \
    } while (0)

static void *scratch_alloc(size_t bytes) {
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

#define REAL float
#define VEC vec_f32
#define VEXP vexp_f32
#define VSIGMOID vsigmoid_f32
#define VSOFTPLUS vsoftplus_f32
#define FN(name) name##_f32
#include "selective_scan_impl.h"
#undef REAL
#undef VEC
#undef VEXP
#undef VSIGMOID
#undef VSOFTPLUS
#undef FN

#define REAL double
#define VEC vec_f64
#define VEXP vexp_f64
#define VSIGMOID vsigmoid_f64
#define VSOFTPLUS vsoftplus_f64
#define FN(name) name##_f64
#include "selective_scan_impl.h"
