/* Channel-last depthwise 2D conv + bias + SiLU (VMamba's SS2D conv branch), included by
 * selective_scan.c once per REAL type after ss2d_impl.h (whose 16-lane exp2 it uses).
 *
 * x: (batch, H, W, C) with strides (sb, sh, sw, 1) (the x half of a gated in_proj output is such
 * a view); w: (kh * kw, C) (tap-major, so a tap's weights for a block of channels are one
 * vector); bias: (C) or NULL; out, dx: contiguous (batch, H, W, C); dw: (kh * kw, C).
 * pre[h, w] = bias + sum_{i, j} w[i, j] x[h + i - ph, w + j - pw] (zero outside the map,
 * ph = (kh - 1) / 2, pw = (kw - 1) / 2), out = silu(pre).
 *
 * Vector lane = channel (contiguous in channel-last), blocks of DLANES channels; a work item is
 * one output row of one batch element, items split into contiguous ranges over threads.
 * The backward recomputes pre and keeps dpre = dout * silu'(pre) for the kh rows an output row of
 * dx reads in a per-thread ring of rows (a thread also computes the dpre of the kh / 2 rows on
 * either side of its range, owned by its neighbours). Each thread sums dw and dbias over the rows
 * it owns, in order, into its own partial; the partials are added in thread order (parallel.h):
 * the same bits for the same inputs and thread count.
 */

/* float32 runs 16 lanes (512 bits) where AVX-512 is available, float64 the 8 doubles of VEC. */
#ifndef CLIMP_DW_FLOAT32_DONE
#define CLIMP_DW_FLOAT32_DONE
#define CLIMP_DW_FLOAT32 1
#ifdef __AVX512F__
static inline ss2d_v16 dw_sigmoid16(ss2d_v16 x) { return 1.0f / (1.0f + ss2d_exp2_16(x * -1.44269504088896341f)); }
#endif
#else
#undef CLIMP_DW_FLOAT32
#define CLIMP_DW_FLOAT32 0
#endif
_Static_assert(sizeof(REAL) == (CLIMP_DW_FLOAT32 ? sizeof(float) : sizeof(double)),
               "dwconv2d_impl.h is included for float32 first, then float64");

#if CLIMP_DW_FLOAT32 && defined(__AVX512F__)
#define DVEC ss2d_v16
#define DLANES 16
#define DSIGMOID dw_sigmoid16
#else
#define DVEC VEC
#define DLANES LANES
#define DSIGMOID VSIGMOID
#endif

/* The first `count` (<= DLANES) elements of p as a vector, zeros beyond; and the inverse store. */
static inline DVEC FN(dw_load)(const REAL *p, int count) {
    DVEC v = {0};
    if (count == DLANES)
        memcpy(&v, p, sizeof v);
    else
        for (int j = 0; j < count; ++j) v[j] = p[j];
    return v;
}

static inline void FN(dw_store)(REAL *p, DVEC v, int count) {
    if (count == DLANES)
        memcpy(p, &v, sizeof v);
    else
        for (int j = 0; j < count; ++j) p[j] = v[j];
}

/* Specialised by inlining with constant kernel sides (3 x 3, VMamba's) and a full block's
 * lane count, so the taps' loops unroll and the taps' vectors stay in registers. */
#define DW_INLINE static inline __attribute__((always_inline))

/* Taps [*lo, *hi) of one axis that land inside the map at output position pos. */
DW_INLINE void FN(dw_taps)(int64_t pos, int64_t size, int64_t k, int64_t *lo, int64_t *hi) {
    int64_t pad = (k - 1) / 2;
    *lo = pad - pos > 0 ? pad - pos : 0;
    *hi = size + pad - pos < k ? size + pad - pos : k;
}

/* sum over taps i in [i0, i1), j in [j0, j1) of v[i * kw + j] * the block at xp + i * si + j * sj
 * (xp: the block's channel 0 at tap (0, 0)). With j0 = 0, j1 = kw constant (a column whose taps
 * are all inside the map) the loops unroll. */
DW_INLINE DVEC FN(dw_taps_dot)(DVEC acc, const REAL *xp, int64_t si, int64_t sj, const DVEC *v, int64_t kh,
                               int64_t kw, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int count) {
    for (int64_t i = 0; i < kh; ++i) {
        if (i < i0 || i >= i1) continue;
        DVEC row = {0}; /* a sum per tap row: shorter dependency chains */
        for (int64_t j = j0; j < j1; ++j) row += v[i * kw + j] * FN(dw_load)(xp + i * si + j * sj, count);
        acc += row;
    }
    return acc;
}

/* A block's taps as vectors wv[t] (zero lanes beyond count). */
DW_INLINE void FN(dw_weights)(const REAL *w, int64_t dim, int64_t taps, int64_t c0, int count, DVEC *wv) {
    for (int64_t t = 0; t < taps; ++t) wv[t] = FN(dw_load)(w + t * dim + c0, count);
}

/* One output row's block: xrow at the block's channel 0 of pixel (h - ph, -pw); taps rows
 * [i0, i1) inside the map. */
DW_INLINE void FN(dw_fwd_block)(const REAL *xrow, int64_t sh, int64_t sw, const REAL *w, const REAL *bias,
                                REAL *orow, int64_t width, int64_t dim, int64_t c0, int64_t kh, int64_t kw,
                                int64_t i0, int64_t i1, int count) {
    DVEC wv[kh * kw];
    FN(dw_weights)(w, dim, kh * kw, c0, count, wv);
    DVEC bv = bias ? FN(dw_load)(bias + c0, count) : (DVEC){0};
    int64_t pw = (kw - 1) / 2;
    for (int64_t col = 0; col < width; ++col) {
        const REAL *xp = xrow + col * sw;
        DVEC pre;
        if (col >= pw && col + pw < width) {
            pre = FN(dw_taps_dot)(bv, xp, sh, sw, wv, kh, kw, i0, i1, 0, kw, count);
        } else {
            int64_t j0, j1;
            FN(dw_taps)(col, width, kw, &j0, &j1);
            pre = FN(dw_taps_dot)(bv, xp, sh, sw, wv, kh, kw, i0, i1, j0, j1, count);
        }
        FN(dw_store)(orow + col * dim, pre * DSIGMOID(pre), count);
    }
}

DW_INLINE void FN(dw_fwd_row)(const REAL *xrow, int64_t sh, int64_t sw, const REAL *w, const REAL *bias, REAL *orow,
                              int64_t h, int64_t height, int64_t width, int64_t dim, int64_t kh, int64_t kw) {
    int64_t i0, i1;
    FN(dw_taps)(h, height, kh, &i0, &i1);
    for (int64_t c0 = 0; c0 < dim; c0 += DLANES) {
        if (dim - c0 >= DLANES)
            FN(dw_fwd_block)(xrow + c0, sh, sw, w, bias, orow + c0, width, dim, c0, kh, kw, i0, i1, DLANES);
        else
            FN(dw_fwd_block)(xrow + c0, sh, sw, w, bias, orow + c0, width, dim, c0, kh, kw, i0, i1, (int)(dim - c0));
    }
}

void FN(dwconv2d_silu_fwd)(const REAL *x, int64_t sb, int64_t sh, int64_t sw, const REAL *w, const REAL *bias,
                           REAL *out, int64_t batch, int64_t height, int64_t width, int64_t dim, int64_t kh,
                           int64_t kw, int nthreads) {
    int64_t ph = (kh - 1) / 2, pw = (kw - 1) / 2;
    advise_huge_pages(out, (size_t)(batch * height * width * dim) * sizeof(REAL));
#pragma omp parallel num_threads(nthreads)
    {
        int64_t begin, end;
        climp_thread_range(batch * height, &begin, &end);
        for (int64_t item = begin; item < end; ++item) {
            int64_t b = item / height, h = item % height;
            const REAL *xrow = x + b * sb + (h - ph) * sh - pw * sw;
            REAL *orow = out + item * width * dim;
            if (kh == 3 && kw == 3)
                FN(dw_fwd_row)(xrow, sh, sw, w, bias, orow, h, height, width, dim, 3, 3);
            else
                FN(dw_fwd_row)(xrow, sh, sw, w, bias, orow, h, height, width, dim, kh, kw);
        }
    }
}

/* The backward works on per-thread rings of rows in a padded layout: a row is (width + 2 pw)
 * pixels of nblocks vectors each (zero lanes beyond C), its pw pixels on either side zero, and a
 * row outside the map is a zero row, so the taps' loops need no bounds. xring holds the kh rows
 * of x that the dpre row being computed reads, dring the kh rows of dpre that the dx row being
 * computed reads. */
typedef struct {
    DVEC *xring, *dring, *zero; /* kh slots each, and one zero row */
    DVEC *grow;                 /* the dout row being read (width x nblocks vectors) */
    DVEC *pdw, *pdb;            /* partial sums: dw (taps x nblocks vectors), dbias (nblocks) */
    int64_t nblocks, slot;      /* vectors per padded row */
} FN(dw_thread_t);

/* A row of width pixels (pixel stride sw) into dst as width x nblocks vectors, read in memory
 * order (one pass over the row's cache lines, instead of one per block); `next`, the row to be
 * read after it (or NULL), is prefetched. */
static void FN(dw_copy_row)(DVEC *dst, const REAL *src, int64_t sw, const REAL *next, int64_t width, int64_t dim,
                            int64_t nblocks) {
    for (int64_t col = 0; col < width; ++col) {
        if (next)
            for (int64_t c = 0; c < dim; c += 64 / sizeof(REAL)) __builtin_prefetch(next + col * sw + c);
        for (int64_t blk = 0; blk < nblocks; ++blk) {
            int64_t c0 = blk * DLANES;
            dst[col * nblocks + blk] = FN(dw_load)(src + col * sw + c0, dim - c0 < DLANES ? (int)(dim - c0) : DLANES);
        }
    }
}

/* dpre of one block of one row into dslot (padded), and when own its dw and dbias shares;
 * xrows[i]: the padded row of x at tap row i. */
DW_INLINE void FN(dw_dpre_block)(DVEC *const *xrows, const DVEC *grow, const REAL *w, const REAL *bias,
                                 DVEC *dslot, DVEC *pdw, DVEC *pdb, int own, int64_t nblocks, int64_t width,
                                 int64_t dim, int64_t c0, int64_t kh, int64_t kw, int count) {
    int64_t taps = kh * kw, blk = c0 / DLANES, pw = (kw - 1) / 2;
    DVEC wv[kh * kw];
    FN(dw_weights)(w, dim, taps, c0, count, wv);
    DVEC bv = bias ? FN(dw_load)(bias + c0, count) : (DVEC){0};
    for (int64_t col = 0; col < width; ++col) {
        DVEC pre = bv;
        for (int64_t i = 0; i < kh; ++i) {
            DVEC row = {0}; /* a sum per tap row: shorter dependency chains */
            for (int64_t j = 0; j < kw; ++j) row += wv[i * kw + j] * xrows[i][(col + j) * nblocks + blk];
            pre += row;
        }
        DVEC sig = DSIGMOID(pre);
        dslot[(col + pw) * nblocks + blk] = grow[col * nblocks + blk] * sig * (1 + pre * (1 - sig));
    }
    if (!own) return;
    DVEC dwv[kh * kw], db = pdb[blk];
    for (int64_t t = 0; t < taps; ++t) dwv[t] = pdw[t * nblocks + blk];
    for (int64_t col = 0; col < width; ++col) {
        DVEC d = dslot[(col + pw) * nblocks + blk];
        db += d;
        for (int64_t i = 0; i < kh; ++i)
            for (int64_t j = 0; j < kw; ++j) dwv[i * kw + j] += d * xrows[i][(col + j) * nblocks + blk];
    }
    pdb[blk] = db;
    for (int64_t t = 0; t < taps; ++t) pdw[t * nblocks + blk] = dwv[t];
}

/* dx of one block of an output row: sum_{i, j} w[i, j] dpre[h + ph - i, col + pw - j], drows[i]
 * the padded dpre row h + ph - i. */
DW_INLINE void FN(dw_dx_block)(DVEC *const *drows, const REAL *w, REAL *dxrow, int64_t nblocks, int64_t width,
                               int64_t dim, int64_t c0, int64_t kh, int64_t kw, int count) {
    int64_t blk = c0 / DLANES;
    DVEC wv[kh * kw];
    FN(dw_weights)(w, dim, kh * kw, c0, count, wv);
    for (int64_t col = 0; col < width; ++col) {
        DVEC acc = {0};
        for (int64_t i = 0; i < kh; ++i) {
            DVEC row = {0};
            for (int64_t j = 0; j < kw; ++j) row += wv[i * kw + j] * drows[i][(col + kw - 1 - j) * nblocks + blk];
            acc += row;
        }
        FN(dw_store)(dxrow + col * dim, acc, count);
    }
}

/* Row r's dpre (all blocks) into its dring slot, reading x rows r - ph .. r + ph from xring. */
DW_INLINE void FN(dw_dpre_row)(const FN(dw_thread_t) *t, const REAL *w,
                               const REAL *bias, int own, int64_t r, int64_t height, int64_t width, int64_t dim,
                               int64_t kh, int64_t kw) {
    DVEC *xrows[kh], *dslot = t->dring + r % kh * t->slot;
    for (int64_t i = 0; i < kh; ++i) {
        int64_t row = r - (kh - 1) / 2 + i;
        xrows[i] = row >= 0 && row < height ? t->xring + row % kh * t->slot : t->zero;
    }
    for (int64_t c0 = 0; c0 < dim; c0 += DLANES) {
        if (dim - c0 >= DLANES)
            FN(dw_dpre_block)(xrows, t->grow, w, bias, dslot, t->pdw, t->pdb, own, t->nblocks, width, dim, c0,
                              kh, kw, DLANES);
        else
            FN(dw_dpre_block)(xrows, t->grow, w, bias, dslot, t->pdw, t->pdb, own, t->nblocks, width, dim, c0,
                              kh, kw, (int)(dim - c0));
    }
}

/* Output row h's dx (all blocks), reading dpre rows h - ph .. h + ph from dring. */
DW_INLINE void FN(dw_dx_row)(const FN(dw_thread_t) *t, const REAL *w, REAL *dxrow, int64_t h, int64_t height,
                             int64_t width, int64_t dim, int64_t kh, int64_t kw) {
    DVEC *drows[kh];
    for (int64_t i = 0; i < kh; ++i) {
        int64_t row = h + (kh - 1) / 2 - i;
        drows[i] = row >= 0 && row < height ? t->dring + row % kh * t->slot : t->zero;
    }
    for (int64_t c0 = 0; c0 < dim; c0 += DLANES) {
        if (dim - c0 >= DLANES)
            FN(dw_dx_block)(drows, w, dxrow + c0, t->nblocks, width, dim, c0, kh, kw, DLANES);
        else
            FN(dw_dx_block)(drows, w, dxrow + c0, t->nblocks, width, dim, c0, kh, kw, (int)(dim - c0));
    }
}

void FN(dwconv2d_silu_bwd)(const REAL *x, int64_t sb, int64_t sh, int64_t sw, const REAL *w, const REAL *bias,
                           const REAL *g, int64_t gsb, int64_t gsh, int64_t gsw, REAL *dx, REAL *dw, REAL *dbias,
                           int64_t batch, int64_t height, int64_t width, int64_t dim, int64_t kh, int64_t kw,
                           int nthreads) {
    int64_t nblocks = (dim + DLANES - 1) / DLANES, taps = kh * kw, items = batch * height;
    int64_t ph = (kh - 1) / 2, pw = (kw - 1) / 2;
    int team = nthreads < 1 ? 1 : (items < nthreads ? (int)(items < 1 ? 1 : items) : nthreads);
    int64_t per_thread = (taps + 1) * nblocks;
    DVEC *partials = scratch_alloc(team * per_thread * sizeof(DVEC));
    memset(partials, 0, team * per_thread * sizeof(DVEC));
    advise_huge_pages(dx, (size_t)(items * width * dim) * sizeof(REAL));
#pragma omp parallel num_threads(team)
    {
        FN(dw_thread_t) t;
        t.nblocks = nblocks;
        t.slot = (width + 2 * pw) * nblocks;
        size_t ring_bytes = (2 * kh + 2) * t.slot * sizeof(DVEC);
        t.xring = scratch_alloc(ring_bytes);
        memset(t.xring, 0, ring_bytes);
        t.dring = t.xring + kh * t.slot;
        t.zero = t.dring + kh * t.slot;
        t.grow = t.zero + t.slot;
        t.pdw = partials + omp_get_thread_num() * per_thread;
        t.pdb = t.pdw + taps * nblocks;
        int64_t begin, end, next = 0, xnext = 0, last_b = -1;
        climp_thread_range(items, &begin, &end);
        for (int64_t item = begin; item < end; ++item) {
            int64_t b = item / height, h = item % height;
            if (b != last_b) { /* a thread's first row of an image: start from the first rows it reads */
                next = h - ph > 0 ? h - ph : 0;
                xnext = next - ph > 0 ? next - ph : 0;
                last_b = b;
            }
            for (; next <= h + ph && next < height; ++next) {
                for (; xnext <= next + ph && xnext < height; ++xnext)
                    FN(dw_copy_row)(t.xring + xnext % kh * t.slot + pw * nblocks, x + b * sb + xnext * sh, sw,
                                    xnext + 1 < height ? x + b * sb + (xnext + 1) * sh : NULL, width, dim, nblocks);
                int64_t row = b * height + next;
                int own = row >= begin && row < end;
                FN(dw_copy_row)(t.grow, g + b * gsb + next * gsh, gsw,
                                next + 1 < height ? g + b * gsb + (next + 1) * gsh : NULL, width, dim, nblocks);
                if (kh == 3 && kw == 3)
                    FN(dw_dpre_row)(&t, w, bias, own, next, height, width, dim, 3, 3);
                else
                    FN(dw_dpre_row)(&t, w, bias, own, next, height, width, dim, kh, kw);
            }
            REAL *dxrow = dx + item * width * dim;
            if (kh == 3 && kw == 3)
                FN(dw_dx_row)(&t, w, dxrow, h, height, width, dim, 3, 3);
            else
                FN(dw_dx_row)(&t, w, dxrow, h, height, width, dim, kh, kw);
        }
        free(t.xring);
    }
    /* the partials, added in thread order */
    for (int64_t blk = 0; blk < nblocks; ++blk) {
        int64_t c0 = blk * DLANES;
        int count = dim - c0 < DLANES ? (int)(dim - c0) : DLANES;
        for (int64_t k = 0; k <= taps; ++k) {
            DVEC sum = partials[k * nblocks + blk];
            for (int p = 1; p < team; ++p) sum += partials[p * per_thread + k * nblocks + blk];
            if (k < taps)
                FN(dw_store)(dw + k * dim + c0, sum, count);
            else if (dbias)
                FN(dw_store)(dbias + c0, sum, count);
        }
    }
    free(partials);
}

#undef DVEC
#undef DLANES
#undef DSIGMOID
#undef DW_INLINE
