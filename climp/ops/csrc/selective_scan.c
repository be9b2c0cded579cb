/* Selective scan (mamba_ssm semantics) for the CPU: forward and backward, float32 and float64.
 *
 * Work is split into blocks of LANES consecutive channels of one batch element that share a
 * B/C group; a block's channels run in lock step in one SIMD vector (GCC/Clang vector
 * extensions). Blocks are spread over OpenMP threads. d_state = 1 has its own path
 * (selective_scan_state1.h) that works on the rows in place instead of copying them into lanes.
 * Inputs are row-major contiguous: u, delta, z, out (batch, dim, length); A (dim, state);
 * B, C (batch, groups, state, length); D, delta_bias (dim) or NULL.
 * The backward recomputes the states of one block, four states at a time, into per-thread
 * scratch, so no (batch, dim, length, state) tensor is ever stored. The backward is deterministic
 * (fixed work split and summation order, see parallel.h); the forward writes each output once.
 * The forward can also write the last state (batch, dim, state), and the backward take its
 * gradient (both NULL when unused).
 * ss2d_impl.h adds VMamba's fused four-direction scan (SS2D) on the same helpers, and
 * causal_conv_impl.h Mamba-1's causal depthwise conv1d + SiLU, mamba1d_impl.h the fused channel-last
 * scan of Mamba-1's mixer, dwconv2d_impl.h SS2D's channel-last depthwise conv2d + SiLU,
 * rms_norm_impl.h the RMSNorm of the Mamba blocks.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/mman.h>
#endif
#ifdef __AVX__
#include <immintrin.h>
#endif
#include "parallel.h"

#define LANES 8

typedef float vec_f32 __attribute__((vector_size(LANES * sizeof(float))));
typedef double vec_f64 __attribute__((vector_size(LANES * sizeof(double))));
typedef int32_t vec_i32 __attribute__((vector_size(LANES * sizeof(int32_t))));

/* Lane-wise select by a comparison's mask (whole-vector bit operations, never lane by lane). */
static inline vec_f32 vselect_f32(vec_i32 mask, vec_f32 yes, vec_f32 no) {
    return (vec_f32)(((vec_i32)yes & mask) | ((vec_i32)no & ~mask));
}

#ifdef __AVX__
/* One instruction each; same result as the selects below (b where either is NaN). */
static inline vec_f32 vmax_f32(vec_f32 a, vec_f32 b) { return (vec_f32)_mm256_max_ps((__m256)a, (__m256)b); }

static inline vec_f32 vmin_f32(vec_f32 a, vec_f32 b) { return (vec_f32)_mm256_min_ps((__m256)a, (__m256)b); }
#else
static inline vec_f32 vmax_f32(vec_f32 a, vec_f32 b) { return vselect_f32(a > b, a, b); }

static inline vec_f32 vmin_f32(vec_f32 a, vec_f32 b) { return vselect_f32(a < b, a, b); }
#endif

static inline vec_f32 vabs_f32(vec_f32 a) {
    return (vec_f32)((vec_i32)a & 0x7fffffff);
}

typedef uint32_t vec_u32 __attribute__((vector_size(LANES * sizeof(uint32_t))));

#ifdef __AVX2__
/* 2^x over a float vector for x in [-125, 127]: x = i + j/8 + f with j in 0..7, |f| <= 1/16;
 * 2^(j/8) comes from an 8-entry table (one permute), i goes straight into its exponent bits, and
 * 2^f is a degree-3 minimax polynomial (2.7e-8; 1.6e-7 relative error in all, float rounding
 * included). Three multiply-adds and a multiply instead of the fallback's five multiply-adds
 * below: the scans run 4-7% faster. */
/* 2^f for f in [-1/16, 1/16] (cubic), and the bits of 2^(j/8) - (j << 20) for j = 0..7: the
 * pieces of the in-range exp2 at every vector width. */
#define EXP2_SMALL_POLY(f) ((((f) * 0.05549622f + 0.24025764f) * (f) + 0.69314724f) * (f) + 1.0f)
#define EXP2_EIGHTHS_BITS 0x3f800000, 0x3f7b95c2, 0x3f7837f0, 0x3f75fed7, 0x3f7504f3, 0x3f75672a, 0x3f7744fd, \
                          0x3f7ac0c7

static inline vec_f32 vexp2_inrange_f32(vec_f32 t) {
    const vec_f32 zero = {0}, magic = zero + 1572864.0f; /* 1.5 * 2^20: adding it rounds to a multiple of 1/8 */
    const vec_u32 table = {EXP2_EIGHTHS_BITS};
    vec_f32 shifted = t + magic; /* 8 (i + j/8) in the low mantissa bits, j in the lowest 3 */
    vec_f32 f = t - (shifted - magic);
    vec_u32 bits = (vec_u32)shifted;
    vec_u32 s = (vec_u32)_mm256_permutevar8x32_ps((__m256)table, (__m256i)bits) + (bits << 20);
    return (vec_f32)s * EXP2_SMALL_POLY(f);
}
#else
/* 2^x over a float vector for x in [-125, 127]: the integer part of x goes straight into the
 * exponent bits, 2^f on f in [-1/2, 1/2] is a degree-5 minimax polynomial (relative error 2.4e-7). */
static inline vec_f32 vexp2_inrange_f32(vec_f32 t) {
    const vec_f32 zero = {0}, magic = zero + 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    vec_f32 shifted = t + magic; /* round(t) in the low mantissa bits */
    vec_f32 f = t - (shifted - magic);
    vec_f32 p = f * 1.3276467e-3f + 9.675542e-3f;
    p = p * f + 5.5507135e-2f;
    p = p * f + 2.402212e-1f;
    p = p * f + 6.9314694e-1f;
    p = p * f + 1.0f;
    return (vec_f32)((vec_u32)p + ((vec_u32)shifted << 23));
}
#endif

/* 2^x for any x: clamped to [-125, 127] first (below, the result is < 3e-38 instead of 0). */
static inline vec_f32 vexp2_f32(vec_f32 x) {
    const vec_f32 zero = {0};
    return vexp2_inrange_f32(vmin_f32(vmax_f32(x, zero - 125.0f), zero + 127.0f));
}

/* exp(x) = 2^(x log2 e). */
static inline vec_f32 vexp_f32(vec_f32 x) { return vexp2_f32(x * 1.44269504088896341f); }

static inline vec_f32 vsigmoid_f32(vec_f32 x) { return 1.0f / (1.0f + vexp_f32(-x)); }


/* log(1 + y) / y on [0, 1] as a degree-7 polynomial in y, for the softplus of any vector width:
 * softplus(x) = max(x, 0) + y * LOG1P_OVER_Y(y) with y = exp(-|x|). */
#define LOG1P_OVER_Y(y) \
    (((((((((y) * 5.232659e-3f - 2.9505106e-2f) * (y) + 7.822575e-2f) * (y) - 1.366323e-1f) * (y) \
        + 1.9106e-1f) * (y) - 2.484298e-1f) * (y) + 3.3319098e-1f) * (y) - 4.9999493e-1f) * (y) + 0.99999994f)

/* softplus(x) = max(x, 0) + log1p(y), y = exp(-|x|) in (0, 1], with log1p(y) = y q(y), q a degree-8
 * minimax polynomial on [0, 1] (relative error 1.9e-7, no division). When sig is given it also
 * gets sigmoid(x) (softplus' derivative): 1 / (1 + y) for x >= 0, y / (1 + y) below. */
static inline vec_f32 vsoftplus_f32(vec_f32 x, vec_f32 *sig) {
    const vec_f32 zero = {0};
    /* y = exp(-|x|): its argument is never positive, so only the lower clamp is needed */
    vec_f32 y = vexp2_inrange_f32(vmax_f32(vabs_f32(x) * -1.44269504088896341f, zero - 125.0f));
    if (sig) {
        vec_f32 inv = 1.0f / (1.0f + y);
        *sig = vselect_f32(x < zero, y * inv, inv);
    }
    vec_f32 q = LOG1P_OVER_Y(y);
    return vmax_f32(x, zero) + y * q;
}

/* float64 is the precision path (tests, gradcheck): libm lane by lane. */
static inline vec_f64 vexp_f64(vec_f64 x) {
    for (int k = 0; k < LANES; ++k) x[k] = exp(x[k]);
    return x;
}

static inline vec_f64 vmax_f64(vec_f64 a, vec_f64 b) {
    for (int k = 0; k < LANES; ++k) a[k] = a[k] > b[k] ? a[k] : b[k];
    return a;
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

/* Outputs and gradients are usually fresh memory from the allocator, which the kernel faults in
 * one 4 KiB page at a time on first write. Asking for transparent huge pages on their 2 MiB-
 * aligned part makes that up to 512x fewer faults (a no-op where THP is off or unknown; memory
 * use is unchanged, as only whole 2 MiB pages inside the buffer are advised). */
static void advise_huge_pages(void *p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = (uintptr_t)2 << 20;
    uintptr_t start = ((uintptr_t)p + huge - 1) & ~(huge - 1), end = ((uintptr_t)p + bytes) & ~(huge - 1);
    if (p && end > start) madvise((void *)start, end - start, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

static void *scratch_alloc(size_t bytes) {
    size_t rounded = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, rounded ? rounded : 64);
}

#define REAL float
#define VEC vec_f32
#define VEXP vexp_f32
#define VSIGMOID vsigmoid_f32
#define VSOFTPLUS vsoftplus_f32
#define VMAX vmax_f32
/* exp(x / EXP_SCALE), the scan folding the scale into A; _INRANGE for |x| <= EXP_INRANGE only. */
#define VEXP_SCALED vexp2_f32
#define VEXP_SCALED_INRANGE vexp2_inrange_f32
#define EXP_SCALE 1.44269504088896341f
#define EXP_INRANGE 125.0f
#define FN(name) name##_f32
#define SUM_PARTIALS climp_sum_partials_f32
#include "selective_scan_impl.h"
#include "ss2d_impl.h"
#include "causal_conv_impl.h"
#include "dwconv2d_impl.h"
#include "mamba1d_impl.h"
#include "rms_norm_impl.h"
#undef REAL
#undef VEC
#undef VEXP
#undef VSIGMOID
#undef VSOFTPLUS
#undef VMAX
#undef VEXP_SCALED
#undef VEXP_SCALED_INRANGE
#undef EXP_SCALE
#undef EXP_INRANGE
#undef FN
#undef SUM_PARTIALS

#define REAL double
#define VEC vec_f64
#define VEXP vexp_f64
#define VSIGMOID vsigmoid_f64
#define VSOFTPLUS vsoftplus_f64
#define VMAX vmax_f64
#define VEXP_SCALED vexp_f64
#define VEXP_SCALED_INRANGE vexp_f64
#define EXP_SCALE 1.0
#define EXP_INRANGE HUGE_VAL
#define FN(name) name##_f64
#define SUM_PARTIALS climp_sum_partials_f64
#include "selective_scan_impl.h"
#include "ss2d_impl.h"
#include "causal_conv_impl.h"
#include "dwconv2d_impl.h"
#include "mamba1d_impl.h"
#include "rms_norm_impl.h"
