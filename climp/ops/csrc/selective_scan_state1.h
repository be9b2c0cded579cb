/* d_state = 1 selective scan (VMamba's default), included by selective_scan.c once per REAL type.
 *
 * With one state, everything but the recurrence is elementwise, so the kernel reads u, delta,
 * dout, ... straight from their (batch, dim, length) rows in tiles of 8 channels x 8 steps
 * (lane = time step, one vector per channel) and computes softplus, exp, products and all
 * gradient terms there. Only the recurrence h_t = e_t h_{t-1} + x_t (and its adjoint) runs
 * across channels: each tile is transposed in registers (lane = channel), stepped through its 8
 * time steps, and transposed back. No full-size scratch pass, no lane-by-lane copies.
 * Edge tiles (length % 8, blocks of fewer than 8 channels) are copied into zero-padded tiles;
 * zero inputs make every padded term vanish, and padded results are never written out.
 * A block's 8 rows are 8 short streams per tensor, too short for the hardware prefetcher to
 * pick up: every pass requests the cache lines it needs S1_AHEAD steps ahead, and its last
 * steps request the first lines of the next pass (the reverse pass, or the thread's next block).
 */

/* 8x8 transpose of r[0..7] in registers (unpack, 2-lane shuffle, 128-bit half swaps). */
static inline void FN(transpose8)(VEC *r) {
    VEC t[8], s[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = __builtin_shufflevector(r[i], r[i + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[i + 1] = __builtin_shufflevector(r[i], r[i + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int i = 0; i < 8; i += 4)
        for (int j = 0; j < 2; ++j) {
            s[i + j] = __builtin_shufflevector(t[i + j], t[i + j + 2], 0, 1, 8, 9, 4, 5, 12, 13);
            s[i + j + 2] = __builtin_shufflevector(t[i + j], t[i + j + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        }
    /* s[0..3] hold columns (0,4), (2,6), (1,5), (3,7) of rows 0-3 in their halves; s[4..7] of rows 4-7. */
    static const int order[4] = {0, 2, 1, 3};
    for (int i = 0; i < 4; ++i) {
        r[order[i]] = __builtin_shufflevector(s[i], s[i + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        r[order[i] + 4] = __builtin_shufflevector(s[i], s[i + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
}

static inline VEC FN(load)(const REAL *p) {
    VEC v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void FN(store)(REAL *p, VEC v) { memcpy(p, &v, sizeof v); }

static inline REAL FN(lane_sum)(VEC v) {
    REAL s = 0;
    for (int k = 0; k < LANES; ++k) s += v[k];
    return s;
}

/* A tile's rows: row k of a (batch, dim, length) tensor starts at base + k * stride. */
typedef struct {
    const REAL *base;
    int64_t stride;
} FN(rows_t);

/* Copy rows x cols of src into an 8x8 zero-padded tile (stride 8). */
static inline void FN(pad_tile)(const REAL *src, int64_t stride, int rows, int cols, REAL *tile) {
    for (int k = 0; k < LANES; ++k)
        for (int j = 0; j < LANES; ++j) tile[k * LANES + j] = src && k < rows && j < cols ? src[k * stride + j] : 0;
}

static inline void FN(unpad_tile)(REAL *dst, int64_t stride, int rows, int cols, const REAL *tile) {
    if (!dst) return;
    for (int k = 0; k < rows; ++k)
        for (int j = 0; j < cols; ++j) dst[k * stride + j] = tile[k * LANES + j];
}

/* Per-block constants, lane k = channel first + k (0 where absent or beyond the block). */
typedef struct {
    REAL a[LANES], D[LANES], bias[LANES];
} FN(chan_t);

static void FN(chan_of)(const REAL *A, const REAL *D, const REAL *bias, FN(block_t) blk, FN(chan_t) *c) {
    memset(c, 0, sizeof *c);
    for (int k = 0; k < blk.count; ++k) {
        c->a[k] = A[blk.first + k];
        c->D[k] = D ? D[blk.first + k] : 0;
        c->bias[k] = bias ? bias[blk.first + k] : 0;
    }
}

/* Forward of one tile. in: u, delta, z rows; Bt, Ct: 8 steps. h: state carried across tiles,
 * left at the tile's step steps - 1 (its last real step; padded steps follow it). */
static inline __attribute__((always_inline)) void FN(s1_fwd_tile)(const REAL *u, const REAL *delta, const REAL *z, int64_t stride,
                                   const REAL *Bt, const REAL *Ct, const FN(chan_t) *c, int softplus,
                                   VEC *h, REAL *out, int64_t out_stride, int steps) {
    VEC e[LANES], x[LANES];
    VEC Bv = FN(load)(Bt), Cv = FN(load)(Ct);
    for (int k = 0; k < LANES; ++k) {
        VEC dt = FN(load)(delta + k * stride) + c->bias[k];
        if (softplus) dt = VSOFTPLUS(dt, NULL);
        e[k] = VEXP(dt * c->a[k]);
        x[k] = dt * FN(load)(u + k * stride) * Bv;
    }
    FN(transpose8)(e);
    FN(transpose8)(x);
    VEC hh = *h;
    for (int j = 0; j < LANES; ++j) x[j] = hh = e[j] * hh + x[j];
    *h = x[steps - 1];
    FN(transpose8)(x);
    for (int k = 0; k < LANES; ++k) {
        VEC y = x[k] * Cv + c->D[k] * FN(load)(u + k * stride);
        if (z) {
            VEC zk = FN(load)(z + k * stride);
            y *= zk * VSIGMOID(zk);
        }
        FN(store)(out + k * out_stride, y);
    }
}

/* Prefetch distance in steps: rows are read S1_AHEAD steps before use, and a block's last
 * S1_AHEAD steps prefetch the first ones of the block the thread probably takes next. */
#define S1_AHEAD 64

static void FN(s1_fwd_block)(const REAL *u, const REAL *delta, const REAL *z, const REAL *Bm,
                             const REAL *Cm, const FN(chan_t) *c, int softplus, int count, int64_t len,
                             REAL *out, REAL *last, int64_t next_shift, int next_rows) {
    VEC h = {0};
    int64_t t0 = 0;
    if (count == LANES)
        for (; t0 + LANES <= len; t0 += LANES) { /* softplus as a constant: one specialised copy each */
            int64_t ahead = t0 + S1_AHEAD; /* this block's step, else the next block's step ahead - len */
            if (ahead % LINE_STEPS < LANES && ahead < len) {
                FN(prefetch_rows)(u + ahead, len, count, 0);
                FN(prefetch_rows)(delta + ahead, len, count, 0);
                if (z) FN(prefetch_rows)(z + ahead, len, count, 0);
                FN(prefetch_rows_for_write)(out + ahead, len, count, 0);
            } else if (ahead >= len && (ahead - len) % LINE_STEPS < LANES && ahead - len < len && next_rows) {
                int64_t at = next_shift + ahead - len;
                FN(prefetch_rows)(u + at, len, next_rows, 0);
                FN(prefetch_rows)(delta + at, len, next_rows, 0);
                if (z) FN(prefetch_rows)(z + at, len, next_rows, 0);
                FN(prefetch_rows_for_write)(out + at, len, next_rows, 0);
            }
            if (softplus)
                FN(s1_fwd_tile)(u + t0, delta + t0, z ? z + t0 : NULL, len, Bm + t0, Cm + t0, c, 1, &h, out + t0,
                                len, LANES);
            else
                FN(s1_fwd_tile)(u + t0, delta + t0, z ? z + t0 : NULL, len, Bm + t0, Cm + t0, c, 0, &h, out + t0,
                                len, LANES);
        }
    for (; t0 < len; t0 += LANES) { /* edge tiles */
        int cols = len - t0 < LANES ? (int)(len - t0) : LANES;
        REAL tu[LANES * LANES], td[LANES * LANES], tz[LANES * LANES], to[LANES * LANES];
        REAL tb[LANES * LANES], tc[LANES * LANES];
        FN(pad_tile)(u + t0, len, count, cols, tu);
        FN(pad_tile)(delta + t0, len, count, cols, td);
        FN(pad_tile)(z ? z + t0 : NULL, len, count, cols, tz);
        FN(pad_tile)(Bm + t0, len, 1, cols, tb);
        FN(pad_tile)(Cm + t0, len, 1, cols, tc);
        FN(s1_fwd_tile)(tu, td, z ? tz : NULL, LANES, tb, tc, c, softplus, &h, to, LANES, cols);
        FN(unpad_tile)(out + t0, len, count, cols, to);
    }
    for (int k = 0; last && k < count; ++k) last[k] = h[k];
}

void FN(selective_scan_fwd_state1)(const REAL *u, const REAL *delta, const REAL *A, const REAL *Bm,
                                   const REAL *Cm, const REAL *D, const REAL *z, const REAL *bias,
                                   int softplus, REAL *out, REAL *last_state, int64_t batch, int64_t dim,
                                   int64_t len, int64_t groups, int nthreads) {
    int64_t nblocks = groups * ((dim / groups + LANES - 1) / LANES);
    int64_t chunk = 1 + 2048 / (LANES * len); /* items per scheduling grab: ~2k elements or more */
#pragma omp parallel for num_threads(nthreads) schedule(dynamic, chunk)
    for (int64_t item = 0; item < batch * nblocks; ++item) {
        int64_t b = item / nblocks;
        FN(block_t) blk = FN(block_of)(item % nblocks, dim, groups);
        int64_t row = (b * dim + blk.first) * len, bc = (b * groups + blk.group) * len;
        FN(chan_t) c;
        FN(chan_of)(A, D, bias, blk, &c);
        int next_rows;
        int64_t next_row = FN(next_block_row)(item, chunk, batch, dim, len, groups, &next_rows);
        FN(s1_fwd_block)(u + row, delta + row, z ? z + row : NULL, Bm + bc, Cm + bc, &c, softplus,
                         (int)blk.count, len, out + row, last_state ? last_state + b * dim + blk.first : NULL,
                         next_row - row, next_rows);
    }
}

/* Per-thread scratch of the backward, for one block: rows of dt, sigmoid (softplus') and h, and
 * e transposed (lane = channel) for the adjoint recurrence. padded = length rounded up to 8.
 * The reverse pass gets e_t h_{t-1} as h_t - dt_t u_t B_t: its rounding error is below h_t's
 * ulp, i.e. relative to the larger of the two terms, as in the forward sum. */
typedef struct {
    REAL *dt, *sig, *h;
    VEC *eT;
    int64_t padded;
} FN(s1_scratch_t);

/* Forward recomputation of one tile into scratch (t0: first step; rows as in s1_fwd_tile). */
static inline __attribute__((always_inline)) void FN(s1_bwd_forward_tile)(const REAL *u, const REAL *delta, int64_t stride, const REAL *Bt,
                                           const FN(chan_t) *c, int softplus, VEC *h, FN(s1_scratch_t) *s,
                                           int64_t t0) {
    VEC e[LANES], x[LANES];
    VEC Bv = FN(load)(Bt);
    int64_t P = s->padded;
    for (int k = 0; k < LANES; ++k) {
        VEC dt = FN(load)(delta + k * stride) + c->bias[k], sig;
        if (softplus) {
            dt = VSOFTPLUS(dt, &sig);
            FN(store)(s->sig + k * P + t0, sig);
        }
        e[k] = VEXP(dt * c->a[k]);
        x[k] = dt * FN(load)(u + k * stride) * Bv;
        FN(store)(s->dt + k * P + t0, dt);
    }
    FN(transpose8)(e);
    FN(transpose8)(x);
    VEC hh = *h;
    for (int j = 0; j < LANES; ++j) {
        s->eT[t0 + j] = e[j];
        x[j] = hh = e[j] * hh + x[j];
    }
    *h = hh;
    FN(transpose8)(x);
    for (int k = 0; k < LANES; ++k) FN(store)(s->h + k * P + t0, x[k]);
}

/* Per-row gradient sums of a block (lanes = time within a tile; summed at the block's end). */
typedef struct {
    VEC dA[LANES], dD[LANES], dbias[LANES];
} FN(s1_sums_t);

/* Reverse step over one full tile: dout, z rows in, du, ddelta, dz rows out; dBt, dCt
 * get the tile's 8 channel sums; carry: the adjoint carried to the previous tile; inject (the
 * last state's gradient) is added to the adjoint at step inject_at (-1: none). */
static inline void FN(s1_bwd_reverse_tile)(const REAL *u, const REAL *dout, const REAL *z,
                                           int64_t stride, const REAL *Bt, const REAL *Ct,
                                           const FN(chan_t) *c, int softplus, VEC *carry,
                                           const FN(s1_scratch_t) *s, int64_t t0, FN(s1_sums_t) *sums,
                                           REAL *du, REAL *ddelta, REAL *dz, int64_t out_stride,
                                           VEC *dBt, VEC *dCt, VEC inject, int inject_at) {
    VEC dy[LANES], g[LANES];
    VEC Bv = FN(load)(Bt), Cv = FN(load)(Ct);
    int64_t P = s->padded;
    for (int k = 0; k < LANES; ++k) {
        dy[k] = FN(load)(dout + k * stride);
        if (z) {
            VEC zk = FN(load)(z + k * stride), sz = VSIGMOID(zk);
            /* the output before gating, C_t h_t + D u_t, from the recomputed state */
            VEC pre = FN(load)(s->h + k * P + t0) * Cv + c->D[k] * FN(load)(u + k * stride);
            FN(store)(dz + k * out_stride, dy[k] * pre * sz * (1 + zk * (1 - sz)));
            dy[k] *= zk * sz;
        }
        g[k] = dy[k] * Cv;
    }
    FN(transpose8)(g);
    VEC cc = *carry;
    for (int j = LANES - 1; j >= 0; --j) {
        g[j] += cc;
        if (j == inject_at) g[j] += inject;
        cc = s->eT[t0 + j] * g[j];
    }
    *carry = cc;
    FN(transpose8)(g);
    VEC dB = {0}, dC = {0};
    for (int k = 0; k < LANES; ++k) {
        VEC uk = FN(load)(u + k * stride), dt = FN(load)(s->dt + k * P + t0);
        VEC h = FN(load)(s->h + k * P + t0), gdt = g[k] * dt, gdtu = gdt * uk;
        VEC w = g[k] * h - gdtu * Bv; /* g_t e_t h_{t-1} */
        dC += dy[k] * h;
        dB += gdtu;
        FN(store)(du + k * out_stride, gdt * Bv + dy[k] * c->D[k]);
        sums->dA[k] += w * dt;
        sums->dD[k] += dy[k] * uk;
        VEC ddt = g[k] * uk * Bv + w * c->a[k];
        if (softplus) ddt *= FN(load)(s->sig + k * P + t0);
        sums->dbias[k] += ddt;
        FN(store)(ddelta + k * out_stride, ddt);
    }
    *dBt = dB;
    *dCt = dC;
}

static void FN(s1_bwd_block)(const REAL *u, const REAL *delta, const REAL *z, const REAL *dout,
                             const REAL *dlast, const REAL *Bm, const REAL *Cm, const FN(chan_t) *c,
                             int softplus, int count, int64_t len, FN(s1_scratch_t) *s, REAL *du,
                             REAL *ddelta, REAL *dz, REAL *dB_acc, REAL *dC_acc, FN(s1_sums_t) *sums,
                             int64_t next_shift, int next_rows) {
    int64_t full = count == LANES ? len / LANES * LANES : 0; /* steps covered by full tiles */
    REAL tu[LANES * LANES], td[LANES * LANES], tb[LANES * LANES];
    VEC h = {0};
    for (int64_t t0 = 0; t0 < len; t0 += LANES) {
        int64_t ahead = t0 + S1_AHEAD;
        if (ahead % LINE_STEPS < LANES && ahead < len) {
            FN(prefetch_rows)(u + ahead, len, count, 0);
            FN(prefetch_rows)(delta + ahead, len, count, 0);
        } else if (ahead >= len && (ahead - len) % LINE_STEPS < LANES) { /* the reverse pass's first steps */
            int64_t at = len - 1 - (ahead - len);
            if (at >= 0) {
                FN(prefetch_rows)(dout + at, len, count, 0);
                if (z) FN(prefetch_rows)(z + at, len, count, 0);
                FN(prefetch_rows_for_write)(du + at, len, count, 0);
                FN(prefetch_rows_for_write)(ddelta + at, len, count, 0);
                if (z) FN(prefetch_rows_for_write)(dz + at, len, count, 0);
            }
        }
        if (t0 < full && softplus) { /* softplus as a constant: one specialised copy each */
            FN(s1_bwd_forward_tile)(u + t0, delta + t0, len, Bm + t0, c, 1, &h, s, t0);
        } else if (t0 < full) {
            FN(s1_bwd_forward_tile)(u + t0, delta + t0, len, Bm + t0, c, 0, &h, s, t0);
        } else {
            int cols = len - t0 < LANES ? (int)(len - t0) : LANES;
            FN(pad_tile)(u + t0, len, count, cols, tu);
            FN(pad_tile)(delta + t0, len, count, cols, td);
            FN(pad_tile)(Bm + t0, len, 1, cols, tb);
            FN(s1_bwd_forward_tile)(tu, td, LANES, tb, c, softplus, &h, s, t0);
        }
    }
    VEC carry = {0}, dBt, dCt, dh_last = {0};
    for (int k = 0; dlast && k < count; ++k) dh_last[k] = dlast[k];
    int last_at = (int)((len - 1) % LANES); /* the last real step in the last tile */
    for (int64_t t0 = s->padded - LANES; t0 >= 0; t0 -= LANES) {
        int inject_at = dlast && t0 == s->padded - LANES ? last_at : -1;
        int64_t behind = t0 - S1_AHEAD; /* this block's step, else the next block's step -LANES - behind */
        if (behind >= 0 && behind % LINE_STEPS < LANES) {
            FN(prefetch_rows)(dout + behind, len, count, 0);
            if (z) FN(prefetch_rows)(z + behind, len, count, 0);
            FN(prefetch_rows_for_write)(du + behind, len, count, 0);
            FN(prefetch_rows_for_write)(ddelta + behind, len, count, 0);
            if (z) FN(prefetch_rows_for_write)(dz + behind, len, count, 0);
        } else if (behind < 0 && (-LANES - behind) % LINE_STEPS < LANES && -LANES - behind < len && next_rows) {
            int64_t at = next_shift - LANES - behind; /* the next block's first steps */
            FN(prefetch_rows)(u + at, len, next_rows, 0);
            FN(prefetch_rows)(delta + at, len, next_rows, 0);
        }
        if (t0 < full) {
            FN(s1_bwd_reverse_tile)(u + t0, dout + t0, z ? z + t0 : NULL, len,
                                    Bm + t0, Cm + t0, c, softplus, &carry, s, t0, sums, du + t0,
                                    ddelta + t0, z ? dz + t0 : NULL, len, &dBt, &dCt, dh_last, inject_at);
            FN(store)(dB_acc + t0, FN(load)(dB_acc + t0) + dBt);
            FN(store)(dC_acc + t0, FN(load)(dC_acc + t0) + dCt);
            continue;
        }
        int cols = len - t0 < LANES ? (int)(len - t0) : LANES;
        REAL tg[LANES * LANES], tz[LANES * LANES], tc[LANES * LANES];
        REAL odu[LANES * LANES], odd[LANES * LANES], odz[LANES * LANES];
        FN(pad_tile)(u + t0, len, count, cols, tu);
        FN(pad_tile)(dout + t0, len, count, cols, tg);
        FN(pad_tile)(z ? z + t0 : NULL, len, count, cols, tz);
        FN(pad_tile)(Bm + t0, len, 1, cols, tb);
        FN(pad_tile)(Cm + t0, len, 1, cols, tc);
        FN(s1_bwd_reverse_tile)(tu, tg, z ? tz : NULL, LANES, tb, tc, c, softplus, &carry, s, t0, sums,
                                odu, odd, odz, LANES, &dBt, &dCt, dh_last, inject_at);
        FN(unpad_tile)(du + t0, len, count, cols, odu);
        FN(unpad_tile)(ddelta + t0, len, count, cols, odd);
        FN(unpad_tile)(z ? dz + t0 : NULL, len, count, cols, odz);
        for (int j = 0; j < cols; ++j) {
            dB_acc[t0 + j] += dBt[j];
            dC_acc[t0 + j] += dCt[j];
        }
    }
}

/* The backward's work items [first, end) for d_state = 1, in order; called inside the
 * backward's parallel region, with that thread's range and accumulators for dB, dC (batch,
 * groups, 1, length) and dA, dD, dbias (dim). */
static void FN(s1_bwd_items)(const REAL *u, const REAL *delta, const REAL *A, const REAL *Bm, const REAL *Cm,
                             const REAL *D, const REAL *z, const REAL *bias, int softplus,
                             const REAL *dout, const REAL *dlast, REAL *du, REAL *ddelta, REAL *dz, int64_t first,
                             int64_t end, int64_t dim, int64_t len, int64_t groups, REAL *dB_acc, REAL *dC_acc,
                             REAL *dA_acc, REAL *dD_acc, REAL *dbias_acc) {
    int64_t nblocks = groups * ((dim / groups + LANES - 1) / LANES);
    FN(s1_scratch_t) s;
    s.padded = (len + LANES - 1) / LANES * LANES;
    REAL *mem = scratch_alloc(3 * LANES * s.padded * sizeof(REAL) + s.padded * sizeof(VEC));
    s.eT = (VEC *)mem;
    s.dt = mem + s.padded * LANES;
    s.sig = s.dt + LANES * s.padded;
    s.h = s.sig + LANES * s.padded;
    for (int64_t item = first; item < end; ++item) {
        int64_t b = item / nblocks;
        FN(block_t) blk = FN(block_of)(item % nblocks, dim, groups);
        int64_t row = (b * dim + blk.first) * len, bc = (b * groups + blk.group) * len;
        FN(chan_t) c;
        FN(chan_of)(A, D, bias, blk, &c);
        FN(s1_sums_t) sums;
        memset(&sums, 0, sizeof sums);
        int next_rows;
        int64_t next_row = FN(item_row)(item + 1, end, dim, len, groups, &next_rows);
        FN(s1_bwd_block)(u + row, delta + row, z ? z + row : NULL, dout + row,
                         dlast ? dlast + b * dim + blk.first : NULL, Bm + bc, Cm + bc, &c, softplus, (int)blk.count, len, &s, du + row, ddelta + row,
                         z ? dz + row : NULL, dB_acc + bc, dC_acc + bc, &sums, next_row - row, next_rows);
        for (int k = 0; k < blk.count; ++k) {
            dA_acc[blk.first + k] += FN(lane_sum)(sums.dA[k]);
            dD_acc[blk.first + k] += FN(lane_sum)(sums.dD[k]);
            dbias_acc[blk.first + k] += FN(lane_sum)(sums.dbias[k]);
        }
    }
    free(mem);
}
