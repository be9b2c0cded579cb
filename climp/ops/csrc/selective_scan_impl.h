/* Body of the CPU selective scan, included by selective_scan.c once per REAL type.
 * Scratch arrays hold one block as [length][LANES]: lane k is channel block.first + k. */

/* Which channels a block covers: blocks never straddle a B/C group. */
typedef struct {
    int64_t group, first, count;
} FN(block_t);

static inline FN(block_t) FN(block_of)(int64_t j, int64_t dim, int64_t groups) {
    int64_t per_group = dim / groups;
    int64_t blocks_per_group = (per_group + LANES - 1) / LANES;
    FN(block_t) blk;
    blk.group = j / blocks_per_group;
    blk.first = blk.group * per_group + (j % blocks_per_group) * LANES;
    blk.count = (blk.group + 1) * per_group - blk.first;
    if (blk.count > LANES) blk.count = LANES;
    return blk;
}

#include "selective_scan_state1.h"

/* Rows row0 .. row0+count-1 (each len long) into lanes; unused lanes get 0. */
static void FN(load_lanes)(const REAL *src, int64_t row0, int64_t count, int64_t len, VEC *dst) {
    REAL *out = (REAL *)dst;
    for (int64_t k = 0; k < LANES; ++k) {
        if (k < count) {
            const REAL *row = src + (row0 + k) * len;
            for (int64_t t = 0; t < len; ++t) out[t * LANES + k] = row[t];
        } else {
            for (int64_t t = 0; t < len; ++t) out[t * LANES + k] = 0;
        }
    }
}

static void FN(store_lanes)(REAL *dst, int64_t row0, int64_t count, int64_t len, const VEC *src) {
    const REAL *in = (const REAL *)src;
    for (int64_t k = 0; k < count; ++k) {
        REAL *row = dst + (row0 + k) * len;
        for (int64_t t = 0; t < len; ++t) row[t] = in[t * LANES + k];
    }
}

/* Per-channel parameters of a block as a vector (0 in unused lanes or when absent). */
static inline VEC FN(lanes_of)(const REAL *p, int64_t stride, FN(block_t) blk) {
    VEC v = {0};
    if (p)
        for (int k = 0; k < blk.count; ++k) v[k] = p[(blk.first + k) * stride];
    return v;
}

/* dt = (softplus)(delta + bias) in lanes; sig = sigmoid(delta + bias) (softplus') when asked and softplus. */
static void FN(load_delta)(const REAL *delta, const REAL *bias, int softplus, int64_t row0,
                           FN(block_t) blk, int64_t len, VEC *dt, VEC *sig) {
    FN(load_lanes)(delta, row0, blk.count, len, dt);
    VEC b = FN(lanes_of)(bias, 1, blk);
    for (int64_t t = 0; t < len; ++t) {
        VEC x = dt[t] + b;
        dt[t] = softplus ? VSOFTPLUS(x, sig ? &sig[t] : NULL) : x;
    }
}

void FN(selective_scan_fwd)(const REAL *u, const REAL *delta, const REAL *A, const REAL *Bm,
                            const REAL *Cm, const REAL *D, const REAL *z, const REAL *bias,
                            int softplus, REAL *out, REAL *y_ssm, int64_t batch, int64_t dim,
                            int64_t len, int64_t nstate, int64_t groups, int nthreads) {
    if (nstate == 1) {
        FN(selective_scan_fwd_state1)(u, delta, A, Bm, Cm, D, z, bias, softplus, out, y_ssm, batch, dim, len,
                                      groups, nthreads);
        return;
    }
    int64_t nblocks = groups * ((dim / groups + LANES - 1) / LANES);
#pragma omp parallel num_threads(nthreads)
    {
        VEC *dt = scratch_alloc(4 * len * sizeof(VEC));
        VEC *uu = dt + len, *dtu = dt + 2 * len, *y = dt + 3 * len;
#pragma omp for schedule(dynamic)
        for (int64_t item = 0; item < batch * nblocks; ++item) {
            int64_t b = item / nblocks;
            FN(block_t) blk = FN(block_of)(item % nblocks, dim, groups);
            int64_t row0 = b * dim + blk.first;
            FN(load_delta)(delta, bias, softplus, row0, blk, len, dt, NULL);
            FN(load_lanes)(u, row0, blk.count, len, uu);
            for (int64_t t = 0; t < len; ++t) {
                dtu[t] = dt[t] * uu[t];
                y[t] = (VEC){0};
            }
            for (int64_t n = 0; n < nstate; ++n) {
                VEC a = FN(lanes_of)(A + n, nstate, blk);
                const REAL *Bn = Bm + ((b * groups + blk.group) * nstate + n) * len;
                const REAL *Cn = Cm + ((b * groups + blk.group) * nstate + n) * len;
                VEC h = {0};
                for (int64_t t = 0; t < len; ++t) {
                    h = VEXP(dt[t] * a) * h + dtu[t] * Bn[t];
                    y[t] += h * Cn[t];
                }
            }
            if (y_ssm) FN(store_lanes)(y_ssm, row0, blk.count, len, y);
            VEC Dv = FN(lanes_of)(D, 1, blk);
            for (int64_t t = 0; t < len; ++t) y[t] += Dv * uu[t];
            if (z) {
                VEC *zz = dt;
                FN(load_lanes)(z, row0, blk.count, len, zz);
                for (int64_t t = 0; t < len; ++t) y[t] *= zz[t] * VSIGMOID(zz[t]);
            }
            FN(store_lanes)(out, row0, blk.count, len, y);
        }
        free(dt);
    }
}

/* One reverse step at time t of state n: the adjoint g of h_t, its contributions to the
 * sums over states S1 = sum g B and S2 = sum g h_{t-1} e^{dt A} A, and the lane products whose
 * sums are dB (g dt u) and dC (dy h_t). */
#define FN_REVERSE_STEP(t, prod_B, prod_C)                                                   \
    do {                                                                                      \
        VEC g = dy[t] * Cn[t] + carry;                                                        \
        VEC w = hprev[t] * decay[t];                                                          \
        VEC gw = g * w;                                                                       \
        S1[t] += g * Bn[t];                                                                   \
        S2[t] += gw * a;                                                                      \
        dA_lanes += gw * dt[t];                                                               \
        prod_B = g * dtu[t];                                                                  \
        prod_C = dy[t] * (w + dtu[t] * Bn[t]);                                                \
        carry = decay[t] * g;                                                                 \
    } while (0)

/* The backward's work items for any d_state: (batch, channel block) pairs; called inside the
 * backward's parallel region with that thread's accumulators (see selective_scan_bwd). */
static void FN(scan_bwd_items)(const REAL *u, const REAL *delta, const REAL *A, const REAL *Bm, const REAL *Cm,
                               const REAL *D, const REAL *z, const REAL *bias, int softplus, const REAL *y_ssm,
                               const REAL *dout, REAL *du, REAL *ddelta, REAL *dz, int64_t batch, int64_t dim,
                               int64_t len, int64_t nstate, int64_t groups, REAL *dB_acc, REAL *dC_acc,
                               REAL *dA_acc, REAL *dD_acc, REAL *dbias_acc) {
    int64_t nblocks = groups * ((dim / groups + LANES - 1) / LANES);
    VEC *dt = scratch_alloc(10 * len * sizeof(VEC));
    VEC *uu = dt + len, *dtu = dt + 2 * len, *dy = dt + 3 * len, *S1 = dt + 4 * len;
    VEC *S2 = dt + 5 * len, *hprev = dt + 6 * len, *decay = dt + 7 * len, *dzfac = dt + 8 * len;
    VEC *dsp = dt + 9 * len;
#pragma omp for schedule(dynamic)
    for (int64_t item = 0; item < batch * nblocks; ++item) {
        int64_t b = item / nblocks;
        FN(block_t) blk = FN(block_of)(item % nblocks, dim, groups);
        int64_t row0 = b * dim + blk.first;
        FN(load_delta)(delta, bias, softplus, row0, blk, len, dt, softplus ? dsp : NULL);
        FN(load_lanes)(u, row0, blk.count, len, uu);
        FN(load_lanes)(dout, row0, blk.count, len, dy);
        VEC Dv = FN(lanes_of)(D, 1, blk);
        if (z) {
            VEC *zz = hprev, *ys = decay;
            FN(load_lanes)(z, row0, blk.count, len, zz);
            FN(load_lanes)(y_ssm, row0, blk.count, len, ys);
            for (int64_t t = 0; t < len; ++t) {
                VEC s = VSIGMOID(zz[t]);
                dzfac[t] = dy[t] * (ys[t] + Dv * uu[t]) * s * (1 + zz[t] * (1 - s));
                dy[t] *= zz[t] * s;
            }
            FN(store_lanes)(dz, row0, blk.count, len, dzfac);
        }
        for (int64_t t = 0; t < len; ++t) {
            dtu[t] = dt[t] * uu[t];
            S1[t] = S2[t] = (VEC){0};
        }
        for (int64_t n = 0; n < nstate; ++n) {
            VEC a = FN(lanes_of)(A + n, nstate, blk);
            int64_t bc_off = ((b * groups + blk.group) * nstate + n) * len;
            const REAL *Bn = Bm + bc_off, *Cn = Cm + bc_off;
            REAL *dBn = dB_acc + bc_off, *dCn = dC_acc + bc_off;
            VEC h = {0};
            for (int64_t t = 0; t < len; ++t) {
                VEC e = VEXP(dt[t] * a);
                hprev[t] = h;
                decay[t] = e;
                h = e * h + dtu[t] * Bn[t];
            }
            VEC carry = {0}, dA_lanes = {0};
            int64_t t = len - 1;
            for (; t >= 0 && (t + 1) % 4; --t) { /* the last len % 4 steps one by one */
                VEC pB, pC;
                FN_REVERSE_STEP(t, pB, pC);
                for (int k = 0; k < LANES; ++k) {
                    dBn[t] += pB[k];
                    dCn[t] += pC[k];
                }
            }
            for (t -= 3; t >= 0; t -= 4) { /* then four at a time, their lane sums at once */
                VEC p[8], s;
                FN_REVERSE_STEP(t + 3, p[3], p[7]);
                FN_REVERSE_STEP(t + 2, p[2], p[6]);
                FN_REVERSE_STEP(t + 1, p[1], p[5]);
                FN_REVERSE_STEP(t, p[0], p[4]);
                LANE_SUMS_8(VEC, p, s);
                for (int k = 0; k < 4; ++k) {
                    dBn[t + k] += s[k];
                    dCn[t + k] += s[4 + k];
                }
            }
            for (int k = 0; k < blk.count; ++k) dA_acc[(blk.first + k) * nstate + n] += dA_lanes[k];
        }
        VEC dD_lanes = {0}, dbias_lanes = {0};
        for (int64_t t = 0; t < len; ++t) {
            VEC ddt = uu[t] * S1[t] + S2[t];
            dD_lanes += dy[t] * uu[t];
            S1[t] = dt[t] * S1[t] + dy[t] * Dv; /* du */
            if (softplus) ddt *= dsp[t];
            S2[t] = ddt;
            dbias_lanes += ddt;
        }
        FN(store_lanes)(du, row0, blk.count, len, S1);
        FN(store_lanes)(ddelta, row0, blk.count, len, S2);
        for (int k = 0; k < blk.count; ++k) {
            dD_acc[blk.first + k] += dD_lanes[k];
            dbias_acc[blk.first + k] += dbias_lanes[k];
        }
    }
    free(dt);
}

void FN(selective_scan_bwd)(const REAL *u, const REAL *delta, const REAL *A, const REAL *Bm,
                            const REAL *Cm, const REAL *D, const REAL *z, const REAL *bias,
                            int softplus, const REAL *y_ssm, const REAL *dout, REAL *du,
                            REAL *ddelta, REAL *dA, REAL *dB, REAL *dC, REAL *dD, REAL *dz,
                            REAL *dbias, int64_t batch, int64_t dim, int64_t len, int64_t nstate,
                            int64_t groups, int nthreads) {
    int64_t bc_size = batch * groups * nstate * len; /* elements of dB (and of dC) */
    if (nthreads < 1) nthreads = 1;
    /* Thread 0 accumulates dB, dC in place; the others into their own partials, added at the end. */
    size_t partial_size = 2 * bc_size + dim * nstate + 2 * dim;
    REAL *partials = scratch_alloc(nthreads * partial_size * sizeof(REAL));
    memset(partials, 0, nthreads * partial_size * sizeof(REAL));
    memset(dB, 0, bc_size * sizeof(REAL));
    memset(dC, 0, bc_size * sizeof(REAL));
#pragma omp parallel num_threads(nthreads)
    {
        int tid = omp_get_thread_num();
        REAL *mine = partials + tid * partial_size;
        REAL *dB_acc = tid ? mine : dB, *dC_acc = tid ? mine + bc_size : dC;
        REAL *dA_acc = mine + 2 * bc_size, *dD_acc = dA_acc + dim * nstate, *dbias_acc = dD_acc + dim;
        if (nstate == 1)
            FN(s1_bwd_items)(u, delta, A, Bm, Cm, D, z, bias, softplus, y_ssm, dout, du, ddelta, dz, batch, dim,
                             len, groups, dB_acc, dC_acc, dA_acc, dD_acc, dbias_acc);
        else
            FN(scan_bwd_items)(u, delta, A, Bm, Cm, D, z, bias, softplus, y_ssm, dout, du, ddelta, dz, batch,
                               dim, len, nstate, groups, dB_acc, dC_acc, dA_acc, dD_acc, dbias_acc);
        /* The work-items loop's implicit barrier has every thread's partials complete. */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < bc_size; ++i)
            for (int th = 1; th < nthreads; ++th) {
                dB[i] += partials[th * partial_size + i];
                dC[i] += partials[th * partial_size + bc_size + i];
            }
    }
    for (int64_t i = 0; i < dim * nstate; ++i) {
        REAL s = 0;
        for (int th = 0; th < nthreads; ++th) s += partials[th * partial_size + 2 * bc_size + i];
        dA[i] = s;
    }
    for (int64_t c = 0; c < dim; ++c) {
        REAL sd = 0, sb = 0;
        for (int th = 0; th < nthreads; ++th) {
            sd += partials[th * partial_size + 2 * bc_size + dim * nstate + c];
            sb += partials[th * partial_size + 2 * bc_size + dim * nstate + dim + c];
        }
        if (dD) dD[c] = sd;
        if (dbias) dbias[c] = sb;
    }
    free(partials);
}

#undef FN_REVERSE_STEP
