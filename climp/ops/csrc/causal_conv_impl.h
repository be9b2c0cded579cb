/* Mamba-1's causal depthwise conv1d + SiLU, included by selective_scan.c once per REAL type.
 *
 * x is (batch, dim, length) with any strides (sb, sd, st), as the mixer hands over a view of the
 * in_proj output; weight (dim, kernel), bias (dim) or NULL; out and dx are contiguous
 * (batch, dim, length). pre[t] = bias + sum_k w[k] x[t - kernel + 1 + k] (x = 0 before the
 * start), out = silu(pre). The rows of CONV_CHUNK neighbouring channels are gathered together
 * into zero-padded scratch rows (one read of each cache line of a channel-last x), so the loops
 * over steps run on contiguous, SIMD-width-padded arrays. When x, out (and dout, dx) all have a
 * unit channel stride, a channel-last path runs instead (conv_cl_*: lane = channel, no gather).
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
 * passes them): vector lane = channel, so each step is K vector multiply-adds on the rows as
 * they lie, with no gather. Blocks of LANES channels; the weights as K vectors per block. */
/* Taps of channels d0 .. d0 + count - 1 as vectors wv[k], and their bias (0 beyond count). */
static inline VEC FN(conv_cl_weights)(const REAL *w, const REAL *bias, int64_t d0, int count, int64_t kernel,
                                      VEC *wv) {
    VEC bv = {0};
    for (int64_t k = 0; k < kernel; ++k) wv[k] = (VEC){0};
    for (int j = 0; j < count; ++j) {
        for (int64_t k = 0; k < kernel; ++k) wv[k][j] = w[(d0 + j) * kernel + k];
        if (bias) bv[j] = bias[d0 + j];
    }
    return bv;
}

/* pre at step t of one block (x at the block's first channel). */
static inline VEC FN(conv_cl_pre)(const REAL *x, int64_t st, int64_t t, const VEC *wv, VEC bv, int64_t kernel,
                                  int count) {
    VEC acc = bv;
    for (int64_t k = 0; k < kernel; ++k) {
        int64_t tt = t - kernel + 1 + k;
        if (tt >= 0) acc += wv[k] * FN(vec_load_n)(x + tt * st, count);
    }
    return acc;
}

static void FN(conv_cl_fwd)(const REAL *x, int64_t sb, int64_t st, const REAL *w, const REAL *bias, REAL *out,
                            int64_t osb, int64_t ost, int64_t batch, int64_t dim, int64_t len, int64_t kernel,
                            int nthreads) {
    int64_t nblocks = (dim + LANES - 1) / LANES;
#pragma omp parallel num_threads(nthreads)
    {
        VEC *wv = scratch_alloc(kernel * sizeof(VEC));
        int64_t begin, end;
        climp_thread_range(batch * nblocks, &begin, &end);
        for (int64_t item = begin; item < end; ++item) {
            int64_t b = item / nblocks, d0 = item % nblocks * LANES;
            int count = dim - d0 < LANES ? (int)(dim - d0) : LANES;
            VEC bv = FN(conv_cl_weights)(w, bias, d0, count, kernel, wv);
            const REAL *xb = x + b * sb + d0;
            REAL *ob = out + b * osb + d0;
            for (int64_t t = 0; t < len; ++t) {
                VEC pre = FN(conv_cl_pre)(xb, st, t, wv, bv, kernel, count);
                FN(vec_store_n)(ob + t * ost, pre * VSIGMOID(pre), count);
            }
        }
        free(wv);
    }
}

/* Threads own contiguous ranges of channel blocks, walked together for each batch element (the
 * blocks share the rows' cache lines); each block's dw and dbias are summed by its thread over
 * batch elements and steps in order: the same bits at any thread count. */
static void FN(conv_cl_bwd)(const REAL *x, int64_t sb, int64_t st, const REAL *w, const REAL *bias,
                            const REAL *dout, int64_t gsb, int64_t gst, REAL *dx, int64_t osb, int64_t ost, REAL *dw,
                            REAL *dbias, int64_t batch, int64_t dim, int64_t len, int64_t kernel, int nthreads) {
    int64_t nblocks = (dim + LANES - 1) / LANES;
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        climp_thread_range(nblocks, &begin, &end);
        int64_t mine = end - begin;
        /* per owned block: taps, bias, tap and bias gradients; one dpre row (zero from len on) */
        VEC *wv = scratch_alloc(((2 * kernel + 2) * (mine ? mine : 1) + len + kernel) * sizeof(VEC));
        VEC *bv = wv + kernel * mine, *dwv = bv + mine, *dbv = dwv + kernel * mine, *dpre = dbv + mine;
        for (int64_t i = 0; i < mine; ++i) {
            int64_t d0 = (begin + i) * LANES;
            int count = dim - d0 < LANES ? (int)(dim - d0) : LANES;
            bv[i] = FN(conv_cl_weights)(w, bias, d0, count, kernel, wv + i * kernel);
            dbv[i] = (VEC){0};
            for (int64_t k = 0; k < kernel; ++k) dwv[i * kernel + k] = (VEC){0};
        }
        for (int64_t t = len; t < len + kernel; ++t) dpre[t] = (VEC){0};
        for (int64_t b = 0; b < batch; ++b)
            for (int64_t i = 0; i < mine; ++i) {
                int64_t d0 = (begin + i) * LANES;
                int count = dim - d0 < LANES ? (int)(dim - d0) : LANES;
                const VEC *wi = wv + i * kernel;
                VEC *dwi = dwv + i * kernel, dbi = dbv[i];
                const REAL *xb = x + b * sb + d0, *gb = dout + b * gsb + d0;
                for (int64_t t = 0; t < len; ++t) {
                    VEC pre = FN(conv_cl_pre)(xb, st, t, wi, bv[i], kernel, count), sig = VSIGMOID(pre);
                    VEC d = FN(vec_load_n)(gb + t * gst, count) * sig * (1 + pre * (1 - sig));
                    dpre[t] = d;
                    dbi += d;
                    for (int64_t k = 0; k < kernel; ++k) {
                        int64_t tt = t - kernel + 1 + k;
                        if (tt >= 0) dwi[k] += d * FN(vec_load_n)(xb + tt * st, count);
                    }
                }
                dbv[i] = dbi;
                REAL *dxb = dx + b * osb + d0;
                for (int64_t t = 0; t < len; ++t) {
                    VEC acc = {0};
                    for (int64_t k = 0; k < kernel; ++k) acc += wi[k] * dpre[t + kernel - 1 - k];
                    FN(vec_store_n)(dxb + t * ost, acc, count);
                }
            }
        for (int64_t i = 0; i < mine; ++i) {
            int64_t d0 = (begin + i) * LANES;
            int count = dim - d0 < LANES ? (int)(dim - d0) : LANES;
            for (int j = 0; j < count; ++j) {
                for (int64_t k = 0; k < kernel; ++k) dw[(d0 + j) * kernel + k] = dwv[i * kernel + k][j];
                if (dbias) dbias[d0 + j] = dbv[i][j];
            }
        }
        free(wv);
    }
}

void FN(causal_conv_silu_fwd)(const REAL *x, int64_t sb, int64_t sd, int64_t st, const REAL *w, const REAL *bias,
                              REAL *out, int64_t osb, int64_t osd, int64_t ost, int64_t batch, int64_t dim,
                              int64_t len, int64_t kernel, int nthreads) {
    if (sd == 1 && osd == 1) {
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
    if (sd == 1 && gsd == 1 && osd == 1) {
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
