/* Body of the CPU selective scan, included by selective_scan.c once per REAL type.
 *
 * Layouts. A "row tile" is 8 channels x 8 steps read straight from (batch, dim, length) rows
 * (vector k = channel k, lane = step); elementwise work (softplus, gating, gradient terms) runs
 * there. Transposed in registers it becomes 8 "step vectors" (lane = channel), the layout of the
 * recurrence, whose per-step values live in per-thread scratch arrays indexed by step.
 *
 * The recurrence runs over STATES_PER_PASS states at once: their states, decays and adjoints
 * stay in registers, so the per-step inputs (dt, dt u, dy) are loaded and the sums over states
 * (y, and the backward's S1, S2) are updated once per pass instead of once per state. */

/* The first `count` (<= LANES) elements of p as a vector, zeros beyond; and the inverse store.
 * Shared by the kernels whose lane is a channel (the channel-last conv, the fused 1D scan). */
static inline VEC FN(vec_load_n)(const REAL *p, int count) {
    VEC v = {0};
    if (count == LANES)
        memcpy(&v, p, sizeof v);
    else
        for (int j = 0; j < count; ++j) v[j] = p[j];
    return v;
}

static inline void FN(vec_store_n)(REAL *p, VEC v, int count) {
    if (count == LANES)
        memcpy(p, &v, sizeof v);
    else
        for (int j = 0; j < count; ++j) p[j] = v[j];
}

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

/* The first row (element offset) and channel count of work item `item` (a batch element's
 * block); count 0 when item >= end (no such item for this thread). */
static inline int64_t FN(item_row)(int64_t item, int64_t end, int64_t dim, int64_t len, int64_t groups, int *count) {
    int64_t nblocks = groups * ((dim / groups + LANES - 1) / LANES);
    *count = 0;
    if (item >= end) return 0;
    FN(block_t) blk = FN(block_of)(item % nblocks, dim, groups);
    *count = (int)blk.count;
    return ((item / nblocks) * dim + blk.first) * len;
}

/* The row and count of the block a thread probably takes after `item` under a dynamic schedule
 * handing out `chunk` consecutive items at a time, in order (for prefetching): the next item of
 * the chunk, else the first item of the chunk one team's size further. */
static inline int64_t FN(next_block_row)(int64_t item, int64_t chunk, int64_t batch, int64_t dim, int64_t len,
                                         int64_t groups, int *count) {
    int64_t nblocks = groups * ((dim / groups + LANES - 1) / LANES);
    int64_t next = (item + 1) % chunk ? item + 1 : item + 1 + (omp_get_num_threads() - 1) * chunk;
    return FN(item_row)(next, batch * nblocks, dim, len, groups, count);
}

/* Prefetching rows: the cache line holding step j of each of the block's rows. */
#define LINE_STEPS (64 / (int)sizeof(REAL))

static inline void FN(prefetch_rows)(const REAL *p, int64_t len, int rows, int64_t j) {
    for (int k = 0; k < rows; ++k) __builtin_prefetch(p + k * len + j, 0, 3);
}

static inline void FN(prefetch_rows_for_write)(REAL *p, int64_t len, int rows, int64_t j) {
    for (int k = 0; k < rows; ++k) __builtin_prefetch(p + k * len + j, 1, 3);
}

#include "selective_scan_state1.h"

#define STATES_PER_PASS 4
#define FWD_TILE 16 /* steps per forward tile (measured faster than 32 or 64) */

/* Channels k < rows, steps j < cols of rows p + k * stride as 8 vectors, zero elsewhere (p may be NULL). */
static inline void FN(get_tile)(const REAL *p, int64_t stride, int rows, int cols, VEC *r) {
    if (p && rows == LANES && cols == LANES) {
        for (int k = 0; k < LANES; ++k) r[k] = FN(load)(p + k * stride);
        return;
    }
    REAL tile[LANES * LANES];
    FN(pad_tile)(p, stride, rows, cols, tile);
    for (int k = 0; k < LANES; ++k) r[k] = FN(load)(tile + k * LANES);
}

static inline void FN(put_tile)(REAL *p, int64_t stride, int rows, int cols, const VEC *r) {
    if (rows == LANES && cols == LANES) {
        for (int k = 0; k < LANES; ++k) FN(store)(p + k * stride, r[k]);
        return;
    }
    REAL tile[LANES * LANES];
    for (int k = 0; k < LANES; ++k) FN(store)(tile + k * LANES, r[k]);
    FN(unpad_tile)(p, stride, rows, cols, tile);
}

/* Per-block constants: per state, A and A times the exp argument scale (lane k = channel
 * first + k, 0 beyond the block); per channel, D and delta_bias (0 where absent); dt2_inrange:
 * the largest dt^2 for which every exp argument dt * a_scaled is within EXP_INRANGE. */
typedef struct {
    VEC *a, *a_scaled;
    REAL D[LANES], bias[LANES];
    VEC Dv;
    REAL dt2_inrange;
} FN(consts_t);

static void FN(consts_of)(const REAL *A, const REAL *D, const REAL *bias, int64_t nstate, FN(block_t) blk,
                          FN(consts_t) *c) {
    VEC zero = {0};
    REAL amax = 0;
    c->Dv = zero;
    for (int64_t n = 0; n < nstate; ++n) c->a[n] = c->a_scaled[n] = zero;
    for (int k = 0; k < LANES; ++k) {
        int in = k < blk.count;
        c->D[k] = in && D ? D[blk.first + k] : 0;
        c->bias[k] = in && bias ? bias[blk.first + k] : 0;
        c->Dv[k] = c->D[k];
        for (int64_t n = 0; in && n < nstate; ++n) {
            c->a[n][k] = A[(blk.first + k) * nstate + n];
            c->a_scaled[n][k] = c->a[n][k] * EXP_SCALE;
            REAL m = c->a_scaled[n][k] < 0 ? -c->a_scaled[n][k] : c->a_scaled[n][k];
            amax = m > amax ? m : amax;
        }
    }
    c->dt2_inrange = (EXP_INRANGE / amax) * (EXP_INRANGE / amax); /* +inf when every a is 0 */
}

/* Whether steps whose dt^2 are at most the lanes of dt2 keep every exp argument in range (NaN
 * inputs give NaN results either way). */
static inline int FN(exp_inrange)(VEC dt2, const FN(consts_t) *c) {
    REAL m = 0;
    for (int k = 0; k < LANES; ++k) m = dt2[k] > m ? dt2[k] : m;
    return m <= c->dt2_inrange;
}

/* dt = (softplus)(delta + bias) and dt * u of one row tile; sig = softplus' when asked. */
static inline void FN(dt_tile)(const REAL *u, const REAL *delta, int64_t len, int rows, int cols,
                               const FN(consts_t) *c, int softplus, VEC *dt, VEC *dtu, VEC *uu, VEC *sig) {
    FN(get_tile)(delta, len, rows, cols, dt);
    FN(get_tile)(u, len, rows, cols, uu);
    for (int k = 0; k < LANES; ++k) {
        VEC x = dt[k] + c->bias[k];
        dt[k] = softplus ? VSOFTPLUS(x, sig ? &sig[k] : NULL) : x;
        dtu[k] = dt[k] * uu[k];
    }
}

/* The forward recurrence of G states over `steps` steps of a tile: y[t] += sum_k C_k[t] h_k[t].
 * Bg, Cg: the first state's B, C at the tile's first step (state k is k * len further);
 * inrange: whether exp's arguments are known to be in range (no clamping). */
static inline __attribute__((always_inline)) void FN(fwd_pass)(int G, int inrange, const VEC *dtT, const VEC *dtuT,
                                                              VEC *yT, int64_t steps, const REAL *Bg,
                                                              const REAL *Cg, int64_t len, const VEC *a_scaled,
                                                              VEC *h) {
    VEC hk[STATES_PER_PASS], ak[STATES_PER_PASS];
    for (int k = 0; k < G; ++k) {
        hk[k] = h[k];
        ak[k] = a_scaled[k];
    }
    for (int64_t t = 0; t < steps; ++t) {
        VEC dt = dtT[t], dtu = dtuT[t], acc = yT[t];
        for (int k = 0; k < G; ++k) {
            VEC e = inrange ? VEXP_SCALED_INRANGE(dt * ak[k]) : VEXP_SCALED(dt * ak[k]);
            hk[k] = e * hk[k] + dtu * Bg[k * len + t];
            acc += hk[k] * Cg[k * len + t];
        }
        yT[t] = acc;
    }
    for (int k = 0; k < G; ++k) h[k] = hk[k];
}

void FN(selective_scan_fwd)(const REAL *u, const REAL *delta, const REAL *A, const REAL *Bm,
                            const REAL *Cm, const REAL *D, const REAL *z, const REAL *bias,
                            int softplus, REAL *out, REAL *y_ssm, REAL *last_state, int64_t batch,
                            int64_t dim, int64_t len, int64_t nstate, int64_t groups, int nthreads) {
    size_t full_bytes = (size_t)(batch * dim * len) * sizeof(REAL);
    advise_huge_pages(out, full_bytes);
    advise_huge_pages(y_ssm, full_bytes);
    if (nstate == 1) {
        FN(selective_scan_fwd_state1)(u, delta, A, Bm, Cm, D, z, bias, softplus, out, last_state, batch, dim,
                                      len, groups, nthreads);
        return;
    }
    int64_t nblocks = groups * ((dim / groups + LANES - 1) / LANES);
#pragma omp parallel num_threads(nthreads)
    {
        VEC *dtT = scratch_alloc((3 * FWD_TILE + 3 * nstate) * sizeof(VEC));
        VEC *dtuT = dtT + FWD_TILE, *yT = dtT + 2 * FWD_TILE, *h = dtT + 3 * FWD_TILE;
        FN(consts_t) c;
        c.a = h + nstate;
        c.a_scaled = c.a + nstate;
#pragma omp for schedule(dynamic)
        for (int64_t item = 0; item < batch * nblocks; ++item) {
            int64_t b = item / nblocks;
            FN(block_t) blk = FN(block_of)(item % nblocks, dim, groups);
            int64_t row = (b * dim + blk.first) * len, bc = (b * groups + blk.group) * nstate * len;
            int rows = (int)blk.count;
            FN(consts_of)(A, D, bias, nstate, blk, &c);
            memset(h, 0, nstate * sizeof(VEC));
            for (int64_t t0 = 0; t0 < len; t0 += FWD_TILE) {
                int64_t steps = len - t0 < FWD_TILE ? len - t0 : FWD_TILE;
                VEC dt2 = {0};
                for (int64_t j = 0; j < steps; j += LANES) {
                    int cols = steps - j < LANES ? (int)(steps - j) : LANES;
                    VEC dt[LANES], dtu[LANES], uu[LANES];
                    FN(dt_tile)(u + row + t0 + j, delta + row + t0 + j, len, rows, cols, &c, softplus, dt, dtu,
                                uu, NULL);
                    FN(transpose8)(dt);
                    FN(transpose8)(dtu);
                    for (int i = 0; i < LANES; ++i) {
                        dtT[j + i] = dt[i];
                        dtuT[j + i] = dtu[i];
                        yT[j + i] = (VEC){0};
                        dt2 = VMAX(dt2, dt[i] * dt[i]);
                    }
                }
                int inrange = FN(exp_inrange)(dt2, &c);
                /* The next tile's inputs (after a block's last tile: the next block's first) arrive
                 * while the states run. */
                int64_t next_row = row + t0 + FWD_TILE;
                int next_rows = rows;
                if (t0 + FWD_TILE >= len) next_row = FN(next_block_row)(item, 1, batch, dim, len, groups, &next_rows);
                for (int64_t j = 0; j < FWD_TILE && next_row % len + j < len; j += LINE_STEPS) {
                    FN(prefetch_rows)(u + next_row, len, next_rows, j);
                    FN(prefetch_rows)(delta + next_row, len, next_rows, j);
                    if (z) FN(prefetch_rows)(z + next_row, len, next_rows, j);
                }
                for (int64_t j = t0; j < t0 + steps; j += LINE_STEPS) {
                    FN(prefetch_rows_for_write)(out + row, len, rows, j);
                    if (y_ssm) FN(prefetch_rows_for_write)(y_ssm + row, len, rows, j);
                }
                for (int64_t n = 0; n < nstate;) {
                    int G = nstate - n >= STATES_PER_PASS ? STATES_PER_PASS : 1;
                    const REAL *Bg = Bm + bc + n * len + t0, *Cg = Cm + bc + n * len + t0;
                    if (G == STATES_PER_PASS && inrange)
                        FN(fwd_pass)(STATES_PER_PASS, 1, dtT, dtuT, yT, steps, Bg, Cg, len, c.a_scaled + n, h + n);
                    else if (G == STATES_PER_PASS)
                        FN(fwd_pass)(STATES_PER_PASS, 0, dtT, dtuT, yT, steps, Bg, Cg, len, c.a_scaled + n, h + n);
                    else /* the last nstate % STATES_PER_PASS states one at a time */
                        FN(fwd_pass)(1, 0, dtT, dtuT, yT, steps, Bg, Cg, len, c.a_scaled + n, h + n);
                    n += G;
                }
                for (int64_t j = 0; j < steps; j += LANES) {
                    int cols = steps - j < LANES ? (int)(steps - j) : LANES;
                    int64_t at = row + t0 + j;
                    VEC y[LANES], uu[LANES], zz[LANES];
                    for (int i = 0; i < LANES; ++i) y[i] = yT[j + i];
                    FN(transpose8)(y);
                    if (y_ssm) FN(put_tile)(y_ssm + at, len, rows, cols, y);
                    FN(get_tile)(u + at, len, rows, cols, uu);
                    if (z) FN(get_tile)(z + at, len, rows, cols, zz);
                    for (int k = 0; k < LANES; ++k) {
                        y[k] += c.D[k] * uu[k];
                        if (z) y[k] *= zz[k] * VSIGMOID(zz[k]);
                    }
                    FN(put_tile)(out + at, len, rows, cols, y);
                }
            }
            if (last_state)
                for (int k = 0; k < rows; ++k)
                    for (int64_t n = 0; n < nstate; ++n) last_state[(b * dim + blk.first + k) * nstate + n] = h[n][k];
        }
        free(dtT);
    }
}

/* Lane sums of v[0..7] as one vector: lane i = sum of v[i] (an add tree of unpack, 64-bit and
 * 128-bit shuffles, each one AVX instruction for float). */
static inline VEC FN(lane_sums8)(const VEC *v) {
    VEC s[4], q[2];
    for (int i = 0; i < 4; ++i)
        s[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 8, 1, 9, 4, 12, 5, 13) +
               __builtin_shufflevector(v[2 * i], v[2 * i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    for (int i = 0; i < 2; ++i)
        q[i] = __builtin_shufflevector(s[2 * i], s[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(s[2 * i], s[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    return __builtin_shufflevector(q[0], q[1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(q[0], q[1], 4, 5, 6, 7, 12, 13, 14, 15);
}

/* Per-thread scratch of the backward: step arrays of one block (padded: length rounded up to
 * 8); w and e hold STATES_PER_PASS vectors per step; dyu[t] = sum over channels of dy dt u;
 * inrange[t / 8]: whether the tile's exp arguments are in range (see exp_inrange). */
typedef struct {
    VEC *dt, *dtu, *dy, *u, *sig, *S1, *S2, *w, *e;
    REAL *dyu;
    unsigned char *inrange;
} FN(bwd_scratch_t);

/* One block in the backward: its rows (element 0 of its first row), the last state's gradient,
 * constants and the lane sums over steps of dD and dbias; the next_rows rows of the block this thread probably takes
 * next (see item_row) start next_shift elements further: prefetched at this one's end. */
typedef struct {
    const REAL *u, *delta, *dout, *z, *y_ssm, *dlast; /* dlast: (channel, state) rows, or NULL */
    REAL *du, *ddelta, *dz;
    int64_t len, next_shift, nstate;
    int rows, softplus, next_rows;
    const FN(consts_t) *c;
    VEC dD, dbias;
} FN(bwd_block_t);

/* The backward reads and writes rows while it computes: their cache lines are requested this
 * many steps ahead, so that memory latency hides behind the recurrence. */
#define PREFETCH_STEPS 64

/* Steps j .. j+7 of the block's inputs into scratch (transposed): dt, dt u, u, softplus', dy
 * (gated by z, whose gradient is written here) and their channel sums dyu; S1, S2 start at 0. */
static inline void FN(bwd_load_tile)(const FN(bwd_block_t) *blk, const FN(bwd_scratch_t) *s, int64_t j) {
    int64_t len = blk->len, ahead = j + PREFETCH_STEPS;
    int rows = blk->rows, cols = len - j < LANES ? (int)(len - j) : LANES;
    if (ahead < len && ahead % LINE_STEPS < LANES) {
        FN(prefetch_rows)(blk->u, len, rows, ahead);
        FN(prefetch_rows)(blk->delta, len, rows, ahead);
        FN(prefetch_rows)(blk->dout, len, rows, ahead);
        if (blk->z) {
            FN(prefetch_rows)(blk->z, len, rows, ahead);
            FN(prefetch_rows)(blk->y_ssm, len, rows, ahead);
            FN(prefetch_rows_for_write)(blk->dz, len, rows, ahead);
        }
    }
    VEC dt[LANES], dtu[LANES], uu[LANES], sig[LANES], dy[LANES];
    FN(dt_tile)(blk->u + j, blk->delta + j, len, rows, cols, blk->c, blk->softplus, dt, dtu, uu, sig);
    FN(get_tile)(blk->dout + j, len, rows, cols, dy);
    if (blk->z) {
        VEC zz[LANES], ys[LANES], dzz[LANES];
        FN(get_tile)(blk->z + j, len, rows, cols, zz);
        FN(get_tile)(blk->y_ssm + j, len, rows, cols, ys);
        for (int k = 0; k < LANES; ++k) {
            VEC sz = VSIGMOID(zz[k]);
            dzz[k] = dy[k] * (ys[k] + blk->c->D[k] * uu[k]) * sz * (1 + zz[k] * (1 - sz));
            dy[k] *= zz[k] * sz;
        }
        FN(put_tile)(blk->dz + j, len, rows, cols, dzz);
    }
    FN(transpose8)(dt);
    FN(transpose8)(dtu);
    FN(transpose8)(dy);
    FN(transpose8)(uu);
    if (blk->softplus) FN(transpose8)(sig);
    VEC dt2 = {0}, p[LANES];
    for (int i = 0; i < LANES; ++i) {
        s->dt[j + i] = dt[i];
        s->dtu[j + i] = dtu[i];
        s->dy[j + i] = dy[i];
        s->u[j + i] = uu[i];
        if (blk->softplus) s->sig[j + i] = sig[i];
        s->S1[j + i] = s->S2[j + i] = (VEC){0};
        dt2 = VMAX(dt2, dt[i] * dt[i]);
        p[i] = dy[i] * dtu[i];
    }
    FN(store)(s->dyu + j, FN(lane_sums8)(p));
    s->inrange[j / LANES] = (unsigned char)FN(exp_inrange)(dt2, blk->c);
}

/* Steps j .. j+7 of du = dt S1 + D dy and ddelta = (u S1 + S2) softplus' (S1, S2 complete). */
static inline void FN(bwd_store_tile)(FN(bwd_block_t) *blk, const FN(bwd_scratch_t) *s, int64_t j) {
    int64_t len = blk->len, ahead = j - PREFETCH_STEPS;
    int rows = blk->rows, cols = len - j < LANES ? (int)(len - j) : LANES;
    if (ahead >= 0 && ahead % LINE_STEPS < LANES) {
        FN(prefetch_rows_for_write)(blk->du, len, rows, ahead);
        FN(prefetch_rows_for_write)(blk->ddelta, len, rows, ahead);
    }
    if (blk->next_rows && j < PREFETCH_STEPS && j % LINE_STEPS < LANES) { /* the next block's first steps */
        int64_t at = blk->next_shift + j;
        FN(prefetch_rows)(blk->u + at, len, blk->next_rows, 0);
        FN(prefetch_rows)(blk->delta + at, len, blk->next_rows, 0);
        FN(prefetch_rows)(blk->dout + at, len, blk->next_rows, 0);
        if (blk->z) {
            FN(prefetch_rows)(blk->z + at, len, blk->next_rows, 0);
            FN(prefetch_rows)(blk->y_ssm + at, len, blk->next_rows, 0);
            FN(prefetch_rows_for_write)(blk->dz + at, len, blk->next_rows, 0);
        }
    }
    VEC gu[LANES], gd[LANES];
    for (int i = 0; i < LANES; ++i) {
        VEC S1 = s->S1[j + i], dy = s->dy[j + i], uu = s->u[j + i];
        VEC ddt = uu * S1 + s->S2[j + i];
        if (blk->softplus) ddt *= s->sig[j + i];
        gu[i] = s->dt[j + i] * S1 + dy * blk->c->Dv;
        gd[i] = ddt;
        blk->dD += dy * uu;
        blk->dbias += ddt;
    }
    FN(transpose8)(gu);
    FN(transpose8)(gd);
    FN(put_tile)(blk->du + j, len, rows, cols, gu);
    FN(put_tile)(blk->ddelta + j, len, rows, cols, gd);
}

/* Steps t .. end-1 of the forward recomputation of G states, keeping e_t = exp(dt_t a) and
 * w_t = e_t h_{t-1} (h_t = w_t + dt_t u_t B_t; keeping w rather than h keeps it exact, e.g. 0
 * at t = 0). */
static inline __attribute__((always_inline)) void FN(bwd_recompute_steps)(int G, int inrange,
                                                                         const FN(bwd_scratch_t) *s,
                                                                         int64_t t, int64_t end, int64_t len,
                                                                         const REAL *Bg, const VEC *ak, VEC *hk) {
    for (; t < end; ++t) {
        VEC dt = s->dt[t], dtu = s->dtu[t];
        for (int k = 0; k < G; ++k) {
            VEC e = inrange ? VEXP_SCALED_INRANGE(dt * ak[k]) : VEXP_SCALED(dt * ak[k]), w = e * hk[k];
            hk[k] = w + dtu * Bg[k * len + t];
            s->e[t * G + k] = e;
            s->w[t * G + k] = w;
        }
    }
}

/* The forward recomputation of G states over the whole sequence, tile by tile; the first pass
 * of a block also loads its inputs, a tile ahead of the steps. */
static inline __attribute__((always_inline)) void FN(bwd_recompute)(int G, int first, const FN(bwd_block_t) *blk,
                                                                   const FN(bwd_scratch_t) *s, const REAL *Bg,
                                                                   const VEC *a_scaled) {
    int64_t len = blk->len;
    VEC hk[STATES_PER_PASS], ak[STATES_PER_PASS];
    for (int k = 0; k < G; ++k) {
        hk[k] = (VEC){0};
        ak[k] = a_scaled[k];
    }
    for (int64_t j = 0; j < len; j += LANES) {
        if (first) FN(bwd_load_tile)(blk, s, j);
        int64_t end = len - j < LANES ? len : j + LANES;
        if (s->inrange[j / LANES])
            FN(bwd_recompute_steps)(G, 1, s, j, end, len, Bg, ak, hk);
        else
            FN(bwd_recompute_steps)(G, 0, s, j, end, len, Bg, ak, hk);
    }
}

/* The reverse pass of G states: with the adjoint g_t of h_t, adds to S1[t] = sum_n g B and
 * S2[t] = sum_n g e_t h_{t-1} A (dt's and u's gradients need only these), to dA, and to the dB
 * and dC rows the channel sums of g dt u and of dy h = dy w + dy dt u B, the latter as
 * sum(dy w) + B dyu (lane sums of 8 vectors at once, transposed per tile into rows). The last
 * pass of a block also writes du, ddelta tile by tile. The adjoint starts from the last state's
 * gradient (states n .. n+G-1). */
static inline __attribute__((always_inline)) void FN(bwd_reverse)(int G, int last, FN(bwd_block_t) *blk,
                                                                 const FN(bwd_scratch_t) *s, const REAL *Bg,
                                                                 const REAL *Cg, const VEC *a, REAL *dBg,
                                                                 REAL *dCg, VEC *dA, int64_t n) {
    int64_t len = blk->len;
    VEC carry[STATES_PER_PASS], dAk[STATES_PER_PASS];
    for (int k = 0; k < G; ++k) {
        carry[k] = dAk[k] = (VEC){0};
        for (int i = 0; blk->dlast && i < blk->rows; ++i) carry[k][i] = blk->dlast[i * blk->nstate + n + k];
    }
    for (int64_t j = (len - 1) / LANES * LANES; j >= 0; j -= LANES) {
        int cols = len - j < LANES ? (int)(len - j) : LANES;
        VEC sums[LANES];
        for (int i = cols; i < LANES; ++i) sums[i] = (VEC){0};
        for (int64_t t = j + cols - 1; t >= j; --t) {
            VEC dt = s->dt[t], dtu = s->dtu[t], dy = s->dy[t], s1 = s->S1[t], s2 = s->S2[t];
            VEC p[2 * STATES_PER_PASS];
            for (int k = 0; k < G; ++k) {
                REAL Bk = Bg[k * len + t];
                VEC w = s->w[t * G + k];
                VEC g = dy * Cg[k * len + t] + carry[k];
                VEC q = g * w;
                s1 += g * Bk;
                s2 += q * a[k];
                dAk[k] += q * dt;
                p[k] = g * dtu;
                p[STATES_PER_PASS + k] = dy * w;
                carry[k] = s->e[t * G + k] * g;
            }
            for (int k = G; k < STATES_PER_PASS; ++k) p[k] = p[STATES_PER_PASS + k] = (VEC){0};
            s->S1[t] = s1;
            s->S2[t] = s2;
            sums[t - j] = FN(lane_sums8)(p);
        }
        FN(transpose8)(sums); /* row k: dB of state k at steps j.., row 4 + k: dC */
        for (int k = 0; k < G; ++k) {
            REAL *dBr = dBg + k * len + j, *dCr = dCg + k * len + j;
            const REAL *Br = Bg + k * len + j;
            if (cols == LANES) {
                FN(store)(dBr, FN(load)(dBr) + sums[k]);
                FN(store)(dCr, FN(load)(dCr) + sums[STATES_PER_PASS + k] + FN(load)(Br) * FN(load)(s->dyu + j));
            } else {
                for (int i = 0; i < cols; ++i) {
                    dBr[i] += sums[k][i];
                    dCr[i] += sums[STATES_PER_PASS + k][i] + Br[i] * s->dyu[j + i];
                }
            }
        }
        if (last) FN(bwd_store_tile)(blk, s, j);
    }
    for (int k = 0; k < G; ++k) dA[k] = dAk[k];
}

/* One group of G states (first, last: whether it is the block's first, last group). */
static inline __attribute__((always_inline)) void FN(bwd_states)(int G, int first, int last, FN(bwd_block_t) *blk,
                                                                const FN(bwd_scratch_t) *s, const REAL *Bg,
                                                                const REAL *Cg, const VEC *a, const VEC *a_scaled,
                                                                REAL *dBg, REAL *dCg, VEC *dA, int64_t n) {
    if (first)
        FN(bwd_recompute)(G, 1, blk, s, Bg, a_scaled);
    else
        FN(bwd_recompute)(G, 0, blk, s, Bg, a_scaled);
    if (last)
        FN(bwd_reverse)(G, 1, blk, s, Bg, Cg, a, dBg, dCg, dA, n);
    else
        FN(bwd_reverse)(G, 0, blk, s, Bg, Cg, a, dBg, dCg, dA, n);
}

/* The backward's work items [first, end) for any d_state, in order: (batch, channel block)
 * pairs; called inside the backward's parallel region with that thread's range and
 * accumulators (see selective_scan_bwd). */
static void FN(scan_bwd_items)(const REAL *u, const REAL *delta, const REAL *A, const REAL *Bm, const REAL *Cm,
                               const REAL *D, const REAL *z, const REAL *bias, int softplus, const REAL *y_ssm,
                               const REAL *dout, const REAL *dlast, REAL *du, REAL *ddelta, REAL *dz,
                               int64_t first, int64_t end, int64_t dim, int64_t len, int64_t nstate,
                               int64_t groups, REAL *dB_acc, REAL *dC_acc, REAL *dA_acc, REAL *dD_acc,
                               REAL *dbias_acc) {
    int64_t nblocks = groups * ((dim / groups + LANES - 1) / LANES);
    int64_t padded = (len + LANES - 1) / LANES * LANES;
    FN(bwd_scratch_t) s;
    s.dt = scratch_alloc(((7 + 2 * STATES_PER_PASS) * padded + 2 * nstate) * sizeof(VEC) +
                         padded * sizeof(REAL) + padded / LANES);
    s.dtu = s.dt + padded, s.dy = s.dtu + padded, s.u = s.dy + padded, s.sig = s.u + padded;
    s.S1 = s.sig + padded, s.S2 = s.S1 + padded, s.w = s.S2 + padded;
    s.e = s.w + STATES_PER_PASS * padded;
    FN(consts_t) c;
    c.a = s.e + STATES_PER_PASS * padded;
    c.a_scaled = c.a + nstate;
    s.dyu = (REAL *)(c.a_scaled + nstate);
    s.inrange = (unsigned char *)(s.dyu + padded);
    for (int64_t item = first; item < end; ++item) {
        int64_t b = item / nblocks;
        FN(block_t) blk = FN(block_of)(item % nblocks, dim, groups);
        int64_t row = (b * dim + blk.first) * len, bc = (b * groups + blk.group) * nstate * len;
        FN(consts_of)(A, D, bias, nstate, blk, &c);
        int next_rows;
        int64_t next_shift = FN(item_row)(item + 1, end, dim, len, groups, &next_rows) - row;
        FN(bwd_block_t) bb = {u + row, delta + row, dout + row, z ? z + row : NULL, z ? y_ssm + row : NULL,
                              dlast ? dlast + (b * dim + blk.first) * nstate : NULL,
                              du + row, ddelta + row, z ? dz + row : NULL, len, next_shift, nstate, (int)blk.count,
                              softplus, next_rows, &c, {0}, {0}};
        for (int64_t n = 0; n < nstate;) {
            int G = nstate - n >= STATES_PER_PASS ? STATES_PER_PASS : 1, first_pass = n == 0, last_pass = n + G == nstate;
            const REAL *Bg = Bm + bc + n * len, *Cg = Cm + bc + n * len;
            REAL *dBg = dB_acc + bc + n * len, *dCg = dC_acc + bc + n * len;
            VEC dA[STATES_PER_PASS];
            if (G == STATES_PER_PASS)
                FN(bwd_states)(STATES_PER_PASS, first_pass, last_pass, &bb, &s, Bg, Cg, c.a + n, c.a_scaled + n, dBg, dCg, dA, n);
            else
                FN(bwd_states)(1, first_pass, last_pass, &bb, &s, Bg, Cg, c.a + n, c.a_scaled + n, dBg, dCg, dA, n);
            for (int k = 0; k < G; ++k)
                for (int i = 0; i < bb.rows; ++i) dA_acc[(blk.first + i) * nstate + n + k] += dA[k][i];
            n += G;
        }
        for (int k = 0; k < bb.rows; ++k) {
            dD_acc[blk.first + k] += bb.dD[k];
            dbias_acc[blk.first + k] += bb.dbias[k];
        }
    }
    free(s.dt);
}

/* Deterministic: every thread takes a fixed contiguous range of work items (climp_thread_range)
 * and sums dA, dD, dbias, dB, dC into its own partials, added in thread order at the end
 * (parallel.h); same inputs and thread count give the same bits. */
void FN(selective_scan_bwd)(const REAL *u, const REAL *delta, const REAL *A, const REAL *Bm,
                            const REAL *Cm, const REAL *D, const REAL *z, const REAL *bias,
                            int softplus, const REAL *y_ssm, const REAL *dout, const REAL *dlast,
                            REAL *du, REAL *ddelta, REAL *dA, REAL *dB, REAL *dC, REAL *dD, REAL *dz,
                            REAL *dbias, int64_t batch, int64_t dim, int64_t len, int64_t nstate,
                            int64_t groups, int nthreads) {
    int64_t bc_size = batch * groups * nstate * len; /* elements of dB (and of dC) */
    int64_t nitems = batch * groups * ((dim / groups + LANES - 1) / LANES);
    size_t full_bytes = (size_t)(batch * dim * len) * sizeof(REAL);
    advise_huge_pages(du, full_bytes);
    advise_huge_pages(ddelta, full_bytes);
    advise_huge_pages(dz, full_bytes);
    if (nthreads < 1) nthreads = 1;
    /* Per thread: a row of `sums` (dA, dD, dbias) and a dB, dC pair of `partials`. */
    int64_t sums_size = dim * nstate + 2 * dim;
    size_t total = (size_t)nthreads * (sums_size + 2 * bc_size);
    REAL *sums = scratch_alloc(total * sizeof(REAL));
    REAL *partials = sums + nthreads * sums_size;
    memset(sums, 0, total * sizeof(REAL));
#pragma omp parallel num_threads(nthreads)
    {
        int tid = omp_get_thread_num(), team = omp_get_num_threads();
        REAL *dB_acc = partials + tid * 2 * bc_size, *dC_acc = dB_acc + bc_size;
        REAL *dA_acc = sums + tid * sums_size, *dD_acc = dA_acc + dim * nstate, *dbias_acc = dD_acc + dim;
        int64_t first, end;
        climp_thread_range(nitems, &first, &end);
        if (nstate == 1)
            FN(s1_bwd_items)(u, delta, A, Bm, Cm, D, z, bias, softplus, dout, dlast, du, ddelta, dz, first, end,
                             dim, len, groups, dB_acc, dC_acc, dA_acc, dD_acc, dbias_acc);
        else
            FN(scan_bwd_items)(u, delta, A, Bm, Cm, D, z, bias, softplus, y_ssm, dout, dlast, du, ddelta, dz,
                               first, end, dim, len, nstate, groups, dB_acc, dC_acc, dA_acc, dD_acc, dbias_acc);
#pragma omp barrier
        climp_thread_range(bc_size, &first, &end);
        SUM_PARTIALS(dB, partials, team, 2 * bc_size, first, end, 0);
        SUM_PARTIALS(dC, partials + bc_size, team, 2 * bc_size, first, end, 0);
        climp_thread_range(dim * nstate, &first, &end);
        SUM_PARTIALS(dA, sums, team, sums_size, first, end, 0);
        climp_thread_range(dim, &first, &end);
        if (dD) SUM_PARTIALS(dD, sums + dim * nstate, team, sums_size, first, end, 0);
        if (dbias) SUM_PARTIALS(dbias, sums + dim * nstate + dim, team, sums_size, first, end, 0);
    }
    free(sums);
}

#undef STATES_PER_PASS
#undef FWD_TILE
#undef PREFETCH_STEPS
#undef LINE_STEPS
