/* Fused selective scan of Mamba-1's mixer (one direction, channel-last) for the CPU, included by
 * selective_scan.c once per REAL type after ss2d_impl.h (whose 16-lane helpers it uses).
 *
 * Layouts, channel-last as the mixer's projections produce them (last stride 1; the batch and
 * step strides are arguments, so views into the in_proj output need no copy):
 *   u, z:          (batch, len, dim), strides (usb, ust), (zsb, zst); z may be NULL (no gate)
 *   xdbl:          (batch, len, rank + 2 * nstate), strides (xsb, xst): per step the low-rank dt
 *                  input, then B, then C (the x_proj output)
 *   out, dout, du, dz: (batch, len, dim) contiguous; dxdbl (batch, len, rank + 2 * nstate) contiguous
 *   dtw (dim, rank), bias (dim), A (dim, nstate), D (dim), all required (zeros for none).
 * Per step: delta = softplus(bias + dtw . dt input) in registers, h = exp(delta A) h + delta u B,
 * y = (C . h + D u) * silu(z). No (batch, dim, len) delta, no transposed copy, and y is written
 * in the layout out_proj reads.
 *
 * The vector is 16 float32 lanes where AVX-512 is available (8 otherwise, and 8 doubles), lane =
 * channel. A block (one batch element's MLANES consecutive channels) first computes delta for
 * all its steps, then runs the recurrence: when every exp argument delta * A of the block is in
 * the exp's range, the exps skip their clamps. The blocks' constants are built once per call.
 * A forward work item is one block. The backward splits the blocks over threads in fixed ranges
 * (whole batch elements when there are at least as many as threads) and per block recomputes the
 * states forward, keeping exp(delta A) and exp(delta A) h_{t-1} per step, then runs the adjoint in
 * reverse; the gradients of the dt input, B and C, which sum over channels, accumulate lane-wise
 * in a per-thread vector buffer summed over lanes once per batch element, and the dt projection's
 * gradients follow in a pass of their own. Parameter gradients are per-thread vector partial sums
 * (lane = channel) added in thread order (parallel.h): deterministic.
 */

#if CLIMP_SS2D_FLOAT32 && defined(__AVX512F__)
#ifndef CLIMP_M1D_SIGMOID16
#define CLIMP_M1D_SIGMOID16
/* vsigmoid_f32 on 16 lanes. */
static inline ss2d_v16 m1d_sigmoid16(ss2d_v16 x) { return 1.0f / (1.0f + ss2d_exp2_16(x * -1.44269504088896341f)); }
#endif
#define MVEC ss2d_v16
#define MLANES 16
#define MVEXP ss2d_exp2_16
#define MVEXP_INRANGE ss2d_exp2_inrange16
#define MVSOFTPLUS ss2d_softplus16
#define MVSIGMOID m1d_sigmoid16
#define MVMAX ss2d_max16
#define MLANE_SUMS ss2d_lane_sums16
#else
#define MVEC VEC
#define MLANES LANES
#define MVEXP VEXP_SCALED
#define MVEXP_INRANGE VEXP_SCALED_INRANGE
#define MVSOFTPLUS VSOFTPLUS
#define MVSIGMOID VSIGMOID
#define MVMAX VMAX
#define MLANE_SUMS FN(lane_sums8)
#endif

/* count <= MLANES channels at p as a vector (zero beyond count), and back. */
static inline MVEC FN(m1d_load)(const REAL *p, int count) {
    MVEC v = {0};
    if (count == MLANES)
        memcpy(&v, p, sizeof v);
    else
        for (int j = 0; j < count; ++j) v[j] = p[j];
    return v;
}

static inline void FN(m1d_store)(REAL *p, MVEC v, int count) {
    if (count == MLANES)
        memcpy(p, &v, sizeof v);
    else
        for (int j = 0; j < count; ++j) p[j] = v[j];
}

/* Per-block constants (lane = channel; 0 beyond the block). */
typedef struct {
    MVEC *w;        /* [rank]: dtw column r of the block's channels */
    MVEC *a;        /* [nstate]: A */
    MVEC *a_scaled; /* [nstate]: A * EXP_SCALE (MVEXP's argument scale) */
    MVEC bias, D;
    REAL amax; /* the largest |a_scaled|: every exp argument is in range while |delta| amax <= EXP_INRANGE */
} FN(m1d_consts_t);

/* Every block's constants (the same for every batch element): nblocks structs over one buffer
 * of rank + 2 nstate vectors per block, returned in *mem to be freed with the table. */
static FN(m1d_consts_t) *FN(m1d_consts_table)(const REAL *dtw, const REAL *bias, const REAL *A, const REAL *D,
                                              int64_t dim, int64_t rank, int64_t nstate, MVEC **mem) {
    int64_t nblocks = (dim + MLANES - 1) / MLANES, per_block = rank + 2 * nstate;
    FN(m1d_consts_t) *table = scratch_alloc(nblocks * sizeof *table);
    *mem = scratch_alloc(nblocks * per_block * sizeof(MVEC));
    memset(*mem, 0, nblocks * per_block * sizeof(MVEC));
    for (int64_t j = 0; j < nblocks; ++j) {
        FN(m1d_consts_t) *c = table + j;
        c->w = *mem + j * per_block, c->a = c->w + rank, c->a_scaled = c->a + nstate;
        c->bias = c->D = (MVEC){0};
        c->amax = 0;
        for (int64_t k = 0, ch = j * MLANES; k < MLANES && ch < dim; ++k, ++ch) {
            c->bias[k] = bias[ch];
            c->D[k] = D[ch];
            for (int64_t r = 0; r < rank; ++r) c->w[r][k] = dtw[ch * rank + r];
            for (int64_t n = 0; n < nstate; ++n) {
                REAL as = A[ch * nstate + n] * EXP_SCALE, m = as < 0 ? -as : as;
                c->a[n][k] = A[ch * nstate + n];
                c->a_scaled[n][k] = as;
                c->amax = m > c->amax ? m : c->amax;
            }
        }
    }
    return table;
}

static inline MVEC FN(m1d_delta)(const FN(m1d_consts_t) *c, const REAL *x, int64_t rank) {
    MVEC acc = c->bias;
    for (int64_t r = 0; r < rank; ++r) acc += c->w[r] * x[r];
    return acc;
}

/* A block's delta (after softplus) at every step into dt[t] (and softplus' into sig[t] when
 * sig is given), prefetching the block's rows of u and z (z may be NULL) for the next pass;
 * returns whether every exp argument delta * A is in range (NaNs give NaN results on either
 * path). */
static inline int FN(m1d_deltas)(const FN(m1d_consts_t) *c, const REAL *xdbl, int64_t xst, int64_t len, int64_t rank,
                                 int softplus, MVEC *dt, MVEC *sig, const REAL *u, int64_t ust, const REAL *z,
                                 int64_t zst) {
    MVEC most = {0};
    for (int64_t t = 0; t < len; ++t) {
        __builtin_prefetch(u + t * ust, 0, 2);
        if (z) __builtin_prefetch(z + t * zst, 0, 2);
        MVEC d = FN(m1d_delta)(c, xdbl + t * xst, rank);
        if (softplus) d = MVSOFTPLUS(d, sig ? sig + t : NULL);
        dt[t] = d;
        most = MVMAX(most, MVMAX(d, -d));
    }
    REAL m = 0;
    for (int k = 0; k < MLANES; ++k) m = most[k] > m ? most[k] : m;
    return m * c->amax <= EXP_INRANGE;
}

/* One block's recurrence forward (N: nstate, a compile-time constant in the common cases;
 * inrange: exps without clamps). */
static inline __attribute__((always_inline)) void FN(m1d_fwd_steps)(
    int N, int inrange, const REAL *u, int64_t ust, const REAL *z, int64_t zst, const REAL *xdbl, int64_t xst,
    REAL *out, int64_t len, int64_t dim, int64_t rank, int count, const FN(m1d_consts_t) *c, const MVEC *dts) {
    MVEC h[N];
    for (int64_t n = 0; n < N; ++n) h[n] = (MVEC){0};
    for (int64_t t = 0; t < len; ++t) {
        const REAL *Bp = xdbl + t * xst + rank, *Cp = Bp + N;
        MVEC uv = FN(m1d_load)(u + t * ust, count), dt = dts[t];
        MVEC dtu = dt * uv, y = c->D * uv;
#pragma GCC unroll 16
        for (int64_t n = 0; n < N; ++n) {
            MVEC arg = dt * c->a_scaled[n];
            h[n] = (inrange ? MVEXP_INRANGE(arg) : MVEXP(arg)) * h[n] + dtu * Bp[n];
            y += h[n] * Cp[n];
        }
        if (z) {
            MVEC zv = FN(m1d_load)(z + t * zst, count);
            y *= zv * MVSIGMOID(zv);
        }
        FN(m1d_store)(out + t * dim, y, count);
    }
}

/* One block forward: its deltas, then the recurrence on the exp path they allow. */
static inline __attribute__((always_inline)) void FN(m1d_fwd_block)(
    int N, const REAL *u, int64_t ust, const REAL *z, int64_t zst, const REAL *xdbl, int64_t xst, REAL *out,
    int64_t len, int64_t dim, int64_t rank, int count, const FN(m1d_consts_t) *c, int softplus, MVEC *dts) {
    if (FN(m1d_deltas)(c, xdbl, xst, len, rank, softplus, dts, NULL, u, ust, z, zst))
        FN(m1d_fwd_steps)(N, 1, u, ust, z, zst, xdbl, xst, out, len, dim, rank, count, c, dts);
    else
        FN(m1d_fwd_steps)(N, 0, u, ust, z, zst, xdbl, xst, out, len, dim, rank, count, c, dts);
}

static inline int FN(m1d_team)(int64_t items, int nthreads) {
    return nthreads < 1 || items < 1 ? 1 : (items < nthreads ? (int)items : nthreads);
}

void FN(mamba1d_fwd)(const REAL *u, int64_t usb, int64_t ust, const REAL *z, int64_t zsb, int64_t zst,
                     const REAL *xdbl, int64_t xsb, int64_t xst, const REAL *dtw, const REAL *bias, const REAL *A,
                     const REAL *D, int softplus, REAL *out, int64_t batch, int64_t len, int64_t dim, int64_t rank,
                     int64_t nstate, int nthreads) {
    int64_t nblocks = (dim + MLANES - 1) / MLANES;
    advise_huge_pages(out, (size_t)(batch * len * dim) * sizeof(REAL));
    MVEC *consts_mem;
    const FN(m1d_consts_t) *table = FN(m1d_consts_table)(dtw, bias, A, D, dim, rank, nstate, &consts_mem);
#pragma omp parallel num_threads(FN(m1d_team)(batch * nblocks, nthreads))
    {
        MVEC *dts = scratch_alloc(len * sizeof(MVEC));
#pragma omp for schedule(static)
        for (int64_t item = 0; item < batch * nblocks; ++item) {
            int64_t b = item / nblocks, first = (item % nblocks) * MLANES;
            int count = dim - first < MLANES ? (int)(dim - first) : MLANES;
            const FN(m1d_consts_t) *c = table + item % nblocks;
            const REAL *ub = u + b * usb + first, *zb = z ? z + b * zsb + first : NULL, *xb = xdbl + b * xsb;
            REAL *ob = out + b * len * dim + first;
            if (nstate == 16)
                FN(m1d_fwd_block)(16, ub, ust, zb, zst, xb, xst, ob, len, dim, rank, count, c, softplus, dts);
            else if (nstate == 1)
                FN(m1d_fwd_block)(1, ub, ust, zb, zst, xb, xst, ob, len, dim, rank, count, c, softplus, dts);
            else
                FN(m1d_fwd_block)(nstate, ub, ust, zb, zst, xb, xst, ob, len, dim, rank, count, c, softplus, dts);
        }
        free(dts);
    }
    free(consts_mem);
    free((void *)table);
}

/* Per-thread scratch of the backward: per step dt, softplus', the gradient of delta before
 * softplus and, per state, e = exp(dt a) and w = e h_{t-1}. */
typedef struct {
    MVEC *dt, *sig, *ddt, *e, *w;
} FN(m1d_scratch_t);

/* A block's states forward, keeping e and w per step (dt already in s). */
static inline __attribute__((always_inline)) void FN(m1d_bwd_states)(int N, int inrange, const REAL *u, int64_t ust,
                                                                    const REAL *z, int64_t zst, const REAL *dout,
                                                                    const REAL *xdbl, int64_t xst, int64_t len,
                                                                    int64_t dim, int64_t rank, int count,
                                                                    const FN(m1d_consts_t) *c, FN(m1d_scratch_t) *s) {
    MVEC h[N];
    for (int64_t n = 0; n < N; ++n) h[n] = (MVEC){0};
    for (int64_t t = 0; t < len; ++t) {
        const REAL *Bp = xdbl + t * xst + rank;
        MVEC dt = s->dt[t], dtu = dt * FN(m1d_load)(u + t * ust, count);
        MVEC *e = s->e + t * N, *w = s->w + t * N;
        __builtin_prefetch(dout + t * dim, 0, 2); /* the reverse pass's rows, fetched while the exps run */
        if (z) __builtin_prefetch(z + t * zst, 0, 2);
#pragma GCC unroll 16
        for (int64_t n = 0; n < N; ++n) {
            MVEC arg = dt * c->a_scaled[n];
            e[n] = inrange ? MVEXP_INRANGE(arg) : MVEXP(arg);
            w[n] = e[n] * h[n];
            h[n] = w[n] + dtu * Bp[n];
        }
    }
}

/* One block backward: recompute the states, run the adjoint in reverse, writing du and dz (the
 * block's channels), adding the gradients of the dt input, B and C lane-wise into dxv (dxdbl's
 * layout for one batch element, one vector per entry) and the block's parameter gradients into
 * pv (rank + nstate + 2 vectors: dtw's columns, A's, bias, D). */
static inline __attribute__((always_inline)) void FN(m1d_bwd_block)(
    int N, const REAL *u, int64_t ust, const REAL *z, int64_t zst, const REAL *xdbl, int64_t xst, const REAL *dout,
    REAL *du, REAL *dz, MVEC *dxv, int64_t len, int64_t dim, int64_t rank, int count, const FN(m1d_consts_t) *c,
    int softplus, FN(m1d_scratch_t) *s, MVEC *pv) {
    int64_t Q = rank + 2 * N;
    if (FN(m1d_deltas)(c, xdbl, xst, len, rank, softplus, s->dt, s->sig, u, ust, NULL, 0))
        FN(m1d_bwd_states)(N, 1, u, ust, z, zst, dout, xdbl, xst, len, dim, rank, count, c, s);
    else
        FN(m1d_bwd_states)(N, 0, u, ust, z, zst, dout, xdbl, xst, len, dim, rank, count, c, s);
    MVEC carry[N], dA[N], dD = {0};
    for (int64_t n = 0; n < N; ++n) carry[n] = dA[n] = (MVEC){0};
    for (int64_t t = len - 1; t >= 0; --t) {
        const REAL *Bp = xdbl + t * xst + rank, *Cp = Bp + N;
        MVEC *accB = dxv + t * Q + rank, *accC = accB + N;
        const MVEC *e = s->e + t * N, *w = s->w + t * N;
        MVEC g_out = FN(m1d_load)(dout + t * dim, count), uv = FN(m1d_load)(u + t * ust, count);
        MVEC zv = {0}, zsig = {0}, dy = g_out;
        if (z) {
            zv = FN(m1d_load)(z + t * zst, count);
            zsig = MVSIGMOID(zv);
            dy = g_out * zv * zsig;
        }
        MVEC dt = s->dt[t], dtu = dt * uv, s1 = {0}, s2 = {0}, pre = c->D * uv;
#pragma GCC unroll 8
        for (int64_t n = 0; n < N; ++n) {
            MVEC ht = w[n] + dtu * Bp[n], g = dy * Cp[n] + carry[n], q = g * w[n];
            accB[n] += g * dtu;
            accC[n] += dy * ht;
            pre += ht * Cp[n];
            s1 += g * Bp[n];
            s2 += q * c->a[n];
            dA[n] += q * dt;
            carry[n] = e[n] * g;
        }
        if (z) FN(m1d_store)(dz + t * dim, g_out * pre * zsig * (1 + zv * (1 - zsig)), count);
        MVEC ddt = uv * s1 + s2;
        s->ddt[t] = softplus ? ddt * s->sig[t] : ddt;
        dD += dy * uv;
        FN(m1d_store)(du + t * dim, dt * s1 + c->D * dy, count);
    }
    /* the dt projection's gradients */
    MVEC dbias = {0}, dw[rank > 0 ? rank : 1];
    for (int64_t r = 0; r < rank; ++r) dw[r] = (MVEC){0};
    for (int64_t t = len - 1; t >= 0; --t) {
        const REAL *x = xdbl + t * xst;
        MVEC ddt = s->ddt[t], *acc = dxv + t * Q;
        dbias += ddt;
        for (int64_t r = 0; r < rank; ++r) {
            dw[r] += ddt * x[r];
            acc[r] += c->w[r] * ddt;
        }
    }
    for (int64_t r = 0; r < rank; ++r) pv[r] += dw[r];
    for (int64_t n = 0; n < N; ++n) pv[rank + n] += dA[n];
    pv[rank + N] += dbias;
    pv[rank + N + 1] += dD;
}

void FN(mamba1d_bwd)(const REAL *u, int64_t usb, int64_t ust, const REAL *z, int64_t zsb, int64_t zst,
                     const REAL *xdbl, int64_t xsb, int64_t xst, const REAL *dtw, const REAL *bias, const REAL *A,
                     const REAL *D, int softplus, const REAL *dout, REAL *du, REAL *dz, REAL *dxdbl, REAL *ddtw,
                     REAL *dbias, REAL *dA, REAL *dD, int64_t batch, int64_t len, int64_t dim, int64_t rank,
                     int64_t nstate, int nthreads) {
    int64_t nblocks = (dim + MLANES - 1) / MLANES, Q = rank + 2 * nstate, xsize = len * Q;
    int64_t P = rank + nstate + 2, pv_size = nblocks * P; /* per thread: per block, P gradient vectors */
    /* Work items are (batch element, block) pairs in that order, each thread taking a fixed range
     * (parallel.h). With at least as many batch elements as threads the ranges are whole batch
     * elements and each thread writes its elements' dxdbl; with fewer, a batch element's blocks
     * are shared by threads, which write private copies of dxdbl added in thread order. */
    int shared = batch < nthreads;
    int team = FN(m1d_team)(shared ? batch * nblocks : batch, nthreads);
    REAL *xparts = NULL;
    if (shared && team > 1) {
        xparts = scratch_alloc(team * batch * xsize * sizeof(REAL));
        memset(xparts, 0, team * batch * xsize * sizeof(REAL));
    }
    advise_huge_pages(du, (size_t)(batch * len * dim) * sizeof(REAL));
    MVEC *consts_mem;
    const FN(m1d_consts_t) *table = FN(m1d_consts_table)(dtw, bias, A, D, dim, rank, nstate, &consts_mem);
    MVEC *pvs = scratch_alloc(team * pv_size * sizeof(MVEC));
    memset(pvs, 0, team * pv_size * sizeof(MVEC));
#pragma omp parallel num_threads(team)
    {
        int tid = omp_get_thread_num();
        MVEC *mem = scratch_alloc(((3 + 2 * nstate) * len + xsize + MLANES) * sizeof(MVEC));
        FN(m1d_scratch_t) s;
        s.dt = mem, s.sig = s.dt + len, s.ddt = s.sig + len, s.e = s.ddt + len, s.w = s.e + nstate * len;
        MVEC *dxv = s.w + nstate * len, *pv = pvs + tid * pv_size;
        int64_t begin, end;
        climp_thread_range(shared ? batch * nblocks : batch, &begin, &end);
        if (!shared) begin *= nblocks, end *= nblocks;
        for (int64_t b = begin / nblocks; b * nblocks < end; ++b) {
            int64_t j0 = b * nblocks < begin ? begin - b * nblocks : 0;
            int64_t j1 = (b + 1) * nblocks > end ? end - b * nblocks : nblocks;
            memset(dxv, 0, (xsize + MLANES) * sizeof(MVEC));
            for (int64_t j = j0; j < j1; ++j) {
                int64_t first = j * MLANES, off = b * len * dim + first;
                int count = dim - first < MLANES ? (int)(dim - first) : MLANES;
                const REAL *ub = u + b * usb + first, *zb = z ? z + b * zsb + first : NULL, *xb = xdbl + b * xsb;
                REAL *dzb = dz ? dz + off : NULL;
                if (nstate == 16)
                    FN(m1d_bwd_block)(16, ub, ust, zb, zst, xb, xst, dout + off, du + off, dzb, dxv, len, dim, rank,
                                      count, table + j, softplus, &s, pv + j * P);
                else if (nstate == 1)
                    FN(m1d_bwd_block)(1, ub, ust, zb, zst, xb, xst, dout + off, du + off, dzb, dxv, len, dim, rank,
                                      count, table + j, softplus, &s, pv + j * P);
                else
                    FN(m1d_bwd_block)(nstate, ub, ust, zb, zst, xb, xst, dout + off, du + off, dzb, dxv, len, dim,
                                      rank, count, table + j, softplus, &s, pv + j * P);
            }
            /* this thread's part of the batch element: lane sums, MLANES entries at a time */
            REAL *dxb = (xparts ? xparts + (tid * batch) * xsize : dxdbl) + b * xsize;
            for (int64_t i = 0; i < xsize; i += MLANES) {
                MVEC tot = MLANE_SUMS(dxv + i);
                int64_t m = xsize - i < MLANES ? xsize - i : MLANES;
                memcpy(dxb + i, &tot, m * sizeof(REAL));
            }
        }
        free(mem);
    }
    if (xparts) SUM_PARTIALS(dxdbl, xparts, team, batch * xsize, 0, batch * xsize, 0);
    free(xparts);
    /* the threads' partial sums, added in thread order */
    for (int64_t ch = 0; ch < dim; ++ch) {
        int64_t at = (ch / MLANES) * P, lane = ch % MLANES;
        for (int64_t q = 0; q < P; ++q) {
            REAL tot = 0;
            for (int th = 0; th < team; ++th) tot += pvs[th * pv_size + at + q][lane];
            if (q < rank)
                ddtw[ch * rank + q] = tot;
            else if (q < rank + nstate)
                dA[ch * nstate + q - rank] = tot;
            else if (q == rank + nstate)
                dbias[ch] = tot;
            else
                dD[ch] = tot;
        }
    }
    free(pvs);
    free(consts_mem);
    free((void *)table);
}

#undef MVEC
#undef MLANES
#undef MVEXP
#undef MVEXP_INRANGE
#undef MVSOFTPLUS
#undef MVSIGMOID
#undef MVMAX
#undef MLANE_SUMS
