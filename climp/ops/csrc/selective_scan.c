/* Selective scan (mamba_ssm semantics) for the CPU: forward and backward, float32 and float64.
 *
 * Work is split into blocks of LANES consecutive channels of one batch element that share a
 * B/C group; a block's channels run in lock step in one SIMD vector (GCC/Clang vector
 * extensions). Blocks are spread over OpenMP threads. d_state = 1 has its own path
 * (selective_scan_state1.h) that works on the rows in place instead of copying them into lanes.
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

/* Lane-wise select by a comparison's mask (whole-vector bit operations, never lane by lane). */
static inline vec_f32 vselect_f32(vec_i32 mask, vec_f32 yes, vec_f32 no) {
    return (vec_f32)(((vec_i32)yes & mask) | ((vec_i32)no & ~mask));
}

static inline vec_f32 vmax_f32(vec_f32 a, vec_f32 b) { return vselect_f32(a > b, a, b); }

static inline vec_f32 vmin_f32(vec_f32 a, vec_f32 b) { return vselect_f32(a < b, a, b); }

static inline vec_f32 vabs_f32(vec_f32 a) {
    return (vec_f32)((vec_i32)a & 0x7fffffff);
}

typedef uint32_t vec_u32 __attribute__((vector_size(LANES * sizeof(uint32_t))));

/* exp over a float vector as 2^(x log2 e): the integer part of the exponent goes straight into
 * the exponent bits, 2^f on f in [-1/2, 1/2] is a degree-5 minimax polynomial (relative error
 * 2.4e-7). Inputs are clamped to [-125, 127] ln 2: below, the result is < 3e-38 instead of 0. */
static inline vec_f32 vexp_f32(vec_f32 x) {
    const vec_f32 zero = {0}, magic = zero + 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    vec_f32 t = vmin_f32(vmax_f32(x * 1.44269504088896341f, zero - 125.0f), zero + 127.0f);
    vec_f32 shifted = t + magic; /* round(t) in the low mantissa bits */
    vec_f32 f = t - (shifted - magic);
    vec_f32 p = f * 1.3276467e-3f + 9.675542e-3f;
    p = p * f + 5.5507135e-2f;
    p = p * f + 2.402212e-1f;
    p = p * f + 6.9314694e-1f;
    p = p * f + 1.0f;
    return (vec_f32)((vec_u32)p + ((vec_u32)shifted << 23));
}

static inline vec_f32 vsigmoid_f32(vec_f32 x) { return 1.0f / (1.0f + vexp_f32(-x)); }

/* softplus(x) = max(x, 0) + log1p(y), y = exp(-|x|) in (0, 1], with log1p(y) = y q(y), q a degree-8
 * minimax polynomial on [0, 1] (relative error 1.9e-7, no division). When sig is given it also
 * gets sigmoid(x) (softplus' derivative): 1 / (1 + y) for x >= 0, y / (1 + y) below. */
static inline vec_f32 vsoftplus_f32(vec_f32 x, vec_f32 *sig) {
    const vec_f32 zero = {0};
    vec_f32 y = vexp_f32(-vabs_f32(x));
    if (sig) {
        vec_f32 inv = 1.0f / (1.0f + y);
        *sig = vselect_f32(x < zero, y * inv, inv);
    }
    vec_f32 q = y * 5.232659e-3f - 2.9505106e-2f;
    q = q * y + 7.822575e-2f;
    q = q * y - 1.366323e-1f;
    q = q * y + 1.9106e-1f;
    q = q * y - 2.484298e-1f;
    q = q * y + 3.3319098e-1f;
    q = q * y - 4.9999493e-1f;
    q = q * y + 0.99999994f;
    return vmax_f32(x, zero) + y * q;
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

static inline vec_f64 vsoftplus_f64(vec_f64 x, vec_f64 *sig) {
    if (sig) *sig = vsigmoid_f64(x);
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
