/* Fused selective scan of Mamba-1's mixer (one direction, channel-last) for the CPU, included by
 * selective_scan.c once per REAL type after selective_scan_impl.h (whose vector helpers it uses).
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
 * A forward work item is one batch element's block of LANES consecutive channels (vector lane =
 * channel). The backward takes whole batch elements per item (a static split over threads), so
 * the gradients of the dt input, B and C, which sum over channels, accumulate lane-wise in a
 * per-thread vector buffer and are summed over lanes once per batch element; parameter gradients
 * are per-thread partial sums added in thread order (parallel.h): deterministic.
 */

/* Per-block constants (lane = channel; 0 beyond the block). */
typedef struct {
    VEC *w;        /* [rank]: dtw column r of the block's channels */
    VEC *a;        /* [nstate]: A */
    VEC *a_scaled; /* [nstate]: A * EXP_SCALE (VEXP_SCALED's argument scale) */
    VEC bias, D;
} FN(m1d_consts_t);

static void FN(m1d_consts_of)(const REAL *dtw, const REAL *bias, const REAL *A, const REAL *D, int64_t rank,
                              int64_t nstate, int64_t first, int count, FN(m1d_consts_t) *c) {
    c->bias = c->D = (VEC){0};
    for (int64_t r = 0; r < rank; ++r) c->w[r] = (VEC){0};
    for (int64_t n = 0; n < nstate; ++n) c->a[n] = c->a_scaled[n] = (VEC){0};
    for (int j = 0; j < count; ++j) {
        int64_t ch = first + j;
        c->bias[j] = bias[ch];
        c->D[j] = D[ch];
        for (int64_t r = 0; r < rank; ++r) c->w[r][j] = dtw[ch * rank + r];
        for (int64_t n = 0; n < nstate; ++n) {
            c->a[n][j] = A[ch * nstate + n];
            c->a_scaled[n][j] = A[ch * nstate + n] * EXP_SCALE;
        }
    }
}

static inline VEC FN(m1d_delta)(const FN(m1d_consts_t) *c, const REAL *x, int64_t rank) {
    VEC acc = c->bias;
    for (int64_t r = 0; r < rank; ++r) acc += c->w[r] * x[r];
    return acc;
}

/* One block forward (N: nstate, a compile-time 1 for the one-state case). */
static inline __attribute__((always_inline)) void FN(m1d_fwd_block)(
    int N, const REAL *u, int64_t ust, const REAL *z, int64_t zst, const REAL *xdbl, int64_t xst, REAL *out,
    int64_t len, int64_t dim, int64_t rank, int count, const FN(m1d_consts_t) *c, int softplus, VEC *h) {
    for (int64_t n = 0; n < N; ++n) h[n] = (VEC){0};
    for (int64_t t = 0; t < len; ++t) {
        const REAL *x = xdbl + t * xst, *Bp = x + rank, *Cp = Bp + N;
        VEC uv = FN(vec_load_n)(u + t * ust, count);
        VEC dt = FN(m1d_delta)(c, x, rank);
        if (softplus) dt = VSOFTPLUS(dt, NULL);
        VEC dtu = dt * uv, y = c->D * uv;
        for (int64_t n = 0; n < N; ++n) {
            h[n] = VEXP_SCALED(dt * c->a_scaled[n]) * h[n] + dtu * Bp[n];
            y += h[n] * Cp[n];
        }
        if (z) {
            VEC zv = FN(vec_load_n)(z + t * zst, count);
            y *= zv * VSIGMOID(zv);
        }
        FN(vec_store_n)(out + t * dim, y, count);
    }
}

static inline int FN(m1d_team)(int64_t items, int nthreads) {
    return nthreads < 1 || items < 1 ? 1 : (items < nthreads ? (int)items : nthreads);
}

void FN(mamba1d_fwd)(const REAL *u, int64_t usb, int64_t ust, const REAL *z, int64_t zsb, int64_t zst,
                     const REAL *xdbl, int64_t xsb, int64_t xst, const REAL *dtw, const REAL *bias, const REAL *A,
                     const REAL *D, int softplus, REAL *out, int64_t batch, int64_t len, int64_t dim, int64_t rank,
                     int64_t nstate, int nthreads) {
    int64_t nblocks = (dim + LANES - 1) / LANES;
    advise_huge_pages(out, (size_t)(batch * len * dim) * sizeof(REAL));
#pragma omp parallel num_threads(FN(m1d_team)(batch * nblocks, nthreads))
    {
        VEC *mem = scratch_alloc((rank + 3 * nstate) * sizeof(VEC));
        FN(m1d_consts_t) c;
        c.w = mem, c.a = mem + rank, c.a_scaled = c.a + nstate;
        VEC *h = c.a_scaled + nstate;
#pragma omp for schedule(static)
        for (int64_t item = 0; item < batch * nblocks; ++item) {
            int64_t b = item / nblocks, first = (item % nblocks) * LANES;
            int count = dim - first < LANES ? (int)(dim - first) : LANES;
            FN(m1d_consts_of)(dtw, bias, A, D, rank, nstate, first, count, &c);
            const REAL *ub = u + b * usb + first, *zb = z ? z + b * zsb + first : NULL, *xb = xdbl + b * xsb;
            REAL *ob = out + b * len * dim + first;
            if (nstate == 1)
                FN(m1d_fwd_block)(1, ub, ust, zb, zst, xb, xst, ob, len, dim, rank, count, &c, softplus, h);
            else
                FN(m1d_fwd_block)(nstate, ub, ust, zb, zst, xb, xst, ob, len, dim, rank, count, &c, softplus, h);
        }
        free(mem);
    }
}

/* Per-thread scratch of the backward: per step dt, softplus' and, per state, e = exp(dt a) and
 * w = e h_{t-1}; the block's parameter-gradient sums (lane = channel). */
typedef struct {
    VEC *dt, *sig, *e, *w;
    VEC *dw, *dA; /* [rank], [nstate] */
    VEC dbias, dD;
} FN(m1d_scratch_t);

/* One block backward: recompute the states forward, then run the adjoint in reverse, writing du
 * and dz (the block's channels) and adding the gradients of the dt input, B and C lane-wise into
 * dxv (dxdbl's layout for one batch element, one vector per entry). */
static inline __attribute__((always_inline)) void FN(m1d_bwd_block)(
    int N, const REAL *u, int64_t ust, const REAL *z, int64_t zst, const REAL *xdbl, int64_t xst, const REAL *dout,
    REAL *du, REAL *dz, VEC *dxv, int64_t len, int64_t dim, int64_t rank, int count, const FN(m1d_consts_t) *c,
    int softplus, FN(m1d_scratch_t) *s) {
    int64_t Q = rank + 2 * N;
    VEC h[N], carry[N], dA[N];
    for (int64_t n = 0; n < N; ++n) h[n] = carry[n] = dA[n] = (VEC){0};
    for (int64_t t = 0; t < len; ++t) {
        const REAL *x = xdbl + t * xst, *Bp = x + rank;
        VEC uv = FN(vec_load_n)(u + t * ust, count);
        VEC dt = FN(m1d_delta)(c, x, rank), sig = {0};
        if (softplus) dt = VSOFTPLUS(dt, &sig);
        s->dt[t] = dt;
        s->sig[t] = sig;
        VEC dtu = dt * uv;
        for (int64_t n = 0; n < N; ++n) {
            VEC e = VEXP_SCALED(dt * c->a_scaled[n]), wn = e * h[n];
            h[n] = wn + dtu * Bp[n];
            s->e[t * N + n] = e;
            s->w[t * N + n] = wn;
        }
    }
    VEC dbias = {0}, dD = {0};
    for (int64_t t = len - 1; t >= 0; --t) {
        const REAL *x = xdbl + t * xst, *Bp = x + rank, *Cp = Bp + N;
        VEC *acc = dxv + t * Q;
        VEC g_out = FN(vec_load_n)(dout + t * dim, count), uv = FN(vec_load_n)(u + t * ust, count);
        VEC zv = {0}, zsig = {0}, dy = g_out;
        if (z) {
            zv = FN(vec_load_n)(z + t * zst, count);
            zsig = VSIGMOID(zv);
            dy = g_out * zv * zsig;
        }
        VEC dt = s->dt[t], dtu = dt * uv, s1 = {0}, s2 = {0}, pre = c->D * uv;
        for (int64_t n = 0; n < N; ++n) {
            VEC wn = s->w[t * N + n], ht = wn + dtu * Bp[n], g = dy * Cp[n] + carry[n], q = g * wn;
            acc[rank + n] += g * dtu;   /* dB */
            acc[rank + N + n] += dy * ht; /* dC */
            pre += ht * Cp[n];
            s1 += g * Bp[n];
            s2 += q * c->a[n];
            dA[n] += q * dt;
            carry[n] = s->e[t * N + n] * g;
        }
        if (z) FN(vec_store_n)(dz + t * dim, g_out * pre * zsig * (1 + zv * (1 - zsig)), count);
        VEC ddt = uv * s1 + s2;
        if (softplus) ddt *= s->sig[t];
        dbias += ddt;
        dD += dy * uv;
        for (int64_t r = 0; r < rank; ++r) {
            s->dw[r] += ddt * x[r];
            acc[r] += c->w[r] * ddt;
        }
        FN(vec_store_n)(du + t * dim, dt * s1 + c->D * dy, count);
    }
    for (int64_t n = 0; n < N; ++n) s->dA[n] = dA[n];
    s->dbias = dbias;
    s->dD = dD;
}

void FN(mamba1d_bwd)(const REAL *u, int64_t usb, int64_t ust, const REAL *z, int64_t zsb, int64_t zst,
                     const REAL *xdbl, int64_t xsb, int64_t xst, const REAL *dtw, const REAL *bias, const REAL *A,
                     const REAL *D, int softplus, const REAL *dout, REAL *du, REAL *dz, REAL *dxdbl, REAL *ddtw,
                     REAL *dbias, REAL *dA, REAL *dD, int64_t batch, int64_t len, int64_t dim, int64_t rank,
                     int64_t nstate, int nthreads) {
    int64_t nblocks = (dim + LANES - 1) / LANES, Q = rank + 2 * nstate, xsize = len * Q;
    int team = FN(m1d_team)(batch, nthreads);
    size_t psize = dim * (rank + nstate + 2);
    advise_huge_pages(du, (size_t)(batch * len * dim) * sizeof(REAL));
    REAL *psums = scratch_alloc(team * psize * sizeof(REAL));
    memset(psums, 0, team * psize * sizeof(REAL));
#pragma omp parallel num_threads(team)
    {
        int tid = omp_get_thread_num();
        VEC *mem = scratch_alloc(((2 + 2 * nstate) * len + 2 * rank + 3 * nstate + xsize + LANES) * sizeof(VEC));
        FN(m1d_scratch_t) s;
        s.dt = mem, s.sig = s.dt + len, s.e = s.sig + len, s.w = s.e + nstate * len;
        FN(m1d_consts_t) c;
        c.w = s.w + nstate * len, c.a = c.w + rank, c.a_scaled = c.a + nstate;
        s.dw = c.a_scaled + nstate, s.dA = s.dw + rank;
        VEC *dxv = s.dA + nstate;
        REAL *psum = psums + tid * psize, *pdtw = psum, *pbias = pdtw + dim * rank, *pA = pbias + dim,
             *pD = pA + dim * nstate;
        int64_t begin, end;
        climp_thread_range(batch, &begin, &end); /* fixed batch-to-thread map (parallel.h) */
        for (int64_t b = begin; b < end; ++b) {
            memset(dxv, 0, (xsize + LANES) * sizeof(VEC));
            for (int64_t j = 0; j < nblocks; ++j) {
                int64_t first = j * LANES, off = b * len * dim + first;
                int count = dim - first < LANES ? (int)(dim - first) : LANES;
                FN(m1d_consts_of)(dtw, bias, A, D, rank, nstate, first, count, &c);
                for (int64_t r = 0; r < rank; ++r) s.dw[r] = (VEC){0};
                const REAL *ub = u + b * usb + first, *zb = z ? z + b * zsb + first : NULL, *xb = xdbl + b * xsb;
                REAL *dzb = dz ? dz + off : NULL;
                if (nstate == 1)
                    FN(m1d_bwd_block)(1, ub, ust, zb, zst, xb, xst, dout + off, du + off, dzb, dxv, len, dim, rank,
                                      count, &c, softplus, &s);
                else
                    FN(m1d_bwd_block)(nstate, ub, ust, zb, zst, xb, xst, dout + off, du + off, dzb, dxv, len, dim,
                                      rank, count, &c, softplus, &s);
                for (int k = 0; k < count; ++k) {
                    int64_t ch = first + k;
                    for (int64_t r = 0; r < rank; ++r) pdtw[ch * rank + r] += s.dw[r][k];
                    for (int64_t n = 0; n < nstate; ++n) pA[ch * nstate + n] += s.dA[n][k];
                    pbias[ch] += s.dbias[k];
                    pD[ch] += s.dD[k];
                }
            }
            REAL *dxb = dxdbl + b * xsize;
            for (int64_t i = 0; i < xsize; i += LANES) { /* lane sums, 8 entries at a time */
                VEC tot = FN(lane_sums8)(dxv + i);
                int64_t m = xsize - i < LANES ? xsize - i : LANES;
                memcpy(dxb + i, &tot, m * sizeof(REAL));
            }
        }
        free(mem);
    }
    REAL *outs[4] = {ddtw, dbias, dA, dD};
    size_t sizes[4] = {dim * rank, dim, dim * nstate, dim};
    size_t at = 0;
    for (int q = 0; q < 4; ++q) {
        for (size_t i = 0; i < sizes[q]; ++i) {
            REAL tot = 0;
            for (int th = 0; th < team; ++th) tot += psums[th * psize + at + i];
            outs[q][i] = tot;
        }
        at += sizes[q];
    }
    free(psums);
}
