/* Fused SS2D (VMamba's four-direction selective scan) for the CPU, included by selective_scan.c
 * once per REAL type after selective_scan_impl.h (whose vector helpers it uses).
 *
 * Layouts, all row-major contiguous and channel-last, L = H * W pixels in row-major order:
 *   u, out, du, dout: (batch, L, dim)
 *   xdbl, dxdbl:      (batch, L, 4, rank + 2 * nstate), per pixel and direction k: the low-rank
 *                     dt input, then B, then C (the x_proj output in the map's own order: the
 *                     projection is per pixel, so no direction needs its own copy of the map)
 *   dtw: (4, dim, rank); bias: (4, dim); A: (4 * dim, nstate); D: (4 * dim) (direction-major).
 * Direction k traverses the pixels row-major (0), column-major (1), and both reversed (2, 3):
 * the traversal is index arithmetic, and the four directions' outputs are summed into out (and
 * their input gradients into du) inside the kernel. The dt projection, delta = dtw_k . dt input
 * + bias, runs per step in registers, so no (batch, 4, dim, L) tensor exists anywhere.
 *
 * A work item is one batch element's block of SLANES consecutive channels (vector lane = channel,
 * the recurrence's layout, so no transposes are needed); its four directions run in turn on one
 * thread, which makes the accumulation into out and du race-free. dxdbl sums over channel blocks:
 * with at least as many batch elements as threads, a thread takes whole batch elements and
 * accumulates in place (lane-wise into a vector buffer, summed over lanes once per batch element,
 * where that buffer fits); otherwise threads accumulate into private copies added at the end.
 * Per-block constants (dt weights, A, bias, D in lanes) are built once per call, and each thread
 * sums the parameter gradients as vectors in the same lane layout, transposed into the (4, dim)
 * layouts once at the end: on small maps, where a block has only a few steps per direction,
 * neither costs a per-item pass over the block's channels lane by lane.
 * With one state (VMamba's default) and the ranks VMamba uses, the rank is a compile-time constant
 * (SS2D_RANK_DISPATCH), so the weights and running sums stay in registers. The backward gathers a
 * block's channels of u, dout and du into contiguous vectors once for its four directions.
 * A step's cost is the latency of its chain (dt projection, softplus, exp), so the scan's own
 * softplus evaluates its polynomial in Estrin's scheme and the projection runs as two chains; and
 * while one block computes, the next one's strided lines (u and out forward; u, dout and du
 * backward) are prefetched into L2, so their cache misses overlap arithmetic.
 */

/* The vector: float32 runs 16 lanes (512 bits) where AVX-512 is available, twice the plain
 * scan's 8, and float64 the plain scan's 8 doubles (512 bits already). SVEC, SLANES and the
 * helpers below stand for the one in use. The file is included for float32 first, then float64
 * (checked by the assertion). */
#ifndef CLIMP_SS2D_FLOAT32_DONE
#define CLIMP_SS2D_FLOAT32_DONE
#define CLIMP_SS2D_FLOAT32 1
#ifdef __AVX512F__
typedef float ss2d_v16 __attribute__((vector_size(16 * sizeof(float))));
typedef int32_t ss2d_i16 __attribute__((vector_size(16 * sizeof(int32_t))));
typedef uint32_t ss2d_u16 __attribute__((vector_size(16 * sizeof(uint32_t))));

static inline ss2d_v16 ss2d_max16(ss2d_v16 a, ss2d_v16 b) { return (ss2d_v16)_mm512_max_ps((__m512)a, (__m512)b); }

static inline ss2d_v16 ss2d_min16(ss2d_v16 a, ss2d_v16 b) { return (ss2d_v16)_mm512_min_ps((__m512)a, (__m512)b); }

/* vexp2_inrange_f32 on 16 lanes: the 8-entry table repeated in both halves of a 16-entry permute
 * (whose index bit 3, the integer part's lowest bit, then selects the same entry). */
static inline __attribute__((always_inline)) ss2d_v16 ss2d_exp2_inrange16(ss2d_v16 t) {
    const ss2d_v16 zero = {0}, magic = zero + 1572864.0f;
    const ss2d_u16 table = {EXP2_EIGHTHS_BITS, EXP2_EIGHTHS_BITS};
    ss2d_v16 shifted = t + magic;
    ss2d_v16 f = t - (shifted - magic);
    ss2d_u16 bits = (ss2d_u16)shifted;
    ss2d_u16 s = (ss2d_u16)_mm512_permutexvar_ps((__m512i)bits, (__m512)table) + (bits << 20);
    return (ss2d_v16)s * EXP2_SMALL_POLY(f);
}

/* vexp2_f32 on 16 lanes. */
static inline __attribute__((always_inline)) ss2d_v16 ss2d_exp2_16(ss2d_v16 x) {
    const ss2d_v16 zero = {0};
    return ss2d_exp2_inrange16(ss2d_min16(ss2d_max16(x, zero - 125.0f), zero + 127.0f));
}

/* The shared first half of the softplus below: y = exp(-|x|), and sigmoid(x) into *sig when sig
 * is not NULL; softplus(x) = max(x, 0) + log1p(y). */
static inline __attribute__((always_inline)) ss2d_v16 ss2d_softplus_y16(ss2d_v16 x, ss2d_v16 *sig) {
    const ss2d_v16 zero = {0};
    ss2d_v16 y = ss2d_exp2_inrange16(
        ss2d_max16((ss2d_v16)((ss2d_i16)x & 0x7fffffff) * -1.44269504088896341f, zero - 125.0f));
    if (sig) {
        ss2d_v16 inv = 1.0f / (1.0f + y);
        ss2d_i16 neg = x < zero;
        *sig = (ss2d_v16)(((ss2d_i16)(y * inv) & neg) | ((ss2d_i16)inv & ~neg));
    }
    return y;
}

/* vsoftplus_f32 on 16 lanes (same polynomial, same sigmoid). */
static inline __attribute__((always_inline)) ss2d_v16 ss2d_softplus16(ss2d_v16 x, ss2d_v16 *sig) {
    const ss2d_v16 zero = {0};
    ss2d_v16 y = ss2d_softplus_y16(x, sig);
    ss2d_v16 q = LOG1P_OVER_Y(y);
    return ss2d_max16(x, zero) + y * q;
}

/* The scan's own softplus: ss2d_softplus16's polynomial evaluated in Estrin's scheme (products of
 * y^2 and y^4 instead of one chain of eight multiply-adds), which shortens each step's dependency
 * chain, the scan's limit: a step's dt feeds its exp and the recurrence. */
static inline __attribute__((always_inline)) ss2d_v16 ss2d_scan_softplus16(ss2d_v16 x, ss2d_v16 *sig) {
    const ss2d_v16 zero = {0};
    ss2d_v16 y = ss2d_softplus_y16(x, sig);
    ss2d_v16 y2 = y * y, y4 = y2 * y2;
    ss2d_v16 p01 = y * -4.9999493e-1f + 0.99999994f, p23 = y * -2.484298e-1f + 3.3319098e-1f;
    ss2d_v16 p45 = y * -1.366323e-1f + 1.9106e-1f, p67 = y * -2.9505106e-2f + 7.822575e-2f;
    ss2d_v16 p03 = p23 * y2 + p01, p47 = p67 * y2 + p45;
    ss2d_v16 q = (y4 * 5.232659e-3f + p47) * y4 + p03;
    return ss2d_max16(x, zero) + y * q;
}

/* Lane i of the result: the sum of v[i]'s 16 lanes (pairwise, in four shuffle-and-add rounds). */
static inline ss2d_v16 ss2d_lane_sums16(const ss2d_v16 *v) {
    ss2d_v16 s[8], q[4], r[2];
    for (int i = 0; i < 8; ++i)
        s[i] = __builtin_shufflevector(v[2 * i], v[2 * i + 1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14,
                                       30) +
               __builtin_shufflevector(v[2 * i], v[2 * i + 1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15,
                                       31);
    for (int i = 0; i < 4; ++i)
        q[i] = __builtin_shufflevector(s[2 * i], s[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28,
                                       29) +
               __builtin_shufflevector(s[2 * i], s[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30,
                                       31);
    for (int i = 0; i < 2; ++i)
        r[i] = __builtin_shufflevector(q[2 * i], q[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26,
                                       27) +
               __builtin_shufflevector(q[2 * i], q[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30,
                                       31);
    return __builtin_shufflevector(r[0], r[1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(r[0], r[1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
#endif
#else
#undef CLIMP_SS2D_FLOAT32
#define CLIMP_SS2D_FLOAT32 0
#endif
_Static_assert(sizeof(REAL) == (CLIMP_SS2D_FLOAT32 ? sizeof(float) : sizeof(double)),
               "ss2d_impl.h is included for float32 first, then float64");

#if CLIMP_SS2D_FLOAT32 && defined(__AVX512F__)
#define SVEC ss2d_v16
#define SLANES 16
#define SVEXP_SCALED ss2d_exp2_16
#define SVSOFTPLUS ss2d_scan_softplus16
#define SLANE_SUMS ss2d_lane_sums16
#else
#define SVEC VEC
#define SLANES LANES
#define SVEXP_SCALED VEXP_SCALED
#define SVSOFTPLUS VSOFTPLUS
#define SLANE_SUMS FN(lane_sums8)
#endif


/* A traversal: step (o, i) visits pixel p0 + o * so + i * si, o < no outer, i < ni inner steps. */
typedef struct {
    int64_t p0, si, ni, so, no;
} FN(ss2d_dir_t);

static inline FN(ss2d_dir_t) FN(ss2d_dir)(int k, int64_t height, int64_t width) {
    int64_t last = height * width - 1;
    FN(ss2d_dir_t) d;
    switch (k) {
        case 0: d = (FN(ss2d_dir_t)){0, 1, width, width, height}; break;
        case 1: d = (FN(ss2d_dir_t)){0, width, height, 1, width}; break;
        case 2: d = (FN(ss2d_dir_t)){last, -1, width, -width, height}; break;
        default: d = (FN(ss2d_dir_t)){last, -width, height, -1, width}; break;
    }
    return d;
}

/* count <= SLANES channels at p as a vector (zero beyond count), and back. */
static inline SVEC FN(ss2d_load)(const REAL *p, int count) {
    SVEC v = {0};
    if (count == SLANES) /* a constant size: one vector load, no library call */
        memcpy(&v, p, sizeof v);
    else
        for (int j = 0; j < count; ++j) v[j] = p[j];
    return v;
}

static inline void FN(ss2d_store)(REAL *p, SVEC v, int count) {
    if (count == SLANES)
        memcpy(p, &v, sizeof v);
    else
        for (int j = 0; j < count; ++j) p[j] = v[j];
}

/* A block's count channels of L pixels (row stride dim) as L vectors, and back. Every direction
 * then reads and accumulates one contiguous buffer instead of one cache line per pixel at a
 * power-of-two stride, whose lines share a few cache sets. */
static void FN(ss2d_gather)(SVEC *dst, const REAL *src, int64_t L, int64_t dim, int count) {
    if (count == SLANES)
        for (int64_t p = 0; p < L; ++p) dst[p] = FN(ss2d_load)(src + p * dim, SLANES);
    else
        for (int64_t p = 0; p < L; ++p) dst[p] = FN(ss2d_load)(src + p * dim, count);
}

static void FN(ss2d_scatter)(REAL *dst, const SVEC *src, int64_t L, int64_t dim, int count) {
    if (count == SLANES)
        for (int64_t p = 0; p < L; ++p) FN(ss2d_store)(dst + p * dim, src[p], SLANES);
    else
        for (int64_t p = 0; p < L; ++p) FN(ss2d_store)(dst + p * dim, src[p], count);
}

/* Per-block, per-direction constants (lane = channel; 0 beyond the block). */
typedef struct {
    SVEC *w;        /* [4][rank]: dtw column r of the block's channels */
    SVEC *a;        /* [4][nstate]: A */
    SVEC *a_scaled; /* [4][nstate]: A * EXP_SCALE (SVEXP_SCALED's argument scale) */
    SVEC bias[4], D[4];
} FN(ss2d_consts_t);

static void FN(ss2d_consts_of)(const REAL *dtw, const REAL *bias, const REAL *A, const REAL *D, int64_t dim,
                               int64_t rank, int64_t nstate, int64_t first, int count, FN(ss2d_consts_t) *c) {
    for (int k = 0; k < 4; ++k) {
        c->bias[k] = c->D[k] = (SVEC){0};
        for (int64_t r = 0; r < rank; ++r) c->w[k * rank + r] = (SVEC){0};
        for (int64_t n = 0; n < nstate; ++n) c->a[k * nstate + n] = c->a_scaled[k * nstate + n] = (SVEC){0};
        for (int j = 0; j < count; ++j) {
            int64_t ch = k * dim + first + j;
            c->bias[k][j] = bias[ch];
            c->D[k][j] = D[ch];
            for (int64_t r = 0; r < rank; ++r) c->w[k * rank + r][j] = dtw[ch * rank + r];
            for (int64_t n = 0; n < nstate; ++n) {
                c->a[k * nstate + n][j] = A[ch * nstate + n];
                c->a_scaled[k * nstate + n][j] = A[ch * nstate + n] * EXP_SCALE;
            }
        }
    }
}

/* Every channel block's constants, built once per call (they are the same for every batch
 * element): nblocks structs over one buffer of 4 rank + 8 nstate vectors per block, returned in
 * *mem to be freed with the table. */
static FN(ss2d_consts_t) *FN(ss2d_consts_table)(const REAL *dtw, const REAL *bias, const REAL *A, const REAL *D,
                                                int64_t dim, int64_t rank, int64_t nstate, SVEC **mem) {
    int64_t nblocks = (dim + SLANES - 1) / SLANES, per_block = 4 * rank + 8 * nstate;
    FN(ss2d_consts_t) *table = scratch_alloc(nblocks * sizeof *table);
    *mem = scratch_alloc(nblocks * per_block * sizeof(SVEC));
    for (int64_t j = 0; j < nblocks; ++j) {
        FN(ss2d_consts_t) *c = table + j;
        int64_t first = j * SLANES;
        c->w = *mem + j * per_block, c->a = c->w + 4 * rank, c->a_scaled = c->a + 4 * nstate;
        FN(ss2d_consts_of)(dtw, bias, A, D, dim, rank, nstate, first,
                           dim - first < SLANES ? (int)(dim - first) : SLANES, c);
    }
    return table;
}

/* delta before softplus at one step: bias + sum_r w_r x_r. */
static inline SVEC FN(ss2d_delta)(const SVEC *w, SVEC bias, const REAL *x, int64_t rank) {
    SVEC even = bias, odd = {0}; /* two chains of multiply-adds: half the latency of one */
    int64_t r = 0;
    for (; r + 1 < rank; r += 2) even += w[r] * x[r], odd += w[r + 1] * x[r + 1];
    if (r < rank) even += w[r] * x[r];
    return even + odd;
}

/* One direction of one block forward: out (+)= C.h + D u along the traversal (N: nstate, R: rank,
 * compile-time constants on the dispatched paths, so the weights and states stay in registers;
 * count: channels in the block, SLANES on the dispatched paths, so no partial loads). */
static inline __attribute__((always_inline)) void FN(ss2d_fwd_dir)(int N, int R, int k, FN(ss2d_dir_t) d,
                                                                  const REAL *u, const REAL *xdbl, REAL *out,
                                                                  int64_t dim, int count,
                                                                  const FN(ss2d_consts_t) *c, int softplus,
                                                                  const REAL *next_u, REAL *next_out) {
    int64_t Q = R + 2 * N, stride = 4 * Q;
    SVEC w[R], as[N], h[N], bias = c->bias[k], Dk = c->D[k];
    for (int r = 0; r < R; ++r) w[r] = c->w[k * R + r];
    for (int n = 0; n < N; ++n) as[n] = c->a_scaled[k * N + n], h[n] = (SVEC){0};
    for (int64_t o = 0; o < d.no; ++o)
        for (int64_t i = 0; i < d.ni; ++i) {
            int64_t p = d.p0 + o * d.so + i * d.si;
            const REAL *x = xdbl + p * stride + k * Q, *Bp = x + R, *Cp = Bp + N;
            SVEC uv = FN(ss2d_load)(u + p * dim, count);
            SVEC dt = FN(ss2d_delta)(w, bias, x, R);
            if (softplus) dt = SVSOFTPLUS(dt, NULL);
            SVEC dtu = dt * uv, y = Dk * uv;
            for (int n = 0; n < N; ++n) {
                h[n] = SVEXP_SCALED(dt * as[n]) * h[n] + dtu * Bp[n];
                y += h[n] * Cp[n];
            }
            REAL *op = out + p * dim;
            FN(ss2d_store)(op, k ? FN(ss2d_load)(op, count) + y : y, count);
            /* the next item's first direction reads u and writes out at a large stride, one line per
             * pixel: fetched into L2 here, they overlap this item's arithmetic */
            if (k == 0 && next_u) {
                __builtin_prefetch(next_u + p * dim, 0, 2);
                __builtin_prefetch(next_out + p * dim, 1, 2);
            }
        }
}

/* Calls CALL(R) with R the rank as a compile-time constant for the ranks VMamba's configs use
 * (ceil(d_model / 16)), else with the runtime rank. */
#define SS2D_RANK_DISPATCH(rank, CALL) \
    switch (rank) {                    \
        case 4: CALL(4); break;        \
        case 6: CALL(6); break;        \
        case 8: CALL(8); break;        \
        case 12: CALL(12); break;      \
        case 16: CALL(16); break;      \
        default: CALL(rank); break;    \
    }

/* Largest per-thread vector accumulator of one batch element's dxdbl (see ss2d_bwd_dir). */
#ifndef SS2D_VEC_ACC_BYTES
#define SS2D_VEC_ACC_BYTES ((int64_t)16 << 20)
#endif

static inline int64_t FN(ss2d_threads)(int64_t items, int nthreads) {
    return nthreads < 1 ? 1 : (items < nthreads ? (items < 1 ? 1 : items) : nthreads);
}

/* Forward items handed out at a time by the dynamic schedule: about 4096 steps of one direction,
 * so a small map's items do not each pay for it, while every thread still gets 8 chunks or more. */
static inline int64_t FN(ss2d_fwd_chunk)(int64_t items, int64_t length, int64_t team) {
    int64_t chunk = length >= 4096 ? 1 : 4096 / length, most = items / (8 * team);
    return chunk < most ? chunk : (most < 1 ? 1 : most);
}

void FN(ss2d_fwd)(const REAL *u, const REAL *xdbl, const REAL *dtw, const REAL *bias, const REAL *A,
                  const REAL *D, int softplus, REAL *out, int64_t batch, int64_t height, int64_t width,
                  int64_t dim, int64_t rank, int64_t nstate, int nthreads) {
    int64_t L = height * width, nblocks = (dim + SLANES - 1) / SLANES;
    advise_huge_pages(out, (size_t)(batch * L * dim) * sizeof(REAL));
    SVEC *consts_mem;
    const FN(ss2d_consts_t) *table = FN(ss2d_consts_table)(dtw, bias, A, D, dim, rank, nstate, &consts_mem);
    int64_t team = FN(ss2d_threads)(batch * nblocks, nthreads), chunk = FN(ss2d_fwd_chunk)(batch * nblocks, L, team);
#pragma omp parallel for num_threads(team) schedule(dynamic, chunk)
    for (int64_t item = 0; item < batch * nblocks; ++item) {
        int64_t b = item / nblocks, first = (item % nblocks) * SLANES;
        int count = dim - first < SLANES ? (int)(dim - first) : SLANES;
        const FN(ss2d_consts_t) *c = table + item % nblocks;
        const REAL *xb = xdbl + b * L * 4 * (rank + 2 * nstate);
        REAL *ob = out + b * L * dim + first;
        const REAL *ub = u + b * L * dim + first;
        /* the next item's block (this thread's next but at a chunk's end) */
        const REAL *next_u = item + 1 < batch * nblocks ? ub + (item % nblocks + 1 < nblocks ? SLANES : L * dim - first) : NULL;
        REAL *next_out = next_u ? out + (next_u - u) : NULL;
        for (int k = 0; k < 4; ++k) {
            FN(ss2d_dir_t) d = FN(ss2d_dir)(k, height, width);
#define SS2D_FWD_STATE1(R) FN(ss2d_fwd_dir)(1, R, k, d, ub, xb, ob, dim, SLANES, c, softplus, next_u, next_out)
            if (nstate == 1 && count == SLANES)
                SS2D_RANK_DISPATCH(rank, SS2D_FWD_STATE1)
            else
                FN(ss2d_fwd_dir)(nstate, rank, k, d, ub, xb, ob, dim, count, c, softplus, next_u, next_out);
#undef SS2D_FWD_STATE1
        }
    }
    free(consts_mem);
    free((void *)table);
}

/* Per-thread scratch of the backward: per step of one traversal, dt, softplus' and, per state,
 * e = exp(dt a) and w = e h_{t-1}; gradient sums of the current block (lane = channel). */
typedef struct {
    SVEC *dt, *sig, *e, *w;
    SVEC *dw, *dA, *sums; /* dw [rank], dA [nstate], sums [SLANES * ceil(Q / SLANES)] */
    SVEC *u, *dy, *du;    /* [L] each: the block's channels of u, dout and du (ss2d_gather) */
    /* the next block's channels of u, dout and du in memory (NULL after the last block), and the
     * pixel stride: their lines are prefetched while this block computes (see ss2d_bwd_dir1) */
    const REAL *next_u, *next_dy;
    REAL *next_du;
    int64_t dim;
    int dxv_fresh; /* whether the one-state path writes the vector sums of dxdbl instead of adding */
    SVEC dbias, dD;
} FN(ss2d_scratch_t);

/* One direction of one block backward: recompute the states forward, then run the adjoint in
 * reverse, writing s->du (+)= (u, dout and du are the block's gathered vectors in s) and adding the gradients of the dt input, B and C into dx (a batch
 * element's part of dxdbl's layout) summed over the block's channels, or, with vacc, into dxv
 * (same layout, one vector per entry) lane by lane, to be summed over lanes once after every
 * block of the batch element is done. */
static inline __attribute__((always_inline)) void FN(ss2d_bwd_dir)(
    int N, int vacc, int k, FN(ss2d_dir_t) d, const REAL *xdbl, REAL *dx, SVEC *dxv, int64_t rank, int64_t nstate,
    const FN(ss2d_consts_t) *c, int softplus, FN(ss2d_scratch_t) *s) {
    int64_t Q = rank + 2 * nstate, stride = 4 * Q, groups = (Q + SLANES - 1) / SLANES;
    const SVEC *w = c->w + k * rank, *as = c->a_scaled + k * nstate, *a = c->a + k * nstate;
    SVEC h[N];
    for (int64_t n = 0; n < N; ++n) h[n] = (SVEC){0};
    int64_t t = 0;
    for (int64_t o = 0; o < d.no; ++o)
        for (int64_t i = 0; i < d.ni; ++i, ++t) {
            int64_t p = d.p0 + o * d.so + i * d.si;
            const REAL *x = xdbl + p * stride + k * Q, *Bp = x + rank;
            SVEC uv = s->u[p];
            SVEC dt = FN(ss2d_delta)(w, c->bias[k], x, rank), sig = {0};
            if (softplus) dt = SVSOFTPLUS(dt, &sig);
            s->dt[t] = dt;
            s->sig[t] = sig;
            SVEC dtu = dt * uv;
            for (int64_t n = 0; n < N; ++n) {
                SVEC e = SVEXP_SCALED(dt * as[n]), wn = e * h[n];
                h[n] = wn + dtu * Bp[n];
                s->e[t * N + n] = e;
                s->w[t * N + n] = wn;
            }
        }
    SVEC carry[N], dA[N];
    for (int64_t n = 0; n < N; ++n) carry[n] = dA[n] = (SVEC){0};
    for (int64_t q = Q; q < groups * SLANES; ++q) s->sums[q] = (SVEC){0};
    for (int64_t o = d.no - 1; o >= 0; --o)
        for (int64_t i = d.ni - 1; i >= 0; --i) {
            --t;
            int64_t p = d.p0 + o * d.so + i * d.si;
            const REAL *x = xdbl + p * stride + k * Q, *Bp = x + rank, *Cp = Bp + nstate;
            /* this step's gradients of the dt input, B and C, one vector each (lane = channel) */
            SVEC *acc = vacc ? dxv + p * stride + k * Q : s->sums;
            SVEC dy = s->dy[p], uv = s->u[p];
            SVEC dt = s->dt[t], dtu = dt * uv, s1 = {0}, s2 = {0};
            for (int64_t n = 0; n < N; ++n) {
                SVEC wn = s->w[t * N + n], g = dy * Cp[n] + carry[n], q = g * wn;
                SVEC gB = g * dtu, gC = dy * (wn + dtu * Bp[n]); /* dC = dy h */
                acc[rank + n] = vacc ? acc[rank + n] + gB : gB;
                acc[rank + nstate + n] = vacc ? acc[rank + nstate + n] + gC : gC;
                s1 += g * Bp[n];
                s2 += q * a[n];
                dA[n] += q * dt;
                carry[n] = s->e[t * N + n] * g;
            }
            SVEC ddt = uv * s1 + s2;
            if (softplus) ddt *= s->sig[t];
            s->dbias += ddt;
            s->dD += dy * uv;
            for (int64_t r = 0; r < rank; ++r) {
                s->dw[r] += ddt * x[r];
                acc[r] = vacc ? acc[r] + w[r] * ddt : w[r] * ddt;
            }
            SVEC g_u = dt * s1 + c->D[k] * dy;
            s->du[p] = k ? s->du[p] + g_u : g_u;
            if (vacc) continue;
            REAL *dxp = dx + p * stride + k * Q;
            for (int64_t gq = 0; gq < groups; ++gq) {
                SVEC tot = SLANE_SUMS(s->sums + gq * SLANES);
                int64_t m = Q - gq * SLANES < SLANES ? Q - gq * SLANES : SLANES;
                for (int64_t j = 0; j < m; ++j) dxp[gq * SLANES + j] += tot[j];
            }
        }
    for (int64_t n = 0; n < N; ++n) s->dA[n] = dA[n];
}

/* ss2d_bwd_dir for one state (VMamba's default), with the rank R a compile-time constant on the
 * dispatched paths, so the weights and every running sum stay in registers.
 * The recomputation stores h_{t-1} instead of e h_{t-1}, which leaves one multiply-add per step
 * on the recurrence's critical path (as in the reverse: g_{t-1} = e_t g_t + dy_{t-1} C_{t-1}).
 * Adds the block's parameter gradients for direction k into pk (dtw's R columns, A, bias, D). */
static inline __attribute__((always_inline)) void FN(ss2d_bwd_dir1)(
    int R, int vacc, int k, FN(ss2d_dir_t) d, const REAL *xdbl, REAL *dx, SVEC *dxv, const FN(ss2d_consts_t) *c,
    int softplus, FN(ss2d_scratch_t) *s, SVEC *pk) {
    int64_t Q = R + 2, stride = 4 * Q, groups = (Q + SLANES - 1) / SLANES;
    SVEC w[R], dw[R], bias = c->bias[k], Dk = c->D[k], as = c->a_scaled[k], a = c->a[k], h = {0};
    for (int r = 0; r < R; ++r) w[r] = c->w[k * R + r], dw[r] = (SVEC){0};
    SVEC *dts = s->dt, *sigs = s->sig, *es = s->e, *hs = s->w, *us = s->u, *dys = s->dy, *dus = s->du;
    int64_t t = 0;
    for (int64_t o = 0; o < d.no; ++o)
        for (int64_t i = 0; i < d.ni; ++i, ++t) {
            int64_t p = d.p0 + o * d.so + i * d.si;
            const REAL *x = xdbl + p * stride + k * Q;
            SVEC uv = us[p];
            SVEC dt = FN(ss2d_delta)(w, bias, x, R), sig = {0};
            if (softplus) dt = SVSOFTPLUS(dt, &sig);
            SVEC e = SVEXP_SCALED(dt * as);
            dts[t] = dt, sigs[t] = sig, es[t] = e, hs[t] = h;
            h = e * h + dt * uv * x[R];
            /* the next block's gather reads u and dout and its scatter writes du at a large stride,
             * one line per pixel: fetched into L2 here, they overlap this block's arithmetic */
            if (k == 0 && s->next_u) {
                __builtin_prefetch(s->next_u + t * s->dim, 0, 2);
                __builtin_prefetch(s->next_dy + t * s->dim, 0, 2);
            } else if (k == 1 && s->next_du) {
                __builtin_prefetch(s->next_du + t * s->dim, 1, 2);
            }
        }
    SVEC carry = {0}, dA = {0}, dbias = {0}, dD = {0};
    for (int64_t q = Q; q < groups * SLANES; ++q) s->sums[q] = (SVEC){0};
    for (int64_t o = d.no - 1; o >= 0; --o)
        for (int64_t i = d.ni - 1; i >= 0; --i) {
            --t;
            int64_t p = d.p0 + o * d.so + i * d.si;
            const REAL *x = xdbl + p * stride + k * Q;
            REAL Bv = x[R], Cv = x[R + 1];
            SVEC dy = dys[p], uv = us[p];
            SVEC dt = dts[t], e = es[t], dtu = dt * uv, wn = e * hs[t];
            SVEC g = dy * Cv + carry, q = g * wn, s1 = g * Bv;
            carry = e * g;
            SVEC gB = g * dtu, gC = dy * (wn + dtu * Bv); /* dB, dC (= dy h) before the channel sums */
            dA += q * dt;
            SVEC ddt = uv * s1 + q * a;
            if (softplus) ddt *= sigs[t];
            dbias += ddt;
            dD += dy * uv;
            for (int r = 0; r < R; ++r) dw[r] += ddt * x[r];
            SVEC g_u = dt * s1 + Dk * dy;
            dus[p] = k ? dus[p] + g_u : g_u;
            if (vacc) { /* the item's first block writes the sums, the others add to them */
                SVEC *acc = dxv + p * stride + k * Q;
                for (int r = 0; r < R; ++r) acc[r] = s->dxv_fresh ? w[r] * ddt : acc[r] + w[r] * ddt;
                acc[R] = s->dxv_fresh ? gB : acc[R] + gB;
                acc[R + 1] = s->dxv_fresh ? gC : acc[R + 1] + gC;
                continue;
            }
            for (int r = 0; r < R; ++r) s->sums[r] = w[r] * ddt;
            s->sums[R] = gB;
            s->sums[R + 1] = gC;
            REAL *dxp = dx + p * stride + k * Q;
            for (int64_t gq = 0; gq < groups; ++gq) {
                SVEC tot = SLANE_SUMS(s->sums + gq * SLANES);
                int64_t m = Q - gq * SLANES < SLANES ? Q - gq * SLANES : SLANES;
                for (int64_t j = 0; j < m; ++j) dxp[gq * SLANES + j] += tot[j];
            }
        }
    for (int r = 0; r < R; ++r) pk[r] += dw[r];
    pk[R] += dA;
    pk[R + 1] += dbias;
    pk[R + 2] += dD;
}

/* One batch element's block, all four directions; adds the block's parameter gradients into the
 * thread's partial sums pv of this block: per direction, rank + nstate + 2 vectors (dtw's columns,
 * A's, bias, D; lane = channel). */
static void FN(ss2d_bwd_block)(const REAL *u, const REAL *xdbl, const REAL *dout, REAL *du, REAL *dx,
                               SVEC *dxv, int64_t height, int64_t width, int64_t dim, int64_t rank, int64_t nstate,
                               int count, const FN(ss2d_consts_t) *c, int softplus, FN(ss2d_scratch_t) *s,
                               SVEC *pv) {
    int64_t P = rank + nstate + 2, L = height * width;
    FN(ss2d_gather)(s->u, u, L, dim, count);
    FN(ss2d_gather)(s->dy, dout, L, dim, count);
    for (int k = 0; k < 4; ++k) {
        FN(ss2d_dir_t) d = FN(ss2d_dir)(k, height, width);
        SVEC *pk = pv + k * P;
#define SS2D_BWD_STATE1_VACC(R) FN(ss2d_bwd_dir1)(R, 1, k, d, xdbl, dx, dxv, c, softplus, s, pk)
#define SS2D_BWD_STATE1(R) FN(ss2d_bwd_dir1)(R, 0, k, d, xdbl, dx, NULL, c, softplus, s, pk)
        if (nstate == 1) {
            if (dxv)
                SS2D_RANK_DISPATCH(rank, SS2D_BWD_STATE1_VACC)
            else
                SS2D_RANK_DISPATCH(rank, SS2D_BWD_STATE1)
            continue;
        }
#undef SS2D_BWD_STATE1_VACC
#undef SS2D_BWD_STATE1
        for (int64_t r = 0; r < rank; ++r) s->dw[r] = (SVEC){0};
        for (int64_t n = 0; n < nstate; ++n) s->dA[n] = (SVEC){0};
        s->dbias = s->dD = (SVEC){0};
        FN(ss2d_bwd_dir)(nstate, dxv != NULL, k, d, xdbl, dx, dxv, rank, nstate, c, softplus, s);
        for (int64_t r = 0; r < rank; ++r) pk[r] += s->dw[r];
        for (int64_t n = 0; n < nstate; ++n) pk[rank + n] += s->dA[n];
        pk[rank + nstate] += s->dbias;
        pk[rank + nstate + 1] += s->dD;
    }
    FN(ss2d_scatter)(du, s->du, L, dim, count);
}

void FN(ss2d_bwd)(const REAL *u, const REAL *xdbl, const REAL *dtw, const REAL *bias, const REAL *A,
                  const REAL *D, int softplus, const REAL *dout, REAL *du, REAL *dxdbl, REAL *ddtw,
                  REAL *dbias, REAL *dA, REAL *dD, int64_t batch, int64_t height, int64_t width,
                  int64_t dim, int64_t rank, int64_t nstate, int nthreads) {
    int64_t L = height * width, nblocks = (dim + SLANES - 1) / SLANES, Q = rank + 2 * nstate;
    int64_t x_size = batch * L * 4 * Q, groups = (Q + SLANES - 1) / SLANES;
    int64_t per_batch = batch >= nthreads; /* whole batch elements per item: dxdbl in place */
    /* per batch element and thread, lane-wise sums of dxdbl (see ss2d_bwd_dir) where they fit */
    int64_t vec_acc = per_batch && L * 4 * Q * (int64_t)sizeof(SVEC) <= SS2D_VEC_ACC_BYTES;
    int64_t items = per_batch ? batch : batch * nblocks;
    int team = (int)FN(ss2d_threads)(items, nthreads);
    /* per thread, the parameter gradients' partial sums: per block and direction, P vectors */
    int64_t P = rank + nstate + 2, pv_size = nblocks * 4 * P;
    advise_huge_pages(du, (size_t)(batch * L * dim) * sizeof(REAL));
    if (!vec_acc) memset(dxdbl, 0, x_size * sizeof(REAL)); /* else each batch element's lane sums write it */
    SVEC *consts_mem;
    const FN(ss2d_consts_t) *table = FN(ss2d_consts_table)(dtw, bias, A, D, dim, rank, nstate, &consts_mem);
    SVEC *pvs = scratch_alloc(team * pv_size * sizeof(SVEC));
    memset(pvs, 0, team * pv_size * sizeof(SVEC));
    REAL *partials = NULL;
    if (!per_batch && team > 1) {
        partials = scratch_alloc((team - 1) * x_size * sizeof(REAL));
        memset(partials, 0, (team - 1) * x_size * sizeof(REAL));
    }
#pragma omp parallel num_threads(team)
    {
        int tid = omp_get_thread_num();
        REAL *dx_acc = tid && partials ? partials + (tid - 1) * x_size : dxdbl;
        SVEC *mem = scratch_alloc(((5 + 2 * nstate) * L + rank + nstate + groups * SLANES) * sizeof(SVEC));
        FN(ss2d_scratch_t) s;
        s.dt = mem, s.sig = s.dt + L, s.e = s.sig + L, s.w = s.e + nstate * L;
        s.u = s.w + nstate * L, s.dy = s.u + L, s.du = s.dy + L;
        s.dw = s.du + L, s.dA = s.dw + rank, s.sums = s.dA + nstate;
        SVEC *pv = pvs + tid * pv_size;
        SVEC *dxv = vec_acc ? scratch_alloc((L * 4 * Q + SLANES) * sizeof(SVEC)) : NULL;
        if (dxv) memset(dxv + L * 4 * Q, 0, SLANES * sizeof(SVEC)); /* read, unused, by the last lane sums */
#pragma omp for schedule(static) /* fixed item-to-thread map: deterministic partial sums (parallel.h) */
        for (int64_t item = 0; item < items; ++item) {
            int64_t b = per_batch ? item : item / nblocks;
            int64_t j0 = per_batch ? 0 : item % nblocks, j1 = per_batch ? nblocks : j0 + 1;
            if (dxv && nstate != 1) memset(dxv, 0, (L * 4 * Q + SLANES) * sizeof(SVEC));
            for (int64_t j = j0; j < j1; ++j) {
                int64_t first = j * SLANES, off = b * L * dim + first;
                int count = dim - first < SLANES ? (int)(dim - first) : SLANES;
                /* the next block in (batch, block) order: this thread's next one but at its range's end */
                int64_t next = j + 1 < nblocks ? off + SLANES : (b + 1 < batch ? (b + 1) * L * dim : -1);
                s.next_u = next < 0 ? NULL : u + next, s.next_dy = next < 0 ? NULL : dout + next;
                s.next_du = next < 0 ? NULL : du + next, s.dim = dim, s.dxv_fresh = j == j0;
                FN(ss2d_bwd_block)(u + off, xdbl + b * L * 4 * Q, dout + off, du + off, dx_acc + b * L * 4 * Q, dxv,
                                   height, width, dim, rank, nstate, count, table + j, softplus, &s,
                                   pv + j * 4 * P);
            }
            for (int64_t i = 0; dxv && i < L * 4 * Q; i += SLANES) { /* lane sums, SLANES entries at a time */
                SVEC tot = SLANE_SUMS(dxv + i);
                int64_t m = L * 4 * Q - i < SLANES ? L * 4 * Q - i : SLANES;
                memcpy(dx_acc + b * L * 4 * Q + i, &tot, m * sizeof(REAL));
            }
        }
        free(dxv);
        free(mem);
        if (partials) { /* the items loop's barrier has every partial complete */
#pragma omp for schedule(static)
            for (int64_t i = 0; i < x_size; ++i)
                for (int th = 1; th < team; ++th) dxdbl[i] += partials[(th - 1) * x_size + i];
        }
    }
    /* the threads' partial sums, added in thread order, into (4, dim, ...) layouts */
    for (int k = 0; k < 4; ++k)
        for (int64_t ch = 0; ch < dim; ++ch) {
            int64_t at = ((ch / SLANES) * 4 + k) * P, lane = ch % SLANES, row = k * dim + ch;
            for (int64_t q = 0; q < P; ++q) {
                REAL tot = 0;
                for (int th = 0; th < team; ++th) tot += pvs[th * pv_size + at + q][lane];
                if (q < rank)
                    ddtw[row * rank + q] = tot;
                else if (q < rank + nstate)
                    dA[row * nstate + q - rank] = tot;
                else if (q == rank + nstate)
                    dbias[row] = tot;
                else
                    dD[row] = tot;
            }
        }
    free(partials);
    free(pvs);
    free(consts_mem);
    free((void *)table);
}

#undef SVEC
#undef SLANES
#undef SVEXP_SCALED
#undef SVSOFTPLUS
#undef SLANE_SUMS
