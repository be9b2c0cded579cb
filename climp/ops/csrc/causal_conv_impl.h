/* Mamba-1's causal depthwise conv1d + SiLU, included by selective_scan.c once per REAL type.
 *
 * x is (batch, dim, length) with any strides (sb, sd, st), as the mixer hands over a view of the
 * in_proj output; weight (dim, kernel), bias (dim) or NULL; out and dx are contiguous
 * (batch, dim, length). pre[t] = bias + sum_k w[k] x[t - kernel + 1 + k] (x = 0 before the
 * start), out = silu(pre). The rows of CONV_CHUNK neighbouring channels are gathered together
 * into zero-padded scratch rows (one read of each cache line of a channel-last x), so the loops
 * over steps run on contiguous, SIMD-width-padded arrays. When x, out (and dout, dx) all have a
 * unit channel stride and the kernel at most CONV_CL_MAX_KERNEL taps, a channel-last path runs
 * instead (conv_cl_*: lane = channel, no gather).
 * The backward recomputes pre.
 * Deterministic: the backward splits channels over threads (a fixed contiguous range each), so
 * each channel's dw and dbias are summed by one thread in a fixed order (batch element by batch
 * element, lanes added in a fixed tree), whatever the thread count.
 */

#ifndef CONV_CHUNK
#define CONV_CHUNK 64 /* channels gathered together: a few cache lines of a channel-last x per step */
#endif

/* Per-thread rows: xp (CONV_CHUNK rows: kernel - 1 zeros, then x), pre, sig, dpre (zero from
 * len on), each row SIMD-width padded. */
typedef struct {
    REAL *xp, *pre, *sig, *dpre;
    int64_t padded, row; /* length rounded up to LANES; elements per scratch row */
} FN(conv_scratch_t);

static FN(conv_scratch_t) FN(conv_scratch)(int64_t len, int64_t kernel) {
    FN(conv_scratch_t) s;
    s.padded = (len + LANES - 1) / LANES * LANES;
    s.row = s.padded + (kernel + LANES - 1) / LANES * LANES;
    size_t bytes = (CONV_CHUNK + 3) * s.row * sizeof(REAL);
    s.xp = scratch_alloc(bytes);
    memset(s.xp, 0, bytes);
    s.pre = s.xp + CONV_CHUNK * s.row;
    s.sig = s.pre + s.row;
    s.dpre = s.sig + s.row;
    return s;
}

/* Channels c < n of one batch element (x at channel 0 of the chunk) into the xp rows, step by
 * step, so each cache line of a channel-last x is read once. */
static inline void FN(conv_gather)(const FN(conv_scratch_t) *s, const REAL *x, int64_t sd, int64_t st, int n,
                                   int64_t len, int64_t kernel) {
    for (int64_t t = 0; t < len; ++t)
        for (int c = 0; c < n; ++c) s->xp[c * s->row + kernel - 1 + t] = x[t * st + c * sd];
}

/* pre and sig of xp row c over the padded length. */
static inline void FN(conv_row)(const FN(conv_scratch_t) *s, int c, const REAL *w, REAL b, int64_t kernel) {
    REAL *restrict pre = s->pre;
    for (int64_t t = 0; t < s->padded; ++t) pre[t] = b;
    for (int64_t k = 0; k < kernel; ++k) {
        const REAL wk = w[k], *restrict src = s->xp + c * s->row + k;
        for (int64_t t = 0; t < s->padded; ++t) pre[t] += wk * src[t];
    }
    for (int64_t t = 0; t < s->padded; t += LANES) {
        VEC v;
        memcpy(&v, pre + t, sizeof v);
        v = VSIGMOID(v);
        memcpy(s->sig + t, &v, sizeof v);
    }
}

/* sum_t a[t] b[t] over n (a multiple of LANES) elements: lane sums, then the lanes in order. */
static inline REAL FN(conv_dot)(const REAL *a, const REAL *b, int64_t n) {
    VEC acc = {0};
    for (int64_t t = 0; t < n; t += LANES) {
        VEC va, vb;
        memcpy(&va, a + t, sizeof va);
        memcpy(&vb, b + t, sizeof vb);
        acc += va * vb;
    }
    REAL sum = 0;
    for (int i = 0; i < LANES; ++i) sum += acc[i];
    return sum;
}

/* Channel-last path (x, out, dout and dx all with unit channel stride, as the fused 1D mixer
 * passes them): vector lane = channel, so each step works on the rows as they lie, with no
 * gather. float32 runs 16 lanes where AVX-512 is available (a vector is one 64-byte line of a
 * row; the 16-lane exp2 of ss2d_impl.h, included before this file), float64 VEC's 8 doubles.
 * A block of CLANES channels of one batch element is swept over the steps with its taps, bias and
 * the last K inputs (and, backward, K values of dpre and the tap and bias gradients) in
 * registers: one load of x per step, and the backward runs from the last step down so that dx[t]
 * = sum_k w[k] dpre[t + K - 1 - k] is ready when dpre[t] is, and dpre never goes to memory.
 * Specialised by inlining for full blocks with K = 4 and 3 (the taps' loops unroll), and the loops
 * over steps unrolled by 4, so that shifting a window is renaming registers. */
#if CLIMP_SS2D_FLOAT32 && defined(__AVX512F__)
#define CVEC ss2d_v16
#define CLANES 16
#define CEXP_NEG(x) ss2d_exp2_16((x) * -1.44269504088896341f)
#else
#define CVEC VEC
#define CLANES LANES
#define CEXP_NEG(x) VEXP(-(x))
#endif
#define CONV_INLINE static inline __attribute__((always_inline))
#ifndef CONV_CL_MAX_KERNEL
#define CONV_CL_MAX_KERNEL 64 /* a sweep keeps 4 kernel-long arrays of vectors on the stack */
#endif
/* Steps ahead of a sweep whose rows are prefetched: consecutive steps are a row (1-2 KiB) apart,
 * a stride the hardware prefetchers do not follow; a sweep over rows not in cache takes 10-25%
 * less time, one over cached rows the same. Past the sweep's last step the address is that of a
 * later item's rows, or outside the tensor, which a prefetch may be (it never faults): integer
 * arithmetic forms it. */
#define CONV_PREFETCH 16
#define CONV_PREFETCH_AT(p, offset, write) \
    __builtin_prefetch((const void *)((uintptr_t)(p) + (uintptr_t)((offset) * (int64_t)sizeof(REAL))), write)

/* The first `count` (<= CLANES) elements of p as a vector, zeros beyond; and the inverse store. */
CONV_INLINE CVEC FN(conv_cl_load)(const REAL *p, int count) {
    CVEC v = {0};
    if (count == CLANES)
        memcpy(&v, p, sizeof v);
    else
        for (int j = 0; j < count; ++j) v[j] = p[j];
    return v;
}

CONV_INLINE void FN(conv_cl_store)(REAL *p, CVEC v, int count) {
    if (count == CLANES)
        memcpy(p, &v, sizeof v);
    else
        for (int j = 0; j < count; ++j) p[j] = v[j];
}

/* The taps, then the bias, as kernel + 1 rows of `stride` (dim rounded up to CLANES, zeros
 * beyond dim) elements: a block's tap k is one vector at row k. */
static REAL *FN(conv_cl_table)(const REAL *w, const REAL *bias, int64_t dim, int64_t kernel, int64_t *stride) {
    *stride = (dim + CLANES - 1) / CLANES * CLANES;
    REAL *table = scratch_alloc((size_t)((kernel + 1) * *stride) * sizeof(REAL));
    memset(table, 0, (size_t)((kernel + 1) * *stride) * sizeof(REAL));
    for (int64_t d = 0; d < dim; ++d) {
        for (int64_t k = 0; k < kernel; ++k) table[k * *stride + d] = w[d * kernel + k];
        if (bias) table[kernel * *stride + d] = bias[d];
    }
    return table;
}

/* out = silu(pre) of one block over all steps (x, out at the block's first channel; tab at the
 * block's column of the table). */
CONV_INLINE void FN(conv_cl_fwd_sweep)(const REAL *x, int64_t st, const REAL *tab, int64_t stride, REAL *out,
                                       int64_t ost, int64_t len, int64_t kernel, int count) {
    CVEC wv[kernel], win[kernel]; /* win[k] = x[t - kernel + 1 + k] */
    for (int64_t k = 0; k < kernel; ++k) {
        memcpy(&wv[k], tab + k * stride, sizeof(CVEC));
        win[k] = (CVEC){0};
    }
    CVEC bv;
    memcpy(&bv, tab + kernel * stride, sizeof bv);
#pragma GCC unroll 4
    for (int64_t t = 0; t < len; ++t) {
        for (int64_t k = 0; k + 1 < kernel; ++k) win[k] = win[k + 1];
        CONV_PREFETCH_AT(x, (t + CONV_PREFETCH) * st, 0);
        CONV_PREFETCH_AT(out, (t + CONV_PREFETCH) * ost, 1);
        win[kernel - 1] = FN(conv_cl_load)(x + t * st, count);
        CVEC pre = bv;
        for (int64_t k = 0; k < kernel; ++k) pre += wv[k] * win[k];
        FN(conv_cl_store)(out + t * ost, pre * (1 / (1 + CEXP_NEG(pre))), count); /* pre * VSIGMOID(pre) */
    }
}

/* dx of one block over all steps, last step first, and its tap and bias gradients added to
 * grads[0 .. kernel - 1] and grads[kernel]. */
CONV_INLINE void FN(conv_cl_bwd_sweep)(const REAL *x, int64_t st, const REAL *dout, int64_t gst, REAL *dx,
                                       int64_t ost, const REAL *tab, int64_t stride, CVEC *grads, int64_t len,
                                       int64_t kernel, int count) {
    CVEC wv[kernel], dwv[kernel], win[kernel], dpre[kernel]; /* win[k] = x[t - kernel + 1 + k], dpre[j] at t + j */
    for (int64_t k = 0; k < kernel; ++k) {
        memcpy(&wv[k], tab + k * stride, sizeof(CVEC));
        dwv[k] = grads[k];
        int64_t tt = len - kernel + k;
        win[k] = tt >= 0 ? FN(conv_cl_load)(x + tt * st, count) : (CVEC){0};
        dpre[k] = (CVEC){0};
    }
    CVEC bv, dbv = grads[kernel];
    memcpy(&bv, tab + kernel * stride, sizeof bv);
#pragma GCC unroll 4
    for (int64_t t = len - 1; t >= 0; --t) {
        CONV_PREFETCH_AT(x, (t - CONV_PREFETCH - kernel) * st, 0);
        CONV_PREFETCH_AT(dout, (t - CONV_PREFETCH) * gst, 0);
        CONV_PREFETCH_AT(dx, (t - CONV_PREFETCH) * ost, 1);
        CVEC pre = bv;
        for (int64_t k = 0; k < kernel; ++k) pre += wv[k] * win[k];
        CVEC sig = 1 / (1 + CEXP_NEG(pre));
        CVEC d = FN(conv_cl_load)(dout + t * gst, count) * sig * (1 + pre * (1 - sig));
        for (int64_t j = kernel - 1; j > 0; --j) dpre[j] = dpre[j - 1];
        dpre[0] = d;
        dbv += d;
        for (int64_t k = 0; k < kernel; ++k) dwv[k] += d * win[k];
        CVEC acc = wv[0] * dpre[kernel - 1];
        for (int64_t k = 1; k < kernel; ++k) acc += wv[k] * dpre[kernel - 1 - k];
        FN(conv_cl_store)(dx + t * ost, acc, count);
        for (int64_t k = kernel - 1; k > 0; --k) win[k] = win[k - 1];
        win[0] = t >= kernel ? FN(conv_cl_load)(x + (t - kernel) * st, count) : (CVEC){0};
    }
    for (int64_t k = 0; k < kernel; ++k) grads[k] = dwv[k];
    grads[kernel] = dbv;
}

/* A sweep for a block of `count` channels, with the kernel size a constant where it has its
 * own code. */
#define CONV_CL_DISPATCH(SWEEP, kernel, count, ...)                        \
    do {                                                                   \
        if ((count) == CLANES && (kernel) == 4)                            \
            SWEEP(__VA_ARGS__, 4, CLANES);                                 \
        else if ((count) == CLANES && (kernel) == 3)                       \
            SWEEP(__VA_ARGS__, 3, CLANES);                                 \
        else                                                               \
            SWEEP(__VA_ARGS__, kernel, count);                             \
    } while (0)

static void FN(conv_cl_fwd)(const REAL *x, int64_t sb, int64_t st, const REAL *w, const REAL *bias, REAL *out,
                            int64_t osb, int64_t ost, int64_t batch, int64_t dim, int64_t len, int64_t kernel,
                            int nthreads) {
    int64_t nblocks = (dim + CLANES - 1) / CLANES, stride;
    REAL *table = FN(conv_cl_table)(w, bias, dim, kernel, &stride);
    advise_huge_pages(out, (size_t)((batch - 1) * osb + (len - 1) * ost + dim) * sizeof(REAL));
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        climp_thread_range(batch * nblocks, &begin, &end);
        for (int64_t item = begin; item < end; ++item) {
            int64_t b = item / nblocks, d0 = item % nblocks * CLANES;
            int count = dim - d0 < CLANES ? (int)(dim - d0) : CLANES;
            CONV_CL_DISPATCH(FN(conv_cl_fwd_sweep), kernel, count, x + b * sb + d0, st, table + d0, stride,
                             out + b * osb + d0, ost, len);
        }
    }
    free(table);
}

/* Threads own contiguous ranges of channel blocks; each block's dw and dbias are summed by its
 * thread over batch elements in order (and steps from the last down): the same bits at any
 * thread count. */
static void FN(conv_cl_bwd)(const REAL *x, int64_t sb, int64_t st, const REAL *w, const REAL *bias,
                            const REAL *dout, int64_t gsb, int64_t gst, REAL *dx, int64_t osb, int64_t ost, REAL *dw,
                            REAL *dbias, int64_t batch, int64_t dim, int64_t len, int64_t kernel, int nthreads) {
    int64_t nblocks = (dim + CLANES - 1) / CLANES, stride;
    REAL *table = FN(conv_cl_table)(w, bias, dim, kernel, &stride);
    advise_huge_pages(dx, (size_t)((batch - 1) * osb + (len - 1) * ost + dim) * sizeof(REAL));
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        climp_thread_range(nblocks, &begin, &end);
        CVEC *grads = scratch_alloc((size_t)(kernel + 1) * sizeof(CVEC));
        for (int64_t blk = begin; blk < end; ++blk) {
            int64_t d0 = blk * CLANES;
            int count = dim - d0 < CLANES ? (int)(dim - d0) : CLANES;
            for (int64_t k = 0; k <= kernel; ++k) grads[k] = (CVEC){0};
            for (int64_t b = 0; b < batch; ++b)
                CONV_CL_DISPATCH(FN(conv_cl_bwd_sweep), kernel, count, x + b * sb + d0, st, dout + b * gsb + d0, gst,
                                 dx + b * osb + d0, ost, table + d0, stride, grads, len);
            for (int j = 0; j < count; ++j) {
                for (int64_t k = 0; k < kernel; ++k) dw[(d0 + j) * kernel + k] = grads[k][j];
                if (dbias) dbias[d0 + j] = grads[kernel][j];
            }
        }
        free(grads);
    }
    free(table);
}

void FN(causal_conv_silu_fwd)(const REAL *x, int64_t sb, int64_t sd, int64_t st, const REAL *w, const REAL *bias,
                              REAL *out, int64_t osb, int64_t osd, int64_t ost, int64_t batch, int64_t dim,
                              int64_t len, int64_t kernel, int nthreads) {
    if (sd == 1 && osd == 1 && kernel <= CONV_CL_MAX_KERNEL) {
        FN(conv_cl_fwd)(x, sb, st, w, bias, out, osb, ost, batch, dim, len, kernel, nthreads);
        return;
    }
    int64_t chunks = (dim + CONV_CHUNK - 1) / CONV_CHUNK;
#pragma omp parallel num_threads(nthreads)
    {
        FN(conv_scratch_t) s = FN(conv_scratch)(len, kernel);
        int64_t begin, end;
        climp_thread_range(batch * chunks, &begin, &end);
        for (int64_t item = begin; item < end; ++item) {
            int64_t b = item / chunks, d0 = item % chunks * CONV_CHUNK;
            int n = (int)(dim - d0 < CONV_CHUNK ? dim - d0 : CONV_CHUNK);
            FN(conv_gather)(&s, x + b * sb + d0 * sd, sd, st, n, len, kernel);
            for (int c = 0; c < n; ++c) {
                int64_t d = d0 + c;
                FN(conv_row)(&s, c, w + d * kernel, bias ? bias[d] : 0, kernel);
                REAL *restrict o = out + b * osb + d * osd;
                for (int64_t t = 0; t < len; ++t) o[t * ost] = s.pre[t] * s.sig[t];
            }
        }
        free(s.xp);
    }
}

void FN(causal_conv_silu_bwd)(const REAL *x, int64_t sb, int64_t sd, int64_t st, const REAL *w, const REAL *bias,
                              const REAL *dout, int64_t gsb, int64_t gsd, int64_t gst, REAL *dx, int64_t osb,
                              int64_t osd, int64_t ost, REAL *dw, REAL *dbias, int64_t batch, int64_t dim,
                              int64_t len, int64_t kernel, int nthreads) {
    if (sd == 1 && gsd == 1 && osd == 1 && kernel <= CONV_CL_MAX_KERNEL) {
        FN(conv_cl_bwd)(x, sb, st, w, bias, dout, gsb, gst, dx, osb, ost, dw, dbias, batch, dim, len, kernel, nthreads);
        return;
    }
#pragma omp parallel num_threads(nthreads)
    {
        FN(conv_scratch_t) s = FN(conv_scratch)(len, kernel);
        REAL *ones = scratch_alloc(s.padded * sizeof(REAL));
        for (int64_t t = 0; t < s.padded; ++t) ones[t] = 1;
        int64_t begin, end;
        climp_thread_range(dim, &begin, &end);
        for (int64_t d = begin; d < end; ++d) {
            for (int64_t k = 0; k < kernel; ++k) dw[d * kernel + k] = 0;
            if (dbias) dbias[d] = 0;
        }
        for (int64_t d0 = begin; d0 < end; d0 += CONV_CHUNK) {
            int n = (int)(end - d0 < CONV_CHUNK ? end - d0 : CONV_CHUNK);
            for (int64_t b = 0; b < batch; ++b) {
                FN(conv_gather)(&s, x + b * sb + d0 * sd, sd, st, n, len, kernel);
                for (int c = 0; c < n; ++c) {
                    int64_t d = d0 + c;
                    const REAL *wd = w + d * kernel;
                    FN(conv_row)(&s, c, wd, bias ? bias[d] : 0, kernel);
                    const REAL *restrict g = dout + b * gsb + d * gsd, *restrict sig = s.sig;
                    REAL *restrict pre = s.pre, *restrict dpre = s.dpre;
                    for (int64_t t = 0; t < len; ++t) dpre[t] = g[t * gst] * sig[t] * (1 + pre[t] * (1 - sig[t]));
                    if (dbias) dbias[d] += FN(conv_dot)(dpre, ones, s.padded);
                    for (int64_t k = 0; k < kernel; ++k)
                        dw[d * kernel + k] += FN(conv_dot)(dpre, s.xp + c * s.row + k, s.padded);
                    REAL *restrict dxr = pre; /* pre is spent: dx's row is summed there, then stored */
                    for (int64_t t = 0; t < len; ++t) dxr[t] = wd[kernel - 1] * dpre[t];
                    for (int64_t k = 0; k + 1 < kernel; ++k) {
                        const REAL wk = wd[k], *restrict src = dpre + kernel - 1 - k;
                        for (int64_t t = 0; t < len; ++t) dxr[t] += wk * src[t];
                    }
                    REAL *restrict dxo = dx + b * osb + d * osd;
                    for (int64_t t = 0; t < len; ++t) dxo[t * ost] = dxr[t];
                }
            }
        }
        free(ones);
        free(s.xp);
    }
}

#undef CVEC
#undef CLANES
#undef CEXP_NEG
#undef CONV_INLINE
#undef CONV_CL_DISPATCH
#undef CONV_CL_MAX_KERNEL
#undef CONV_PREFETCH
#undef CONV_PREFETCH_AT
