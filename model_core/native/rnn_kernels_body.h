/* The kernels, written once and included by rnn_kernels.c once per instruction set: ISA(name)
 * gives every function a per-ISA name, MR_LSTM / MR_GRU / MR_NT are the register tiles' row counts.
 * Everything here is static, and the always-inline helpers are compiled inside the same target
 * region as their callers, so the tiles' accumulators stay in registers. */
#ifndef MC_TYPES
#define MC_TYPES
typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4), may_alias));   /* unaligned loads */
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v16 __attribute__((vector_size(64)));                             /* WIDE builds only */
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));
#define INL static inline __attribute__((always_inline))
#define MRMAX 12
/* rows of h per chunk: each weight panel is read once per chunk, and a chunk's rows of h (at
 * H=256, 8 blocks of MR rows ~ 24-56 KiB) stay near L1 while every panel passes by */
#define ROW_CHUNK(mr) (8 * (mr))
/* the rows per chunk a call uses: the whole batch when its h fits half of L2 (256 KiB: B <= 256 at
 * H=256), so that the weights, which do not fit L2, stream from L3 once per step instead of once
 * per chunk while h is read from L2 (in-process A/B, LSTM: B=32 0.92-0.93x the time, B=128
 * 0.86-0.92x, B=256 0.86-1.02x, H=1024 0.83x); else ROW_CHUNK */
static inline int64_t chunk_rows(int64_t mr, int64_t B, int64_t H)
{
    if (B < 1) return 1;                            /* an empty batch: no items, and no division by zero */
    return B * (int64_t)sizeof(float) * H <= 256 * 1024 ? B : ROW_CHUNK(mr);
}

/* The work items of one step, which next_item hands out: row chunk x unit group; for one row (B=1)
 * two unit groups each, run side by side (lstm_row_pair, gru_row_pair), the last alone when U is
 * odd. item_group: an item's (first) group; item_is_pair: whether it has two. */
/* the units of group u that exist (VW but for a partial last group when H is not a multiple of VW) */
static inline int64_t group_units(int64_t H, int64_t u) { return H - u * VW < VW ? H - u * VW : VW; }

static inline int64_t step_items(int64_t B, int64_t chunk, int64_t U)
{
    return B == 1 ? (U + 1) / 2 : (B + chunk - 1) / chunk * U;
}
static inline int64_t item_group(int64_t B, int64_t U, int64_t j) { return B == 1 ? 2 * j : j % U; }
static inline int item_is_pair(int64_t B, int64_t U, int64_t j) { return B == 1 && 2 * j + 1 < U; }

/* A chunk of `rows` rows whose last row is left alone by its tiles of mr (rows % mr == 1: B=16 or
 * 64 for the LSTM's 3-row tile) runs that row as B=1 does, two unit groups side by side: the item
 * of an even group u takes the row for u and u + 1 (1), the odd group's item leaves it (-1), and a
 * last group without a partner keeps it (0), as does an unpacked layout. Alone, a row's tile has G
 * FMA chains and runs at their latency (1.9x a row's share of the 3-row tile's time at B=16, H=128,
 * perf annotate); the pair sums in the same order, so the bits do not change. Run after the item's
 * tiles (before them: 1.05x): LSTM forward B=16, H=128 0.93-0.97x the time, B=4 0.96, a B=64 step
 * 0.98; GRU B=5 0.96, B=17 level (in-process A/B, median of 31). */
static inline int last_row_pair(int64_t rows, int mr, int64_t wu, int64_t U, int64_t u)
{
    if (wu == VW || rows % mr != 1 || U < 2) return 0;
    if (u % 2) return -1;
    return u + 1 < U;
}

/* The first item of thread o's share of a step's `items` among nth threads; its share ends where
 * thread o + 1's starts (next_item, item_in_order) */
static inline int64_t share_start(int64_t items, int o, int nth) { return items * o / nth; }

/* Item j of a step, in the order it runs. At one row (B=1) a step streams every weight once, and at
 * H=256 they are 1.25 MiB (LSTM) against a core's 512 KiB of L2; odd steps run each thread's share
 * backwards, so they start on the panels the step before ended on, still in L2. The same items,
 * each summed as before: the bits do not change. Frozen forward at B=1, I=64, in-process A/B
 * (median of 15): 1 thread LSTM H=256 0.83-0.90x the time, H=264 0.92, H=512 0.98, GRU 0.93-0.98;
 * 2 threads LSTM H=256 0.94-0.96, the rest level (0.98-1.06, noise); the RNN level. Larger
 * batches are left in order: B=32 and 256 ran level to 1.03x (reversed panels break the
 * prefetchers' stream, and a row block re-reads its panel from L1 anyway). A call of one step
 * starts at first_step's parity. */
static inline int64_t item_in_order(int64_t nb, int64_t i, int nth, int64_t items, int64_t j)
{
    if (nb != 1 || !(i & 1)) return j;
    for (int o = 0; o < nth; o++) {
        int64_t lo = share_start(items, o, nth), hi = share_start(items, o + 1, nth);
        if (j < hi) return lo + hi - 1 - j;
    }
    return j;
}

/* The step index a call's first step takes in item_in_order: for one step of one row (step() at
 * B=1), the parity of such calls so far in this process, so that every other call runs the odd
 * steps' order and starts on the panels the call before ended on, as a sequence's steps do; 0 for
 * the rest. A hint about the caches, not state: either order sums each item the same, so the bits
 * never depend on it. LSTM step B=1, I=64, H=256 on Zen 4 (1 MiB of L2 per core): 0.92x the
 * time at 1 thread, 0.99x at 2 (in-process A/B, median of 11). */
static inline int64_t first_step(int64_t T, int64_t B)
{
    return T == 1 && B == 1 ? __atomic_fetch_add(&one_row_steps, 1, __ATOMIC_RELAXED) & 1 : 0;
}

/* The next work item (step_items) of a step, of `items`, for thread tid of nth, after
 * item j. Each thread has its share, [items*t/nth, items*(t+1)/nth), and a counter of the items
 * taken from it (`claims`, 64 bytes apart: no false sharing): it takes its own in order (its
 * weight panels stay one stream for the prefetchers), then what is left of the others'. A thread
 * the machine deschedules for a while so leaves its share to the others instead of holding the
 * step's barrier (a static split waited for it at every step: LSTM B=32 ran 1.2-1.5x faster at 2
 * threads than at 1 where onnxruntime, whose pool balances this way, ran 1.9x). claims NULL:
 * one thread, every item in order. */
#define CLAIM_STRIDE 8                         /* int64 per counter: one cache line */
static inline int64_t next_item(int64_t *claims, int tid, int nth, int64_t items, int64_t j)
{
    if (!claims) return j + 1;
    for (int k = 0; k < nth; k++) {
        int o = (tid + k) % nth;
        int64_t lo = share_start(items, o, nth), hi = share_start(items, o + 1, nth), *c = claims + o * CLAIM_STRIDE;
        if (lo + __atomic_load_n(c, __ATOMIC_RELAXED) >= hi) continue;        /* spent: no write */
        int64_t n = __atomic_fetch_add(c, 1, __ATOMIC_RELAXED);
        if (lo + n < hi) return lo + n;
    }
    return items;
}

/* Rows still running at step i. A batch whose lengths are ranked, longest first (run_recurrent
 * ranks a ragged ONNX batch so), runs them as a prefix: a step's items cover only the rows running, and
 * the rest are held by one copy (step_rows), where unranked rows each run their tile and drop what
 * it made (`held`). Then a ragged batch costs its row-steps, on one thread or a team, in one call
 * (a call per stretch of lengths cost 1.1-2.3x on a team). Training (a cache) keeps every row. */
static inline int lens_ranked(const int64_t *lens, int64_t B)
{
    if (!lens) return 0;
    for (int64_t b = 1; b < B; b++)
        if (lens[b] > lens[b - 1]) return 0;
    return 1;
}
static inline int64_t running_rows(const int64_t *lens, int ranked, int64_t B, int64_t i)
{
    if (!ranked) return B;
    int64_t lo = 0, hi = B;                                   /* the first row with lens <= i */
    while (lo < hi) {
        int64_t mid = (lo + hi) / 2;
        if (lens[mid] > i) lo = mid + 1; else hi = mid;
    }
    return lo;
}

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield")
#else
#define CPU_RELAX() ((void)0)
#endif

/* The end of a step on the team: the thread adds the n completions it made (items run, plus thread
 * 0's copy of the state entering the step in training) to the step's count, then waits until the
 * count reaches `need`, i.e. until every item of the step is done. Unlike a barrier it waits for
 * the work, not for every thread: a thread the machine deschedules between items holds up no one
 * (the others take its items, next_item) and skips the steps it missed when it runs again. Against
 * an omp barrier per step (in-process A/B, 2 threads, on a VM losing a third of its cycles to
 * steal): LSTM B=1 0.92-0.95x the time, B=32 0.93-1.00x; GRU 0.96-1.00x. */
static inline void step_done(int64_t *done, int64_t n, int64_t need)
{
    if (n) __atomic_add_fetch(done, n, __ATOMIC_RELEASE);
    while (__atomic_load_n(done, __ATOMIC_ACQUIRE) < need) CPU_RELAX();
}

/* A forward's next_item counters, one set a step (then its step_done count), zeroed; NULL for one
 * thread, or without memory, which then sets *nth to 1. Counts a call the team runs (team_forwards). */
static inline int64_t *team_claims(int64_t T, int *nth)
{
    int64_t *claims = *nth > 1 ? calloc((size_t)(T * (*nth + 1) * CLAIM_STRIDE), sizeof(int64_t)) : 0;
    if (!claims) *nth = 1;
    else __atomic_add_fetch(&team_forwards, 1, __ATOMIC_RELAXED);
    return claims;
}

#endif

INL v8 ISA(ld)(const float *p) { return *(const v8u *)p; }
INL void ISA(st)(float *p, v8 v) { *(v8u *)p = v; }
INL v8 ISA(splat)(float s) { return (v8){s, s, s, s, s, s, s, s}; }

/* n < 8 lanes: the last unit group when H is not a multiple of 8 (the rest read as zero) */
INL v8 ISA(ldn)(const float *p, int64_t n)
{
    if (n == VW) return ISA(ld)(p);
    float t[VW] = {0};
    for (int64_t l = 0; l < n; l++) t[l] = p[l];
    return ISA(ld)(t);
}

INL void ISA(stn)(float *p, v8 v, int64_t n)
{
    if (n == VW) { ISA(st)(p, v); return; }
    float t[VW];
    ISA(st)(t, v);
    for (int64_t l = 0; l < n; l++) p[l] = t[l];
}

INL float ISA(hsum)(v8 v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

/* p / q for the rational forms below. On x86 a reciprocal estimate refined by one Newton step
 * (~23 bits, error < 2 ulp of q's reciprocal) replaces the division, whose throughput (one per
 * ~3.5 cycles on Zen 3) limited the gates: five divisions per 8 units of an LSTM step */
INL v8 ISA(ratio)(v8 p, v8 q)
{
#ifdef __AVX__
    v8 r = __builtin_ia32_rcpps256(q);
    r = r * (2.0f - q * r);
    return p * r;
#else
    return p / q;
#endif
}

/* tanh(x) ~ x p(x^2) / q(x^2) on [-7.905, 7.905]: Eigen's and MLAS's rational form, the same
 * coefficients as model_core/jit/activations.py (error < 3e-7, 4e-7 with the reciprocal above);
 * NaN passes both clamps (max/min return their second operand when either is NaN) and stays NaN.
 * TANH_CLAMP and TANH_PQ are the 8- and 16-lane forms' one home (scalars broadcast in both). */
#define TANH_CLAMP 7.90531110763549805f
#define TANH_PQ(x2, p, q) do { \
        p = (x2) * -2.76076847742355e-16f + 2.00018790482477e-13f; \
        p = p * (x2) - 8.60467152213735e-11f; \
        p = p * (x2) + 5.12229709037114e-08f; \
        p = p * (x2) + 1.48572235717979e-05f; \
        p = p * (x2) + 6.37261928875436e-04f; \
        p = p * (x2) + 4.89352455891786e-03f; \
        q = (x2) * 1.19825839466702e-06f + 1.18534705686654e-04f; \
        q = q * (x2) + 2.26843463243900e-03f; \
        q = q * (x2) + 4.89352518554385e-03f; \
    } while (0)

INL v8 ISA(vtanh)(v8 x)
{
    const v8 hi = ISA(splat)(TANH_CLAMP), lo = -hi;
#ifdef __AVX__
    x = __builtin_ia32_minps256(hi, __builtin_ia32_maxps256(lo, x));
#else
    v8i above = x > hi, below = x < lo;
    x = (v8)((above & (v8i)hi) | (~above & (v8i)x));
    x = (v8)((below & (v8i)lo) | (~below & (v8i)x));
#endif
    v8 x2 = x * x, p, q;
    TANH_PQ(x2, p, q);
    return ISA(ratio)(x * p, q);
}

INL v8 ISA(vsigmoid)(v8 x) { return 0.5f * ISA(vtanh)(0.5f * x) + 0.5f; }   /* σ(x) = tanh(x/2)/2 + 1/2 */

#ifdef WIDE
/* 16 lanes: two gates of a unit group in one register (tile_wide's), for the gates too */
INL v16 ISA(join)(v8 lo, v8 hi) { return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
INL v8 ISA(low)(v16 a) { return __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7); }
INL v8 ISA(high)(v16 a) { return __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15); }

/* vtanh on 16 lanes, bit for bit: the same clamps (max/min, so a NaN stays NaN), the
 * same polynomials, and the 8-lane reciprocal estimate on each half (AVX-512's own, rcp14, is a
 * different estimate and would move the last bit against the 8-lane build) */
INL v16 ISA(vtanh16)(v16 x)
{
    const v16 hi = {TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP,
                    TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP, TANH_CLAMP};
    x = __builtin_ia32_minps512_mask(hi, __builtin_ia32_maxps512_mask(-hi, x, x, -1, 4), x, -1, 4);
    v16 x2 = x * x, p, q;
    TANH_PQ(x2, p, q);
    v16 r = ISA(join)(__builtin_ia32_rcpps256(ISA(low)(q)), __builtin_ia32_rcpps256(ISA(high)(q)));
    r = r * (2.0f - q * r);
    return x * p * r;
}

INL v16 ISA(vsigmoid16)(v16 x) { return 0.5f * ISA(vtanh16)(0.5f * x) + 0.5f; }
#endif

/* acc[m][g] = sum_k h[m, k] * W[k, g-th gate of this unit group]: mr rows of h (row stride hs),
 * G vectors wide; the tile the forward kernels build on. `full` is 0 only for an unpacked tail
 * group, whose weight rows must not be read past the H valid columns. */
/* The two hot shapes on AVX2 (LSTM 3 rows x 4 gates, GRU 4 x 3: 12 accumulators each) written
 * out with named registers and one pointer per row: GCC schedules this form 3-20% faster than the
 * generic loop below (a C harness at B=33: 81-91 against 78-88 GFLOP/s at H=256, 75-90 against
 * 66-86 at H=512). */
INL void ISA(tile_3x4)(int64_t K, const float *h, int64_t hs, const float *w, int64_t wk, int64_t wg,
                       v8 acc[MRMAX][4])
{
    const float *h0 = h, *h1 = h + hs, *h2 = h + 2 * hs;
    v8 a00 = acc[0][0], a01 = acc[0][1], a02 = acc[0][2], a03 = acc[0][3];
    v8 a10 = acc[1][0], a11 = acc[1][1], a12 = acc[1][2], a13 = acc[1][3];
    v8 a20 = acc[2][0], a21 = acc[2][1], a22 = acc[2][2], a23 = acc[2][3];
    for (int64_t k = 0; k < K; k++) {
        const float *wr = w + k * wk;
        v8 w0 = ISA(ld)(wr), w1 = ISA(ld)(wr + wg), w2 = ISA(ld)(wr + 2 * wg), w3 = ISA(ld)(wr + 3 * wg);
        float x0 = h0[k], x1 = h1[k], x2 = h2[k];
        a00 += w0 * x0; a01 += w1 * x0; a02 += w2 * x0; a03 += w3 * x0;
        a10 += w0 * x1; a11 += w1 * x1; a12 += w2 * x1; a13 += w3 * x1;
        a20 += w0 * x2; a21 += w1 * x2; a22 += w2 * x2; a23 += w3 * x2;
    }
    acc[0][0] = a00; acc[0][1] = a01; acc[0][2] = a02; acc[0][3] = a03;
    acc[1][0] = a10; acc[1][1] = a11; acc[1][2] = a12; acc[1][3] = a13;
    acc[2][0] = a20; acc[2][1] = a21; acc[2][2] = a22; acc[2][3] = a23;
}

INL void ISA(tile_4x3)(int64_t K, const float *h, int64_t hs, const float *w, int64_t wk, int64_t wg,
                       v8 acc[MRMAX][4])
{
    const float *h0 = h, *h1 = h + hs, *h2 = h + 2 * hs, *h3 = h + 3 * hs;
    v8 a00 = acc[0][0], a01 = acc[0][1], a02 = acc[0][2], a10 = acc[1][0], a11 = acc[1][1], a12 = acc[1][2];
    v8 a20 = acc[2][0], a21 = acc[2][1], a22 = acc[2][2], a30 = acc[3][0], a31 = acc[3][1], a32 = acc[3][2];
    for (int64_t k = 0; k < K; k++) {
        const float *wr = w + k * wk;
        v8 w0 = ISA(ld)(wr), w1 = ISA(ld)(wr + wg), w2 = ISA(ld)(wr + 2 * wg);
        float x0 = h0[k], x1 = h1[k], x2 = h2[k], x3 = h3[k];
        a00 += w0 * x0; a01 += w1 * x0; a02 += w2 * x0;
        a10 += w0 * x1; a11 += w1 * x1; a12 += w2 * x1;
        a20 += w0 * x2; a21 += w1 * x2; a22 += w2 * x2;
        a30 += w0 * x3; a31 += w1 * x3; a32 += w2 * x3;
    }
    acc[0][0] = a00; acc[0][1] = a01; acc[0][2] = a02;
    acc[1][0] = a10; acc[1][1] = a11; acc[1][2] = a12;
    acc[2][0] = a20; acc[2][1] = a21; acc[2][2] = a22;
    acc[3][0] = a30; acc[3][1] = a31; acc[3][2] = a32;
}

/* One row of h against two unit groups' panels (wu apart), G gates each: 2G accumulators. A single
 * row against one group has G FMA chains, each waiting on its own last result, so the tile ran at
 * the FMA latency, not the memory (LSTM B=1, H=256: 17-19 us a step against 13 for the bytes
 * alone); two groups side by side run twice as many. Each accumulator sums over k in the same
 * order as in `tile`: bit-identical results. */
INL void ISA(tile_row_pair)(const int G, int64_t K, const float *h, const float *w, int64_t wk, int64_t wg,
                            int64_t wu, v8 acc[2][4])
{
#ifdef WIDE
    /* the LSTM's two gates per 16-lane register here too: half the loads of the 8-lane form, in
     * as many cycles a k (4 chains at the FMA latency against 8 at two a cycle). A frozen B=1 step
     * (H=256) 8.7-10.6 us against 12.0, the B=1 forward 0.82-0.88x the time (in-process,
     * alternate builds, Xeon). The same sums: the same bits. The GRU's (r|z in 16 lanes, n in 8)
     * ran slower, 4 chains against 6: it keeps the 8-lane form. */
    if (G == 4 && wg == VW) {
        v16 z[2][2];
        for (int p = 0; p < 2; p++) {
            z[p][0] = ISA(join)(acc[p][0], acc[p][1]);
            z[p][1] = ISA(join)(acc[p][2], acc[p][3]);
        }
        for (int64_t k = 0; k < K; k++) {
            const float *wr = w + k * wk;
            float x = h[k];
            for (int p = 0; p < 2; p++) {
                z[p][0] += *(const v16u *)(wr + p * wu) * x;
                z[p][1] += *(const v16u *)(wr + p * wu + 2 * VW) * x;
            }
        }
        for (int p = 0; p < 2; p++) {
            acc[p][0] = ISA(low)(z[p][0]); acc[p][1] = ISA(high)(z[p][0]);
            acc[p][2] = ISA(low)(z[p][1]); acc[p][3] = ISA(high)(z[p][1]);
        }
        return;
    }
#endif
    v8 a[2][4];
    for (int p = 0; p < 2; p++)
        for (int g = 0; g < G; g++) a[p][g] = acc[p][g];
    for (int64_t k = 0; k < K; k++) {
        const float *wr = w + k * wk;
        float x = h[k];
        for (int p = 0; p < 2; p++)
            for (int g = 0; g < G; g++) a[p][g] += ISA(ld)(wr + p * wu + g * wg) * x;
    }
    for (int p = 0; p < 2; p++)
        for (int g = 0; g < G; g++) acc[p][g] = a[p][g];
}

#ifdef WIDE
/* The tile in 512-bit registers (AVX-512 builds): a packed row k holds a unit group's G gates of 8
 * side by side (wg == VW), so one 16-lane vector covers two gates (i|f, g|o; the GRU's r|z, with n
 * in a 256-bit one) and a row of the tile takes 2 FMAs a k where 8-lane vectors took 4 (3). Each
 * lane still sums over k in order from the same start: bit-identical to the 8-lane tile.
 * wide_tile: whether tile_wide runs a tile (packed, gates side by side). */
INL int ISA(wide_tile)(const int G, const int full, int64_t wg) { return (G == 4 || G == 3) && full && wg == VW; }

/* the tile's k loop on 16-lane accumulators a (the GRU's n on 8) */
/* pf: where the next item's panel is fetched from as the k loop runs, row k >> pfs at each k with
 * no bit of pfs set (pfs 0: a row every k; 1: every other k, half the rows: pf_part) */
INL void ISA(wide_loop)(const int G, const int mr, int64_t K, const float *h, int64_t hs, const float *w, int64_t wk,
                        v16 a[MRMAX][2], v8 n[MRMAX], const float *pf, const int pfs)
{
    /* rows m = 3q + s read as r[q][s * hs], r[q] one pointer per three rows, moving along k: 4
     * pointers and hs in registers (one per row spilled, and was reloaded every k at 12 rows) */
    const float *r[(MRMAX + 2) / 3];
    for (int q = 0; q < (mr + 2) / 3; q++) r[q] = h + 3 * q * hs;
    for (int64_t k = 0; k < K; k++) {
        const float *wr = w + k * wk;
        if (pf && !(k & pfs)) {
            const float *p = pf + (k >> pfs) * wk;
            __builtin_prefetch(p, 0, 2);
            __builtin_prefetch(p + 2 * VW, 0, 2);
        }
        v16 w0 = *(const v16u *)wr, w1 = {0};
        v8 w2 = {0};
        if (G == 4) w1 = *(const v16u *)(wr + 2 * VW);
        else w2 = ISA(ld)(wr + 2 * VW);
        for (int m = 0; m < mr; m++) {
            float x = r[m / 3][m % 3 * hs];
            a[m][0] += w0 * x;
            if (G == 4) a[m][1] += w1 * x;
            else n[m] += w2 * x;
        }
        for (int q = 0; q < (mr + 2) / 3; q++) r[q]++;
    }
}

INL void ISA(tile_wide)(const int G, const int mr, int64_t K, const float *h, int64_t hs, const float *w, int64_t wk,
                        v8 acc[MRMAX][4], const float *pf, const int pfs)
{
    v16 a[MRMAX][2];
    v8 n[MRMAX];
    for (int m = 0; m < mr; m++) {
        a[m][0] = ISA(join)(acc[m][0], acc[m][1]);
        if (G == 4) a[m][1] = ISA(join)(acc[m][2], acc[m][3]);
        else n[m] = acc[m][2];
    }
    ISA(wide_loop)(G, mr, K, h, hs, w, wk, a, n, pf, pfs);
    for (int m = 0; m < mr; m++) {
        acc[m][0] = ISA(low)(a[m][0]);
        acc[m][1] = ISA(high)(a[m][0]);
        if (G == 4) { acc[m][2] = ISA(low)(a[m][1]); acc[m][3] = ISA(high)(a[m][1]); }
        else acc[m][2] = n[m];
    }
}
#endif

/* the tile on 8-lane vectors, in every build (ISA(tile) takes 16 lanes where it can) */
INL void ISA(tile8)(const int G, const int mr, const int full, int64_t nu, int64_t K, const float *h, int64_t hs,
                    const float *w, int64_t wk, int64_t wg, v8 acc[MRMAX][4])
{
    if (G == 4 && mr == 3 && full) { ISA(tile_3x4)(K, h, hs, w, wk, wg, acc); return; }
    if (G == 3 && mr == 4 && full) { ISA(tile_4x3)(K, h, hs, w, wk, wg, acc); return; }
    for (int64_t k = 0; k < K; k++) {
        const float *wr = w + k * wk;
        v8 wv[4];
        for (int g = 0; g < G; g++) wv[g] = full ? ISA(ld)(wr + g * wg) : ISA(ldn)(wr + g * wg, nu);
        for (int m = 0; m < mr; m++) {
            float hv = h[m * hs + k];
            for (int g = 0; g < G; g++) acc[m][g] += wv[g] * hv;
        }
    }
}

INL void ISA(tile)(const int G, const int mr, const int full, int64_t nu, int64_t K, const float *h, int64_t hs,
                   const float *w, int64_t wk, int64_t wg, v8 acc[MRMAX][4])
{
#ifdef WIDE
    if (ISA(wide_tile)(G, full, wg)) { ISA(tile_wide)(G, mr, K, h, hs, w, wk, acc, 0, 0); return; }
#endif
    ISA(tile8)(G, mr, full, nu, K, h, hs, w, wk, wg, acc);
}

/* ISA(tile) that also fetches pf, the panel the thread's next item reads (same strides), into L2
 * as it goes, two lines a k row (NULL: none). AVX-512 build only: with the weights past L2 (LSTM
 * H=512: 5 MiB a step), the first row block of each item otherwise waits on L3 (forward B=32-64,
 * H=512: 0.95-0.97x the time at 1 and 2 threads; H=256, B=4-256 level; in-process A/B, median of
 * 15, Xeon, 2026-12-03). The LSTM's only: the GRU's forward ran 1.05x the time with it at H=256
 * and level at H=512 (bench_core, alternate builds). The AVX2 build streams without it (measured
 * on Zen 3: see "No software prefetch" below). */
INL void ISA(tile_next)(const int G, const int mr, const int full, int64_t nu, int64_t K, const float *h, int64_t hs,
                        const float *w, int64_t wk, int64_t wg, v8 acc[MRMAX][4], const float *pf, const int pfs)
{
#ifdef WIDE
    if (ISA(wide_tile)(G, full, wg)) { ISA(tile_wide)(G, mr, K, h, hs, w, wk, acc, pf, pfs); return; }
#endif
    (void)pf; (void)pfs;
    ISA(tile)(G, mr, full, nu, K, h, hs, w, wk, wg, acc);
}

/* The part of the next item's panel (next: its first row, K rows wk floats apart) that row block j
 * of an item of nbk blocks fetches (tile_next's pf; NULL: none), and at what pace (pfs): split
 * between the first two blocks, half the rows each at one row every other k, where one block took
 * the whole panel at a row every k. W_hh^T past L2 (LSTM H=512: 4 MiB) comes from L3 at ~30 GB/s
 * on this Xeon, and one block's k loop (a third of the group's time at B=32) was too short for
 * 64 KiB: the probe's product at H=512 0.92x the time at B=32, 0.95x at B=64, H=256 level
 * (in-process A/B, median of 11) */
INL int ISA(pf_pace)(int64_t nbk) { return nbk >= 2; }
INL const float *ISA(pf_part)(const float *next, int64_t j, int64_t nbk, int64_t K, int64_t wk)
{
    int pfs = ISA(pf_pace)(nbk);
    return next && j <= pfs ? next + j * ((K + pfs) >> pfs) * wk : 0;
}

/* CALL(rem) for rem = 1 .. MRC rows, each count a constant: only counts up to MRC are made (a
 * tile's arrays hold MRC rows) */
#define ROW_CASE(K, MRC, CALL) case K: if ((K) < (MRC)) { CALL(K); } else { CALL(MRC); } break;
#define ROWS_SWITCH(MRC, rem, CALL) \
    switch (rem) { ROW_CASE(1, MRC, CALL) ROW_CASE(2, MRC, CALL) ROW_CASE(3, MRC, CALL) ROW_CASE(4, MRC, CALL) \
                   ROW_CASE(5, MRC, CALL) ROW_CASE(6, MRC, CALL) ROW_CASE(7, MRC, CALL) ROW_CASE(8, MRC, CALL) \
                   ROW_CASE(9, MRC, CALL) ROW_CASE(10, MRC, CALL) ROW_CASE(11, MRC, CALL) default: CALL(MRC); }

#ifdef WIDE
/* tile_wide (G = 4) with W^T read as stored: src is the panel's first column, its k rows rs floats
 * apart and its four vectors gs apart (the LSTM: unit group u, rows 4H apart, gates H apart, nu
 * units; the RNN: panel c, rows H apart, vectors 8 apart), and each k row of the panel goes to the
 * packed layout at dst as the tile reads it, for the row blocks after this one. A writable
 * layer's batched step so packs its weights inside the first block's FMA-bound loop, not in a
 * pass of its own over 1.25 MiB (LSTM, H=256), and each panel is still in L1 for the next blocks.
 * The same values in the same order as tile_wide's: the same bits. */
INL void ISA(tile_wide_pack)(const int mr, int64_t K, const float *h, int64_t hs, const float *src, int64_t rs,
                             int64_t gs, int64_t nu, float *dst, v8 acc[MRMAX][4])
{
    v16 a[MRMAX][2];
    for (int m = 0; m < mr; m++) {
        a[m][0] = ISA(join)(acc[m][0], acc[m][1]);
        a[m][1] = ISA(join)(acc[m][2], acc[m][3]);
    }
    const float *r[(MRMAX + 2) / 3];                                          /* rows as in wide_loop */
    for (int q = 0; q < (mr + 2) / 3; q++) r[q] = h + 3 * q * hs;
    for (int64_t k = 0; k < K; k++) {
        const float *s = src + k * rs;
        v16 w0 = ISA(join)(ISA(ldn)(s, nu), ISA(ldn)(s + gs, nu));                         /* i|f, g|o */
        v16 w1 = ISA(join)(ISA(ldn)(s + 2 * gs, nu), ISA(ldn)(s + 3 * gs, nu));
        *(v16u *)(dst + k * 4 * VW) = w0;
        *(v16u *)(dst + k * 4 * VW + 2 * VW) = w1;
        for (int m = 0; m < mr; m++) {
            float x = r[m / 3][m % 3 * hs];
            a[m][0] += w0 * x;
            a[m][1] += w1 * x;
        }
        for (int q = 0; q < (mr + 2) / 3; q++) r[q]++;
    }
    for (int m = 0; m < mr; m++) {
        acc[m][0] = ISA(low)(a[m][0]); acc[m][1] = ISA(high)(a[m][0]);
        acc[m][2] = ISA(low)(a[m][1]); acc[m][3] = ISA(high)(a[m][1]);
    }
}

/* tile_wide_pack for mr rows, out of line: it runs once per item, and inlined into every row count
 * of lstm_rows it cost the frozen step, which never packs, 1.04x its time */
static __attribute__((noinline)) void ISA(tile_wide_pack_rows)(int mr, int64_t K, const float *h, int64_t hs,
                                                               const float *src, int64_t rs, int64_t gs, int64_t nu,
                                                               float *dst, v8 acc[MRMAX][4])
{
#define CALL(M) ISA(tile_wide_pack)(M, K, h, hs, src, rs, gs, nu, dst, acc)
    ROWS_SWITCH(MRMAX, mr, CALL)
#undef CALL
}
#endif

/* -- the recurrent product alone (the probe): out (B, G*H) = h (B, H) @ W ---------------------- */
#ifdef WIDE
INL void ISA(product_wide)(const int G, const int mr, int64_t K, const float *h, const float *w, int64_t wk, float *out,
                           int64_t H, const float *pf, const int pfs)
{
    v16 a[MRMAX][2];
    v8 n[MRMAX];
    for (int m = 0; m < mr; m++) { a[m][0] = a[m][1] = (v16){0}; n[m] = ISA(splat)(0.0f); }
    ISA(wide_loop)(G, mr, K, h, K, w, wk, a, n, pf, pfs);
    for (int m = 0; m < mr; m++) {
        float *o = out + m * G * H;
        ISA(st)(o, ISA(low)(a[m][0]));
        ISA(st)(o + H, ISA(high)(a[m][0]));
        if (G == 4) { ISA(st)(o + 2 * H, ISA(low)(a[m][1])); ISA(st)(o + 3 * H, ISA(high)(a[m][1])); }
        else ISA(st)(o + 2 * H, n[m]);
    }
}

/* mr rows of the product from tile_wide's k loop, in a function of its own that starts from zero
 * and stores its registers: inlined into product_g's loops, GCC kept two of the tile's values on
 * the stack and reloaded them every k, and the accumulators went through memory twice on their
 * way out (166 GFLOP/s at B=96, H=256 against 179 for the bare loop; Xeon) */
static __attribute__((noinline)) void ISA(product_wide_rows)(const int G, int mr, int64_t K, const float *h,
                                                             const float *w, int64_t wk, float *out, int64_t H,
                                                             const float *pf, int pfs)
{
#define CALL(M) if (G == 4) ISA(product_wide)(4, M, K, h, w, wk, out, H, pf, pfs); \
                else ISA(product_wide)(3, M, K, h, w, wk, out, H, pf, pfs)
    ROWS_SWITCH(MRMAX, mr, CALL)
#undef CALL
}
#endif

INL void ISA(product_rows)(const int G, const int mr, const int full, int64_t nu, int64_t H, const float *h,
                           const float *w, int64_t wk, int64_t wg, float *out, int64_t u, const float *pf, int pfs)
{
#ifdef WIDE
    if (ISA(wide_tile)(G, full, wg) && nu == VW) {
        ISA(product_wide_rows)(G, mr, H, h, w, wk, out + u * VW, H, pf, pfs);
        return;
    }
#endif
    (void)pf; (void)pfs;
    v8 acc[MRMAX][4];
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < G; g++) acc[m][g] = ISA(splat)(0.0f);
    ISA(tile)(G, mr, full, nu, H, h, H, w, wk, wg, acc);
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < G; g++) ISA(stn)(out + m * G * H + g * H + u * VW, acc[m][g], nu);
}

INL void ISA(product_g)(const int G, int64_t B, int64_t H, const float *h, const float *w, int64_t wk,
                           int64_t wg, int64_t wu, float *out)
{
    int64_t U = (H + VW - 1) / VW;
    for (int64_t bc = 0; bc < B; bc += ROW_CHUNK(MR_LSTM))
    for (int64_t u = 0; u < U; u++) {
        int64_t nu = group_units(H, u);
        int full = nu == VW || wu != VW;           /* a packed layout is zero-padded: always safe */
        int64_t be = B < bc + ROW_CHUNK(MR_LSTM) ? B : bc + ROW_CHUNK(MR_LSTM), nbk = (be - bc + MR_LSTM - 1) / MR_LSTM;
        int pfs = ISA(pf_pace)(nbk);
        for (int64_t b = bc; b < be; b += MR_LSTM) {
            int64_t rem = be - b < MR_LSTM ? be - b : MR_LSTM;
            const float *pf = ISA(pf_part)(u + 1 < U ? w + (u + 1) * wu : 0, (b - bc) / MR_LSTM, nbk, H, wk);
#define CALL(M) if (full) ISA(product_rows)(G, M, 1, nu, H, h + b * H, w + u * wu, wk, wg, out + b * G * H, u, pf, pfs); \
                else ISA(product_rows)(G, M, 0, nu, H, h + b * H, w + u * wu, wk, wg, out + b * G * H, u, pf, pfs)
            ROWS_SWITCH(MR_LSTM, rem, CALL)
#undef CALL
        }
    }
}

static void ISA(axpy_product)(int64_t, int64_t, int64_t, const float *, int64_t, const float *, float *);

static void ISA(product)(int64_t B, int64_t H, int64_t G, const float *h, const float *w, int64_t wk, int64_t wg,
                         int64_t wu, float *out)
{
    if (wu == VW) ISA(axpy_product)(B, H, G * H, h, H, w, out);
    else if (G == 4) ISA(product_g)(4, B, H, h, w, wk, wg, wu, out);
    else if (G == 3) ISA(product_g)(3, B, H, h, w, wk, wg, wu, out);
    else if (G == 2) ISA(product_g)(2, B, H, h, w, wk, wg, wu, out);
    else ISA(product_g)(1, B, H, h, w, wk, wg, wu, out);
}

/* out (B, N) = h (B, K) @ wt (K, N) read row by row: for a few rows, streaming W_hh^T as the layer
 * stores it beats packing it (which costs about two products); four rows of wt per pass */
static void ISA(axpy_product)(int64_t B, int64_t K, int64_t N, const float *h, int64_t hs, const float *wt,
                              float *out)
{
    memset(out, 0, (size_t)(B * N) * sizeof(float));
    int64_t n8 = N & ~(int64_t)(VW - 1), k4 = K & ~(int64_t)3;
    for (int64_t k = 0; k < k4; k += 4) {
        const float *w0 = wt + k * N, *w1 = w0 + N, *w2 = w1 + N, *w3 = w2 + N;
        for (int64_t b = 0; b < B; b++) {
            const float *hb = h + b * hs + k;
            float h0 = hb[0], h1 = hb[1], h2 = hb[2], h3 = hb[3];
            float *o = out + b * N;
            int64_t n = 0;
            for (; n < n8; n += VW)
                ISA(st)(o + n, ((ISA(ld)(o + n) + h0 * ISA(ld)(w0 + n)) + h1 * ISA(ld)(w1 + n))
                               + (h2 * ISA(ld)(w2 + n) + h3 * ISA(ld)(w3 + n)));
            for (; n < N; n++) o[n] += h0 * w0[n] + h1 * w1[n] + h2 * w2[n] + h3 * w3[n];
        }
    }
    for (int64_t k = k4; k < K; k++)
        for (int64_t b = 0; b < B; b++) {
            float hv = h[b * hs + k];
            for (int64_t n = 0; n < N; n++) out[b * N + n] += hv * wt[k * N + n];
        }
}

/* -- LSTM forward -------------------------------------------------------------------------------- */
/* G vectors of the bias (G*H,) for unit group u, zero without one: added to the tile's registers,
 * so the projection needs no separate pass adding it */
INL void ISA(bias_vectors)(const int G, const float *bx, int64_t H, int64_t u, int64_t nu, v8 bv[4])
{
    for (int g = 0; g < G; g++) bv[g] = bx ? ISA(ldn)(bx + g * H + u * VW, nu) : ISA(splat)(0.0f);
}

/* -- the input projection alone, for one-row sequences (mc_project) ---------------------------- */
/* mr rows of x W_ih^T + b for unit group u: each lane starts from the bias and sums over k in order,
 * as the fused tile does before it turns to h (lstm_rows, gru_rows, the pair tiles), so a sequence
 * projected first gives the bits of one whose projection is made in the step (a frozen layer's
 * step() at one row). 8-lane vectors in every build: on the Xeon a kernel run after 512-bit loads
 * (OpenBLAS's AVX-512 sgemm, or our 16-lane tile) ran 1.10-1.14x slower for about 4 ms (GRU B=1,
 * H=256, T=100: 794-808 us, against 710-718 run alone, after OpenBLAS's AVX2 sgemm, after 2 ms of
 * 512-bit FMAs in registers, or after this projection, which took 97 us to OpenBLAS's 61; measured
 * in-process, 2026-12-03). */
INL void ISA(project_rows)(const int G, const int mr, int64_t nu, int64_t I, const float *x, int64_t xs,
                           const float *wi, const v8 bv[4], float *out, int64_t os, int64_t H, int64_t u)
{
    v8 acc[MRMAX][4];
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < G; g++) acc[m][g] = bv[g];
    ISA(tile8)(G, mr, 1, nu, I, x, xs, wi, G * VW, VW, acc);                   /* packed: zero-padded */
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < G; g++) ISA(stn)(out + m * os + g * H + u * VW, acc[m][g], nu);
}

/* out (N, G*H), rows os floats apart = x (N, I), rows xs apart, @ W_ih^T + bias (G*H,) or NULL,
 * for unit groups [u0, u1): W_ih^T packed (U, I, G, 8) (mc_pack_rows). A unit group's panel
 * (I x G x 8) stays in L1 while every row passes. */
INL void ISA(project_g)(const int G, int64_t N, int64_t I, int64_t H, const float *x, int64_t xs, const float *wi,
                        const float *bias, float *out, int64_t os, int64_t u0, int64_t u1)
{
    for (int64_t u = u0; u < u1; u++) {
        int64_t nu = group_units(H, u);
        v8 bv[4];
        ISA(bias_vectors)(G, bias, H, u, nu, bv);
        for (int64_t b = 0; b < N; b += MR_PROJ) {
            int64_t rem = N - b < MR_PROJ ? N - b : MR_PROJ;
#define CALL(M) ISA(project_rows)(G, M, nu, I, x + b * xs, xs, wi + u * I * G * VW, bv, out + b * os, os, H, u)
            ROWS_SWITCH(MR_PROJ, rem, CALL)
#undef CALL
        }
    }
}

static void ISA(project)(int64_t N, int64_t I, int64_t H, int64_t G, const float *x, int64_t xs, const float *wi,
                         const float *bias, float *out, int64_t os, int64_t u0, int64_t u1)
{
    if (G == 4) ISA(project_g)(4, N, I, H, x, xs, wi, bias, out, os, u0, u1);
    else ISA(project_g)(3, N, I, H, x, xs, wi, bias, out, os, u0, u1);
}

/* The rows of x (G gate pieces of 32 bytes each, a row apart) that the tile for unit group u will
 * read, fetched into cache one tile ahead: scattered like this the hardware prefetchers miss
 * them, and at B=32 a fifth of a step waited on these loads (perf annotate) */
INL void ISA(prefetch_x)(const int G, const float *x, int64_t xb, int64_t H, int64_t u, int64_t b0, int64_t b1)
{
    for (int64_t b = b0; b < b1; b++)
        for (int g = 0; g < G; g++) __builtin_prefetch(x + b * xb + g * H + u * VW, 0, 3);
}

/* prefetch_x for the tile after (chunk bc, group u) of step i: the chunk's next group, else the
 * next chunk's first, else the next step's (x + t' * xt) first */
INL void ISA(prefetch_next)(const int G, const float *x, int64_t xt, int64_t xb, int64_t T, int64_t i,
                            int32_t reverse, int64_t H, int64_t B, int64_t chunk, int64_t bc, int64_t u)
{
    int64_t t = reverse ? T - 1 - i : i, pu = u + 1, pb = bc;
    if (pu == (H + VW - 1) / VW) {
        pu = 0;
        pb = bc + chunk;
        if (pb >= B) {
            if (i + 1 >= T) return;
            pb = 0;
            t = reverse ? t - 1 : t + 1;
        }
    }
    ISA(prefetch_x)(G, x + t * xt, xb, H, pu, pb, B < pb + chunk ? B : pb + chunk);
}

/* No software prefetch of the next unit group's panels: the hardware's stream prefetchers keep
 * up. Slicing the next panel into every row tile (prefetcht0, from 4 MiB of panels a step) once took
 * the H=512 forward to 0.85-0.92x the time on a busy VM; on the quiet one (2026-12-03) taking it out
 * took the forward to 0.92-0.96x the time at B=32-256, H=512-1024 (B=8: 0.81-0.82x) and
 * forward+backward to 0.97-0.98x (B=8: 0.90x), 1 and 2 threads; with a 256 MiB streaming neighbour
 * on the other core, 1.03x at B=32, level at B=256, 0.88x at B=8 (in-process A/B, median of 7-15).
 * Prefetching each panel's head only was level with none, the whole panel into L2 only (prefetcht1)
 * level with prefetcht0. */

/* the gates of one row for unit group u from its pre-activations a0..a3 (i, f, g, o): x W_ih^T + b
 * + h W_hh^T, in the product's registers */
INL void ISA(lstm_gates)(v8 a0, v8 a1, v8 a2, v8 a3, int64_t nu, int64_t H, int64_t u, const float *cp, float *cn,
                         float *y, float *gates, float *tanhc)
{
#ifdef WIDE
    /* i|f through σ, g|o through tanh of (g, o/2), then o's half as σ: 2 16-lane tanh for 4 8-lane */
    const v16 half = {1, 1, 1, 1, 1, 1, 1, 1, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f};
    v16 fi = ISA(vsigmoid16)(ISA(join)(a0, a1)), t = ISA(vtanh16)(ISA(join)(a2, a3) * half);
    v8 i = ISA(low)(fi), f = ISA(high)(fi), g = ISA(low)(t), o = 0.5f * ISA(high)(t) + 0.5f;
#else
    v8 i = ISA(vsigmoid)(a0), f = ISA(vsigmoid)(a1), g = ISA(vtanh)(a2), o = ISA(vsigmoid)(a3);
#endif
    v8 c = f * ISA(ldn)(cp + u * VW, nu) + i * g;                                 /* c' = f*c + i*g */
    v8 tc = ISA(vtanh)(c);
    ISA(stn)(cn + u * VW, c, nu);
    ISA(stn)(y + u * VW, o * tc, nu);                                             /* h' = o*tanh(c') */
    if (gates) {                                                                   /* what BPTT reads */
        float *gr = gates + u * VW;
        ISA(stn)(gr, i, nu); ISA(stn)(gr + H, f, nu); ISA(stn)(gr + 2 * H, g, nu); ISA(stn)(gr + 3 * H, o, nu);
        ISA(stn)(tanhc + u * VW, tc, nu);
    }
}

/* a row whose sequence has ended (step i >= its length; lens NULL: none has) keeps its state: h and
 * c pass through unchanged for unit group u (inference only: nothing is cached for BPTT) */
INL int ISA(held)(const int64_t *lens, int64_t i, int64_t nu, int64_t u, const float *hp, float *y,
                  const float *cp, float *cn)
{
    if (!lens || i < *lens) return 0;
    ISA(stn)(y + u * VW, ISA(ldn)(hp + u * VW, nu), nu);
    if (cn) ISA(stn)(cn + u * VW, ISA(ldn)(cp + u * VW, nu), nu);
    return 1;
}

/* -- one row against W_hh^T as stored (the row form, mc_row_form) ------------------------------
 * Units [a, a + C*RW) of one row: C vectors of each gate sum h over every row k of W_hh^T, each
 * row's G runs of C*RW floats contiguous, so every k issues G*C independent loads of whole lines.
 * The packed GRU pair tile's 8-lane loads from two panels ran a B=1 step (H=256) at ~128 GB/s out
 * of L2; this form at 155, near the 167 of a plain read (C harness, Xeon, 2026-12-03). The LSTM's
 * 16-lane pair tile reads its kept copy at 163 and this form at 147, but this form needs no copy:
 * a writable layer's one-row call reads it (native_weights). Each lane starts where the pair
 * tile's does and sums over k in the same order: the same bits. */
#ifdef WIDE
#define RW 16
#define RCMAX(G) (24 / (G))                        /* G x RCMAX accumulators of the 32 registers */
#define RV v16
#define RLD(p) ((v16)*(const v16u *)(p))
#define RST(p, v) (*(v16u *)(p) = (v))
#define RSIG(v) ISA(vsigmoid16)(v)
#define RTANH(v) ISA(vtanh16)(v)
#else
#define RW VW
#define RCMAX(G) (12 / (G))                        /* of AVX2's 16 */
#define RV v8
#define RLD(p) ((v8)ISA(ld)(p))
#define RST(p, v) ISA(st)(p, v)
#define RSIG(v) ISA(vsigmoid)(v)
#define RTANH(v) ISA(vtanh)(v)
#endif
INL void ISA(gru_row_chunk)(const int C, int64_t H, int64_t a, const float *x, const float *bx, const int64_t *lens,
                            int64_t i, const float *w, const float *b_hn, const float *hp, float *y, float *gates,
                            float *hn)
{
    if (lens && i >= *lens) {                                       /* ended: h passes through (held) */
        memcpy(y + a, hp + a, (size_t)(C * RW) * sizeof(float));
        return;
    }
    RV ar[RCMAX(3)], az[RCMAX(3)], an[RCMAX(3)], zero = {0};
    for (int c = 0; c < C; c++) {                   /* r and z from x W_ih^T + b, as gru_row_pair's */
        int64_t o = a + c * RW;
        ar[c] = RLD(x + o) + (bx ? RLD(bx + o) : zero);
        az[c] = RLD(x + H + o) + (bx ? RLD(bx + H + o) : zero);
        an[c] = zero;
    }
    for (int64_t k = 0; k < H; k++) {
        const float *wr = w + k * 3 * H + a;
        float v = hp[k];
        for (int c = 0; c < C; c++) {
            ar[c] += RLD(wr + c * RW) * v;
            az[c] += RLD(wr + H + c * RW) * v;
            an[c] += RLD(wr + 2 * H + c * RW) * v;
        }
    }
    for (int c = 0; c < C; c++) {                                          /* gru_gates, RW lanes */
        int64_t o = a + c * RW;
        RV r = RSIG(ar[c]), z = RSIG(az[c]), hv = an[c] + RLD(b_hn + o);
        RV n = RTANH(RLD(x + 2 * H + o) + (bx ? RLD(bx + 2 * H + o) : zero) + r * hv);
        RST(y + o, n + z * (RLD(hp + o) - n));
        if (gates) {
            RST(gates + o, r); RST(gates + H + o, z); RST(gates + 2 * H + o, n);
            RST(hn + o, hv);
        }
    }
}

/* the row form's items of a step: runs of vectors of RW units, balanced, at most RCMAX(G) each, and
 * as many as a multiple of the team's threads where there are vectors enough (three LSTM items at
 * H=256 on two threads ran 2:1, and the B=1 forward took 1.05x onnxruntime's time, not 0.94) */
static inline int64_t ISA(row_chunks)(int64_t H, int G, int nth)
{
    int64_t nv = H / RW, n = (nv + RCMAX(G) - 1) / RCMAX(G);
    n = (n + nth - 1) / nth * nth;
    return n < nv ? n : nv;
}
static inline int64_t ISA(row_chunk_start)(int64_t H, int64_t n, int64_t j) { return H / RW * j / n; }

/* one LSTM row, as gru_row_chunk: lstm_row_pair's sums, then lstm_gates on RW lanes */
INL void ISA(lstm_row_chunk)(const int C, int64_t H, int64_t a, const float *x, const float *bx, const int64_t *lens,
                             int64_t i, const float *w, const float *hp, const float *cp, float *cn, float *y,
                             float *gates, float *tanhc)
{
    if (lens && i >= *lens) {                                                 /* ended: h and c pass through */
        memcpy(y + a, hp + a, (size_t)(C * RW) * sizeof(float));
        memcpy(cn + a, cp + a, (size_t)(C * RW) * sizeof(float));
        return;
    }
    RV acc[4][RCMAX(4)], zero = {0};
    for (int g = 0; g < 4; g++)
        for (int c = 0; c < C; c++) {
            int64_t o = g * H + a + c * RW;
            acc[g][c] = RLD(x + o) + (bx ? RLD(bx + o) : zero);
        }
    for (int64_t k = 0; k < H; k++) {
        const float *wr = w + k * 4 * H + a;
        float v = hp[k];
        for (int g = 0; g < 4; g++)
            for (int c = 0; c < C; c++) acc[g][c] += RLD(wr + g * H + c * RW) * v;
    }
    for (int c = 0; c < C; c++) {
        int64_t o = a + c * RW;
        RV ig = RSIG(acc[0][c]), f = RSIG(acc[1][c]), g = RTANH(acc[2][c]), og = RSIG(acc[3][c]);
        RV cv = f * RLD(cp + o) + ig * g;                                         /* c' = f*c + i*g */
        RV tc = RTANH(cv);
        RST(cn + o, cv);
        RST(y + o, og * tc);                                                      /* h' = o*tanh(c') */
        if (gates) {
            RST(gates + o, ig); RST(gates + H + o, f); RST(gates + 2 * H + o, g); RST(gates + 3 * H + o, og);
            RST(tanhc + o, tc);
        }
    }
}

/* item j of n in a step of the row form: its run of vectors (row_chunks), as a constant count */
#define ROW_ITEM(G, CALL) do { \
        int64_t v0_ = ISA(row_chunk_start)(H, n, j), n_ = ISA(row_chunk_start)(H, n, j + 1) - v0_; \
        switch (n_) { \
        case 1: CALL(1 < RCMAX(G) ? 1 : RCMAX(G), v0_ * RW); break; \
        case 2: CALL(2 < RCMAX(G) ? 2 : RCMAX(G), v0_ * RW); break; \
        case 3: CALL(3 < RCMAX(G) ? 3 : RCMAX(G), v0_ * RW); break; \
        case 4: CALL(4 < RCMAX(G) ? 4 : RCMAX(G), v0_ * RW); break; \
        case 5: CALL(5 < RCMAX(G) ? 5 : RCMAX(G), v0_ * RW); break; \
        case 6: CALL(6 < RCMAX(G) ? 6 : RCMAX(G), v0_ * RW); break; \
        case 7: CALL(7 < RCMAX(G) ? 7 : RCMAX(G), v0_ * RW); break; \
        default: CALL(8 < RCMAX(G) ? 8 : RCMAX(G), v0_ * RW); break; \
        } } while (0)

INL void ISA(gru_row_item)(int64_t j, int64_t n, int64_t H, const float *x, const float *bx, const int64_t *lens,
                           int64_t i, const float *w, const float *b_hn, const float *hp, float *y, float *gates,
                           float *hn)
{
#define CALL(C, a) ISA(gru_row_chunk)(C, H, a, x, bx, lens, i, w, b_hn, hp, y, gates, hn)
    ROW_ITEM(3, CALL);
#undef CALL
}

INL void ISA(lstm_row_item)(int64_t j, int64_t n, int64_t H, const float *x, const float *bx, const int64_t *lens,
                            int64_t i, const float *w, const float *hp, const float *cp, float *cn, float *y,
                            float *gates, float *tanhc)
{
#define CALL(C, a) ISA(lstm_row_chunk)(C, H, a, x, bx, lens, i, w, hp, cp, cn, y, gates, tanhc)
    ROW_ITEM(4, CALL);
#undef CALL
}
#undef ROW_ITEM
#undef RW

/* step i of the row form in a forward part (lstm_ or gru_forward_part's variables): the items this
 * thread takes (next_item, in item_in_order's order), then the step's end on a team (step_done, with
 * thread 0's copy of the state entering the step in training) */
#define ROW_STEP(G, ITEM) do { \
        int64_t items_ = ISA(row_chunks)(H, G, nth), ran_ = 0; \
        int64_t *claims_ = claims ? claims + i * (nth + 1) * CLAIM_STRIDE : 0; \
        for (int64_t j_ = next_item(claims_, tid, nth, items_, -1); j_ < items_; \
             j_ = next_item(claims_, tid, nth, items_, j_), ran_++) \
            ITEM(item_in_order(1, i + i0, nth, items_, j_), items_); \
        if (claims_) step_done(claims_ + nth * CLAIM_STRIDE, ran_ + (prev_h && tid == 0), items_ + (prev_h != 0)); \
    } while (0)
#undef RCMAX
#undef RV
#undef RLD
#undef RST
#undef RSIG
#undef RTANH

/* mr rows of one step for unit group u: the product tile, then the gates from its registers.
 * With xi (mr rows of the raw input, xib apart, I wide) and wi (this group's panel of W_ih^T, packed
 * like W_hh: (I, 4, 8)), the input projection is made in the same registers first, from the bias:
 * no (T, B, 4H) projection is ever written or read back. Else x holds the projection. pfi and pfh:
 * the panels of W_ih and W_hh that the next item reads, or NULL (tile_next). */
INL void ISA(lstm_rows)(const int mr, const int full, int64_t nu, int64_t H, int64_t u, const float *x, int64_t xb,
                        const float *xi, int64_t xib, int64_t I, const float *wi,
                        const v8 bv[4], const int64_t *lens, int64_t i, const float *w, int64_t wk, int64_t wg,
                        const float *hp, int64_t hs, const float *cp, float *cn, float *y, int64_t yb, float *gates,
                        float *tanhc, const float *pfi, const float *pfh, const int pfs, const float *si,
                        const float *sh)
{
    v8 acc[MRMAX][4];
    if (xi) {
        for (int m = 0; m < mr; m++)
            for (int g = 0; g < 4; g++) acc[m][g] = bv[g];
#ifdef WIDE
        if (si) ISA(tile_wide_pack_rows)(mr, I, xi, xib, si, 4 * H, H, nu, (float *)wi, acc); else /* wi: scratch */
#endif
        ISA(tile_next)(4, mr, full, nu, I, xi, xib, wi, 4 * VW, VW, acc, pfi, pfs);
    } else
        for (int m = 0; m < mr; m++)      /* the tile starts from x W_ih^T + b: no loads after the K loop */
            for (int g = 0; g < 4; g++) acc[m][g] = ISA(ldn)(x + m * xb + g * H + u * VW, nu) + bv[g];
#ifdef WIDE
    if (sh) ISA(tile_wide_pack_rows)(mr, H, hp, hs, sh, 4 * H, H, nu, (float *)w, acc); else      /* w: scratch */
#endif
    ISA(tile_next)(4, mr, full, nu, H, hp, hs, w, wk, wg, acc, pfh, pfs);
    for (int m = 0; m < mr; m++)
        if (!ISA(held)(lens ? lens + m : 0, i, nu, u, hp + m * hs, y + m * yb, cp + m * H, cn + m * H))
            ISA(lstm_gates)(acc[m][0], acc[m][1], acc[m][2], acc[m][3], nu, H, u, cp + m * H, cn + m * H, y + m * yb,
                            gates ? gates + m * 4 * H : 0, gates ? tanhc + m * H : 0);
}

/* lstm_rows for one row and the two unit groups u, u + 1 of a packed layout (zero-padded: the
 * second group may be the partial last one, nu2 wide), through tile_row_pair */
INL void ISA(lstm_row_pair)(int64_t H, int64_t u, const float *x, const float *xi, int64_t I, const float *wi,
                            const float *bx, const int64_t *lens, int64_t i, const float *w, int64_t wk, int64_t wg,
                            int64_t wu, const float *hp, const float *cp, float *cn, float *y, float *gates,
                            float *tanhc)
{
    int64_t nu2 = group_units(H, u + 1);
    v8 acc[2][4], bv[2][4];
    ISA(bias_vectors)(4, bx, H, u, VW, bv[0]);
    ISA(bias_vectors)(4, bx, H, u + 1, nu2, bv[1]);
    for (int p = 0; p < 2; p++)
        for (int g = 0; g < 4; g++)
            acc[p][g] = xi ? bv[p][g] : ISA(ldn)(x + g * H + (u + p) * VW, p ? nu2 : VW) + bv[p][g];
    if (xi) ISA(tile_row_pair)(4, I, xi, wi + u * I * 4 * VW, 4 * VW, VW, I * 4 * VW, acc);
    ISA(tile_row_pair)(4, H, hp, w + u * wu, wk, wg, wu, acc);
    for (int p = 0; p < 2; p++) {
        int64_t nu = p ? nu2 : VW;
        if (!ISA(held)(lens, i, nu, u + p, hp, y, cp, cn))
            ISA(lstm_gates)(acc[p][0], acc[p][1], acc[p][2], acc[p][3], nu, H, u + p, cp, cn, y, gates, tanhc);
    }
}

static void ISA(copy_rows)(int64_t B, int64_t H, const float *src, int64_t ss, float *dst)
{
    for (int64_t b = 0; b < B; b++) memcpy(dst + b * H, src + b * ss, (size_t)H * sizeof(float));
}

/* The rows step i's items run (running_rows: all B unless the lengths are ranked); thread 0 holds
 * the rest, whose h (and c, cn given) pass to the step's outputs unchanged, as one more completion
 * of the step (step_done) */
static int64_t ISA(step_rows)(const int64_t *lens, int ranked, int64_t B, int64_t i, int tid, int64_t H,
                              const float *hp, int64_t hs, float *y, int64_t yb, const float *cp, float *cn)
{
    int64_t nb = running_rows(lens, ranked, B, i);
    if (tid != 0) return nb;
    for (int64_t b = nb; b < B; b++) {
        memcpy(y + b * yb, hp + b * hs, (size_t)H * sizeof(float));
        if (cn) memcpy(cn + b * H, cp + b * H, (size_t)H * sizeof(float));
    }
    return nb;
}

/* Thread `tid` of `nth` runs the work items (row chunk x unit group) of each step that it claims
 * (next_item), then waits until every item of the step is done (step_done: each step reads the
 * whole h of the step before) */
static void ISA(lstm_forward_part)(int tid, int nth, int64_t *claims, int64_t T, int64_t i0, int64_t B, int64_t H,
                                   int32_t reverse,
                                   const float *x, int64_t xt, int64_t xb, const float *xi, int64_t xit, int64_t xib,
                                   int64_t I, const float *wi, const float *bx, const int64_t *lens,
                                   const float *w, int64_t wk, int64_t wg,
                                   int64_t wu, const float *h0, const float *c0, float *y, int64_t yt, int64_t yb,
                                   float *hT, float *cT, float *gates, float *tanhc, float *prev_h, float *prev_c,
                                   float *work, const float *si, const float *sh)
{
    int64_t U = (H + VW - 1) / VW;
    const float *hp = h0, *cp = c0;
    int64_t hs = H;
    int ranked = !gates && wu != VW && lens_ranked(lens, B);
    int64_t row_steps = 0;
    for (int64_t i = 0; i < T; i++) {
        int64_t t = reverse ? T - 1 - i : i;
        if (prev_h && tid == 0) {                                                 /* the state entering t */
            ISA(copy_rows)(B, H, hp, hs, prev_h + t * B * H);
            memcpy(prev_c + t * B * H, cp, (size_t)(B * H) * sizeof(float));
        }
        float *cn = work + (i & 1) * B * H;
        const float *xt_ = x ? x + t * xt : 0;                                  /* NULL: fused (xi) */
        float *yt_ = y + t * yt;
        float *gt = gates ? gates + t * B * 4 * H : 0, *tct = gates ? tanhc + t * B * H : 0;
        if (wu == VW && mc_row_form(B, H, 4, w)) {          /* one row against W_hh^T as stored, a team's items */
#define ITEM(j, n) ISA(lstm_row_item)(j, n, H, xt_, bx, lens, i, w, hp, cp, cn, yt_, gt, tct)
            ROW_STEP(4, ITEM);
#undef ITEM
            hp = yt_; hs = yb; cp = cn;
            continue;
        }
        if (wu == VW) {                                  /* unpacked: W_hh^T streamed by rows, then the gates */
            float *pre = work + 2 * B * H;                                        /* (B, 4H) */
            ISA(axpy_product)(B, H, 4 * H, hp, hs, w, pre);
            for (int64_t b = 0; b < B; b++)
                for (int64_t u = 0; u < U; u++) {
                    int64_t nu = group_units(H, u);
                    const float *pr = pre + b * 4 * H + u * VW;
                    if (ISA(held)(lens ? lens + b : 0, i, nu, u, hp + b * hs, yt_ + b * yb, cp + b * H, cn + b * H))
                        continue;
                    v8 bv[4];
                    ISA(bias_vectors)(4, bx, H, u, nu, bv);
                    const float *xr = xt_ + b * xb + u * VW;
                    v8 a[4];
                    for (int g = 0; g < 4; g++) a[g] = ISA(ldn)(pr + g * H, nu) + ISA(ldn)(xr + g * H, nu) + bv[g];
                    ISA(lstm_gates)(a[0], a[1], a[2], a[3], nu, H, u, cp + b * H, cn + b * H, yt_ + b * yb,
                                    gt ? gt + b * 4 * H : 0, gt ? tct + b * H : 0);
                }
            hp = yt_; hs = yb; cp = cn;
            continue;
        }
        int64_t nb = ISA(step_rows)(lens, ranked, B, i, tid, H, hp, hs, yt_, yb, cp, cn), hold = nb < B && tid == 0;
        row_steps += nb;
        int64_t chunk = chunk_rows(MR_LSTM, nb, H), items = step_items(nb, chunk, U);
        int64_t *step_claims = claims ? claims + i * (nth + 1) * CLAIM_STRIDE : 0, ran = 0;   /* then its count */
        for (int64_t j = next_item(step_claims, tid, nth, items, -1); j < items;
             j = next_item(step_claims, tid, nth, items, j), ran++) {
            int64_t k = item_in_order(nb, i + i0, nth, items, j), u = item_group(nb, U, k);
            if (item_is_pair(nb, U, k)) {
                ISA(lstm_row_pair)(H, u, xt_, xi ? xi + t * xit : 0, I, wi, bx, lens, i, w, wk, wg, wu, hp, cp, cn, yt_,
                                   gt, tct);
                continue;
            }
            int64_t bc = j / U * chunk;                            /* rows of h that stay in L2, one panel ... */
            int64_t nu = group_units(H, u);
            int full = nu == VW || wu != VW;
            v8 bv[4];
            ISA(bias_vectors)(4, bx, H, u, nu, bv);
            if (!xi) ISA(prefetch_next)(4, x, xt, xb, T, i, reverse, H, nb, chunk, bc, u);
            /* si, sh: W_ih^T and W_hh^T as stored, whose panels of group u the item's first row
             * block packs into this thread's two panels in the scratch (tile_wide_pack), for its
             * other blocks: no pair then, whose second group is another item's */
            int64_t be = nb < bc + chunk ? nb : bc + chunk, pair = si ? 0 : last_row_pair(be - bc, MR_LSTM, wu, U, u);
            const float *pwi = si ? wi + tid * (I + H) * 4 * VW : xi ? wi + u * I * 4 * VW : 0;
            const float *pw = si ? pwi + I * 4 * VW : w + u * wu;
            int64_t bt = pair ? be - 1 : be;                                      /* rows in tiles */
            int64_t nbk = (bt - bc + MR_LSTM - 1) / MR_LSTM;
            const float *nwi = xi && !si && u + 1 < U ? wi + (u + 1) * I * 4 * VW : 0;   /* the next panels */
            const float *nw = !si && u + 1 < U ? w + (u + 1) * wu : 0;
            for (int64_t b = bc; b < bt; b += MR_LSTM) {                          /* ... for their row blocks */
                int64_t rem = bt - b < MR_LSTM ? bt - b : MR_LSTM;
#define ARGS(M, F) M, F, nu, H, u, xt_ + b * xb, xb, xi ? xi + t * xit + b * xib : 0, xib, I, \
                   pwi, bv, lens ? lens + b : 0, i, pw, wk, wg, hp + b * hs, \
                   hs, cp + b * H, cn + b * H, \
                   yt_ + b * yb, yb, gt ? gt + b * 4 * H : 0, tct ? tct + b * H : 0, \
                   ISA(pf_part)(nwi, (b - bc) / MR_LSTM, nbk, I, 4 * VW), \
                   ISA(pf_part)(nw, (b - bc) / MR_LSTM, nbk, H, wk), ISA(pf_pace)(nbk), \
                   b == bc && si ? si + u * VW : 0, b == bc && sh ? sh + u * VW : 0
#define CALL(M) if (full) ISA(lstm_rows)(ARGS(M, 1)); else ISA(lstm_rows)(ARGS(M, 0))
                ROWS_SWITCH(MR_LSTM, rem, CALL)
#undef CALL
#undef ARGS
            }
            if (pair > 0) {
                int64_t r = be - 1;
                ISA(lstm_row_pair)(H, u, xt_ ? xt_ + r * xb : 0, xi ? xi + t * xit + r * xib : 0, I, wi, bx,
                                   lens ? lens + r : 0, i, w, wk, wg, wu, hp + r * hs, cp + r * H, cn + r * H,
                                   yt_ + r * yb, gt ? gt + r * 4 * H : 0, tct ? tct + r * H : 0);
            }
        }
        if (step_claims)
            step_done(step_claims + nth * CLAIM_STRIDE, ran + (prev_h && tid == 0) + hold,
                      items + (prev_h != 0) + (nb < B));
        hp = yt_; hs = yb; cp = cn;
    }
    if (tid != 0) return;
    __atomic_add_fetch(&row_steps_run, row_steps, __ATOMIC_RELAXED);
    if (hT && hT != hp) ISA(copy_rows)(B, H, hp, hs, hT);      /* hT may be h0 itself (T = 0) */
    if (cT && cT != cp) memcpy(cT, cp, (size_t)(B * H) * sizeof(float));
}

static void ISA(lstm_forward)(int64_t T, int64_t B, int64_t H, int32_t reverse, const float *x, int64_t xt,
                              int64_t xb, const float *xi, int64_t xit, int64_t xib, int64_t I, const float *wi,
                              const float *bx, const int64_t *lens, const float *w, int64_t wk,
                              int64_t wg, int64_t wu, const float *h0,
                              const float *c0, float *y, int64_t yt, int64_t yb, float *hT, float *cT,
                              float *gates, float *tanhc, float *prev_h, float *prev_c, float *work, const float *si,
                              const float *sh)
{
    int nth = threads_for(wu, T, B, H, 4, w);
    /* si, sh (or NULL): W_ih^T and W_hh^T as stored, to be packed into wi and w, the caller's
     * scratch of (U, I + H, 4, 8) floats (a writable layer's batched step). Where a step's items
     * each own a unit group, the 512-bit tile packs each group's panels as it first reads them,
     * into two panels per thread at the start of the scratch, at wi (tile_wide_pack): the stored
     * weights then stay in L2 from call to call, as a frozen layer's packed copy does, with no pass
     * of their own over 1.25 MiB (H=256). Otherwise they are packed here first. */
#ifdef WIDE
    int on_use = si && T == 1 && chunk_rows(MR_LSTM, B, H) >= B && nth <= (H + VW - 1) / VW;
#else
    int on_use = 0;
#endif
    pack_first_unless(on_use, 4, I, H, &si, &sh, wi, w);
    int64_t *claims = team_claims(T, &nth);                                   /* next_item */
    const int64_t i0 = first_step(T, B);
#define PART(tid, n) ISA(lstm_forward_part)(tid, n, claims, T, i0, B, H, reverse, x, xt, xb, xi, xit, xib, I, wi, bx, lens, w, \
                                            wk, wg, wu, h0, c0, \
                   y, yt, yb, \
                                            hT, cT, gates, tanhc, prev_h, prev_c, work, si, sh)
    RUN_PARTS(nth, PART);
#undef PART
    free(claims);
}

/* -- GRU forward --------------------------------------------------------------------------------- */
/* the gates of one row for unit group u: a0, a1 r's and z's pre-activations (x W_ih^T + b +
 * h W_hh^T), a2 the candidate's h W_hn, xn its x W_in^T + b_in */
INL void ISA(gru_gates)(v8 a0, v8 a1, v8 a2, v8 bn, v8 xn, int64_t nu, int64_t H, int64_t u, const float *hp,
                        float *y, float *gates, float *hn)
{
#ifdef WIDE
    v16 rz = ISA(vsigmoid16)(ISA(join)(a0, a1));                                  /* r|z in one register */
    v8 r = ISA(low)(rz), z = ISA(high)(rz);
#else
    v8 r = ISA(vsigmoid)(a0), z = ISA(vsigmoid)(a1);
#endif
    v8 hv = a2 + bn;                                                              /* h W_hn + b_hn */
    v8 n = ISA(vtanh)(xn + r * hv);
    v8 h = ISA(ldn)(hp + u * VW, nu);
    ISA(stn)(y + u * VW, n + z * (h - n), nu);                                    /* h' = (1-z)*n + z*h */
    if (gates) {
        float *gr = gates + u * VW;
        ISA(stn)(gr, r, nu); ISA(stn)(gr + H, z, nu); ISA(stn)(gr + 2 * H, n, nu);
        ISA(stn)(hn + u * VW, hv, nu);
    }
}

/* mr rows of one GRU step for unit group u. With xi and wi (as lstm_rows), the input projection is
 * made in the tile first, from the bias: r and z keep accumulating over h, while the candidate's
 * x W_in^T + b_in moves out of its register (r multiplies only the h part) and the tile's third
 * column restarts from zero for h W_hn. Else x holds the projection. */
INL void ISA(gru_rows)(const int mr, const int full, int64_t nu, int64_t H, int64_t u, const float *x, int64_t xb,
                       const float *xi, int64_t xib, int64_t I, const float *wi,
                       const v8 bv[4], const int64_t *lens, int64_t i, const float *w, int64_t wk, int64_t wg,
                       const float *b_hn, const float *hp, int64_t hs, float *y, int64_t yb, float *gates, float *hn)
{
    v8 acc[MRMAX][4], xn[MRMAX];
    if (xi) {
        for (int m = 0; m < mr; m++)
            for (int g = 0; g < 3; g++) acc[m][g] = bv[g];
        ISA(tile)(3, mr, full, nu, I, xi, xib, wi, 3 * VW, VW, acc);
        for (int m = 0; m < mr; m++) {
            xn[m] = acc[m][2];
            acc[m][2] = ISA(splat)(0.0f);
        }
    } else
        for (int m = 0; m < mr; m++) {    /* r and z start from x W_ih^T + b, the candidate's from zero */
            acc[m][0] = ISA(ldn)(x + m * xb + u * VW, nu) + bv[0];
            acc[m][1] = ISA(ldn)(x + m * xb + H + u * VW, nu) + bv[1];
            acc[m][2] = ISA(splat)(0.0f);
        }
    ISA(tile)(3, mr, full, nu, H, hp, hs, w, wk, wg, acc);
    v8 bn = ISA(ldn)(b_hn + u * VW, nu);
    for (int m = 0; m < mr; m++)
        if (!ISA(held)(lens ? lens + m : 0, i, nu, u, hp + m * hs, y + m * yb, 0, 0))
            ISA(gru_gates)(acc[m][0], acc[m][1], acc[m][2], bn,
                           xi ? xn[m] : ISA(ldn)(x + m * xb + 2 * H + u * VW, nu) + bv[2], nu,
                           H, u, hp + m * hs, y + m * yb, gates ? gates + m * 3 * H : 0, gates ? hn + m * H : 0);
}

#ifdef WIDE
/* The GRU's tile over two unit groups u and v = u + 1 (w0 and w1 = w0 + wu: their panels): r|z of
 * each in a 16-lane register, and both groups' n in a third (its two 8-lane rows joined), so all
 * three FMAs of a row are full width where one group's tile ran n at half width. Each lane sums
 * as in tile_wide: the same bits. MR_GRU2 rows (3 accumulators each), set with the other tiles'. */
INL void ISA(gru_tile2)(const int mr, int64_t K, const float *h, int64_t hs, const float *w0, const float *w1,
                        int64_t wk, v16 rz0[MR_GRU2], v16 rz1[MR_GRU2], v16 nn[MR_GRU2])
{
    const float *r[(MR_GRU2 + 2) / 3];                           /* rows as in tile_wide */
    for (int q = 0; q < (mr + 2) / 3; q++) r[q] = h + 3 * q * hs;
    for (int64_t k = 0; k < K; k++) {
        const float *a = w0 + k * wk, *b = w1 + k * wk;
        v16 wa = *(const v16u *)a, wb = *(const v16u *)b, wn = ISA(join)(ISA(ld)(a + 2 * VW), ISA(ld)(b + 2 * VW));
        for (int m = 0; m < mr; m++) {
            float x = r[m / 3][m % 3 * hs];
            rz0[m] += wa * x;
            rz1[m] += wb * x;
            nn[m] += wn * x;
        }
        for (int q = 0; q < (mr + 2) / 3; q++) r[q]++;
    }
}

/* gru_tile2 with W^T read as stored (as tile_wide_pack for the LSTM): src is group u's first
 * column (rows 3H floats apart, gates H apart; group u full, u + 1 with nu1 units), and each k row
 * of the two groups' panels goes to the packed layout at d0 and d1 as the tile reads it. The same
 * values in the same order as gru_tile2's: the same bits. */
INL void ISA(gru_tile2_pack)(const int mr, int64_t K, const float *h, int64_t hs, const float *src, int64_t H,
                             int64_t nu1, float *d0, float *d1, v16 rz0[MR_GRU2], v16 rz1[MR_GRU2],
                             v16 nn[MR_GRU2])
{
    v16 a0[MR_GRU2], a1[MR_GRU2], an[MR_GRU2];          /* locals: the stores below may not alias them */
    for (int m = 0; m < mr; m++) { a0[m] = rz0[m]; a1[m] = rz1[m]; an[m] = nn[m]; }
    const float *r[(MR_GRU2 + 2) / 3];
    for (int q = 0; q < (mr + 2) / 3; q++) r[q] = h + 3 * q * hs;
    for (int64_t k = 0; k < K; k++) {
        const float *s = src + k * 3 * H;
        v16 wa = ISA(join)(ISA(ld)(s), ISA(ld)(s + H));
        v16 wb = ISA(join)(ISA(ldn)(s + VW, nu1), ISA(ldn)(s + H + VW, nu1));
        v8 na = ISA(ld)(s + 2 * H), nb = ISA(ldn)(s + 2 * H + VW, nu1);
        *(v16u *)(d0 + k * 3 * VW) = wa;
        ISA(st)(d0 + k * 3 * VW + 2 * VW, na);
        *(v16u *)(d1 + k * 3 * VW) = wb;
        ISA(st)(d1 + k * 3 * VW + 2 * VW, nb);
        v16 wn = ISA(join)(na, nb);
        for (int m = 0; m < mr; m++) {
            float x = r[m / 3][m % 3 * hs];
            a0[m] += wa * x;
            a1[m] += wb * x;
            an[m] += wn * x;
        }
        for (int q = 0; q < (mr + 2) / 3; q++) r[q]++;
    }
    for (int m = 0; m < mr; m++) { rz0[m] = a0[m]; rz1[m] = a1[m]; nn[m] = an[m]; }
}

/* gru_tile2_pack for mr rows, out of line as tile_wide_pack_rows */
static __attribute__((noinline)) void ISA(gru_tile2_pack_rows)(int mr, int64_t K, const float *h, int64_t hs,
                                                               const float *src, int64_t H, int64_t nu1, float *d0,
                                                               float *d1, v16 rz0[MR_GRU2], v16 rz1[MR_GRU2],
                                                               v16 nn[MR_GRU2])
{
#define CALL(M) ISA(gru_tile2_pack)(M, K, h, hs, src, H, nu1, d0, d1, rz0, rz1, nn)
    ROWS_SWITCH(MR_GRU2, mr, CALL)
#undef CALL
}

/* gru_rows for the two unit groups u, u + 1 of a packed layout (zero-padded: u + 1 may be the
 * partial last group), through gru_tile2: their panels at wi0 and wi0 + wid (W_ih), w0 and w0 + wu
 * (W_hh). si, sh (or NULL): W_ih^T and W_hh^T as stored at group u's column, which this block
 * packs into those panels as it reads them (gru_tile2_pack). */
INL void ISA(gru_rows2)(const int mr, int64_t H, int64_t u, const float *x, int64_t xb, const float *xi, int64_t xib,
                        int64_t I, const float *wi0, int64_t wid, const float *bx, const int64_t *lens, int64_t i,
                        const float *w0, int64_t wk, int64_t wu, const float *b_hn, const float *hp, int64_t hs,
                        float *y, int64_t yb, float *gates, float *hn, const float *si, const float *sh)
{
    int64_t nu[2] = {VW, group_units(H, u + 1)};
    v8 bv[2][4];
    for (int p = 0; p < 2; p++) ISA(bias_vectors)(3, bx, H, u + p, nu[p], bv[p]);
    v16 rz[2][MR_GRU2], nn[MR_GRU2], xn[MR_GRU2];
    const v16 zero = {0};
    for (int m = 0; m < mr; m++) {
        for (int p = 0; p < 2; p++) {
            const float *xr = x + m * xb + (u + p) * VW;
            rz[p][m] = xi ? ISA(join)(bv[p][0], bv[p][1])
                          : ISA(join)(ISA(ldn)(xr, nu[p]) + bv[p][0], ISA(ldn)(xr + H, nu[p]) + bv[p][1]);
        }
        nn[m] = xi ? ISA(join)(bv[0][2], bv[1][2]) : zero;
    }
    if (xi) {                            /* x W_ih^T + b first; the candidate's part moves out of nn */
        if (si)
            ISA(gru_tile2_pack_rows)(mr, I, xi, xib, si, H, nu[1], (float *)wi0, (float *)(wi0 + wid), rz[0], rz[1],
                                     nn);
        else
            ISA(gru_tile2)(mr, I, xi, xib, wi0, wi0 + wid, 3 * VW, rz[0], rz[1], nn);
        for (int m = 0; m < mr; m++) {
            xn[m] = nn[m];
            nn[m] = zero;
        }
    }
    if (sh) ISA(gru_tile2_pack_rows)(mr, H, hp, hs, sh, H, nu[1], (float *)w0, (float *)(w0 + wu), rz[0], rz[1], nn);
    else ISA(gru_tile2)(mr, H, hp, hs, w0, w0 + wu, wk, rz[0], rz[1], nn);
    for (int p = 0; p < 2; p++) {
        v8 bn = ISA(ldn)(b_hn + (u + p) * VW, nu[p]);
        for (int m = 0; m < mr; m++) {
            if (ISA(held)(lens ? lens + m : 0, i, nu[p], u + p, hp + m * hs, y + m * yb, 0, 0)) continue;
            v8 n = p ? ISA(high)(nn[m]) : ISA(low)(nn[m]);
            v8 xc = xi ? (p ? ISA(high)(xn[m]) : ISA(low)(xn[m]))
                       : ISA(ldn)(x + m * xb + 2 * H + (u + p) * VW, nu[p]) + bv[p][2];
            ISA(gru_gates)(ISA(low)(rz[p][m]), ISA(high)(rz[p][m]), n, bn, xc, nu[p], H, u + p, hp + m * hs,
                           y + m * yb, gates ? gates + m * 3 * H : 0, gates ? hn + m * H : 0);
        }
    }
}
#undef GRU_GROUPS                    /* this header is included once per instruction set */
#define GRU_GROUPS 2                 /* unit groups per work item from two rows (gru_forward_part) */
#else
#undef GRU_GROUPS
#define GRU_GROUPS 1
#endif

/* gru_rows for one row and the two unit groups u, u + 1 of a packed layout (as lstm_row_pair) */
INL void ISA(gru_row_pair)(int64_t H, int64_t u, const float *x, const float *xi, int64_t I, const float *wi,
                           const float *bx, const int64_t *lens, int64_t i, const float *w, int64_t wk, int64_t wg,
                           int64_t wu, const float *b_hn, const float *hp, float *y, float *gates, float *hn)
{
    int64_t nu2 = group_units(H, u + 1);
    v8 acc[2][4], bv[2][4], xn[2];
    ISA(bias_vectors)(3, bx, H, u, VW, bv[0]);
    ISA(bias_vectors)(3, bx, H, u + 1, nu2, bv[1]);
    if (xi) {
        for (int p = 0; p < 2; p++)
            for (int g = 0; g < 3; g++) acc[p][g] = bv[p][g];
        ISA(tile_row_pair)(3, I, xi, wi + u * I * 3 * VW, 3 * VW, VW, I * 3 * VW, acc);
        for (int p = 0; p < 2; p++) {
            xn[p] = acc[p][2];
            acc[p][2] = ISA(splat)(0.0f);
        }
    } else
        for (int p = 0; p < 2; p++) {
            int64_t nu = p ? nu2 : VW;
            acc[p][0] = ISA(ldn)(x + (u + p) * VW, nu) + bv[p][0];
            acc[p][1] = ISA(ldn)(x + H + (u + p) * VW, nu) + bv[p][1];
            acc[p][2] = ISA(splat)(0.0f);
        }
    ISA(tile_row_pair)(3, H, hp, w + u * wu, wk, wg, wu, acc);
    for (int p = 0; p < 2; p++) {
        int64_t nu = p ? nu2 : VW, up = u + p;
        if (!ISA(held)(lens, i, nu, up, hp, y, 0, 0))
            ISA(gru_gates)(acc[p][0], acc[p][1], acc[p][2], ISA(ldn)(b_hn + up * VW, nu),
                           xi ? xn[p] : ISA(ldn)(x + 2 * H + up * VW, nu) + bv[p][2], nu, H, up, hp, y, gates, hn);
    }
}

static void ISA(gru_forward_part)(int tid, int nth, int64_t *claims, int64_t T, int64_t i0, int64_t B, int64_t H,
                                  int32_t reverse,
                                  const float *x, int64_t xt, int64_t xb, const float *xi, int64_t xit, int64_t xib,
                                  int64_t I, const float *wi, const float *bx, const int64_t *lens,
                                  const float *w, int64_t wk, int64_t wg,
                                  int64_t wu, const float *b_hn, const float *h0, float *y, int64_t yt, int64_t yb,
                                  float *hT, float *gates, float *hn, float *prev_h, float *work, const float *si,
                                  const float *sh)
{
    int64_t U = (H + VW - 1) / VW;
    const float *hp = h0;
    int64_t hs = H;
    int ranked = !gates && wu != VW && lens_ranked(lens, B);
    int64_t row_steps = 0;
    for (int64_t i = 0; i < T; i++) {
        int64_t t = reverse ? T - 1 - i : i;
        if (prev_h && tid == 0) ISA(copy_rows)(B, H, hp, hs, prev_h + t * B * H);
        const float *xt_ = x ? x + t * xt : 0;                                  /* NULL: fused (xi) */
        float *yt_ = y + t * yt;
        float *gt = gates ? gates + t * B * 3 * H : 0, *hnt = gates ? hn + t * B * H : 0;
        if (wu == VW && mc_row_form(B, H, 3, w)) {          /* one row against W_hh^T as stored, a team's items */
#define ITEM(j, n) ISA(gru_row_item)(j, n, H, xt_, bx, lens, i, w, b_hn, hp, yt_, gt, hnt)
            ROW_STEP(3, ITEM);
#undef ITEM
            hp = yt_; hs = yb;
            continue;
        }
        if (wu == VW) {                                  /* unpacked: W_hh^T streamed by rows, then the gates */
            ISA(axpy_product)(B, H, 3 * H, hp, hs, w, work);                      /* (B, 3H) */
            for (int64_t b = 0; b < B; b++)
                for (int64_t u = 0; u < U; u++) {
                    int64_t nu = group_units(H, u);
                    const float *pr = work + b * 3 * H + u * VW;
                    if (ISA(held)(lens ? lens + b : 0, i, nu, u, hp + b * hs, yt_ + b * yb, 0, 0)) continue;
                    v8 bv[4];
                    ISA(bias_vectors)(3, bx, H, u, nu, bv);
                    const float *xr = xt_ + b * xb + u * VW;
                    v8 ar = ISA(ldn)(pr, nu) + ISA(ldn)(xr, nu) + bv[0];
                    v8 az = ISA(ldn)(pr + H, nu) + ISA(ldn)(xr + H, nu) + bv[1];
                    ISA(gru_gates)(ar, az, ISA(ldn)(pr + 2 * H, nu), ISA(ldn)(b_hn + u * VW, nu),
                                   ISA(ldn)(xr + 2 * H, nu) + bv[2], nu, H, u, hp + b * hs, yt_ + b * yb,
                                   gt ? gt + b * 3 * H : 0, gt ? hnt + b * H : 0);
                }
            hp = yt_; hs = yb;
            continue;
        }
        int64_t nb = ISA(step_rows)(lens, ranked, B, i, tid, H, hp, hs, yt_, yb, 0, 0), hold = nb < B && tid == 0;
        row_steps += nb;
        /* from two rows an item takes GRU_GROUPS unit groups (gru_rows2 in the AVX-512 build), the last alone
         * when U is odd; one row runs pairs of groups anyway (gru_row_pair) */
        int64_t UG = nb > 1 ? (U + GRU_GROUPS - 1) / GRU_GROUPS : U;
        int64_t chunk = chunk_rows(MR_GRU, nb, H), items = step_items(nb, chunk, UG);
        int64_t *step_claims = claims ? claims + i * (nth + 1) * CLAIM_STRIDE : 0, ran = 0;   /* then its count */
        for (int64_t j = next_item(step_claims, tid, nth, items, -1); j < items;
             j = next_item(step_claims, tid, nth, items, j), ran++) {
            int64_t k = item_in_order(nb, i + i0, nth, items, j), u = nb > 1 ? GRU_GROUPS * (k % UG) : item_group(nb, U, k);
            if (item_is_pair(nb, U, k)) {
                ISA(gru_row_pair)(H, u, xt_, xi ? xi + t * xit : 0, I, wi, bx, lens, i, w, wk, wg, wu, b_hn, hp, yt_, gt,
                                  hnt);
                continue;
            }
            int64_t bc = j / UG * chunk;
#ifdef WIDE
            if (u + 1 < U) {
                int64_t be = nb < bc + chunk ? nb : bc + chunk;
                /* si, sh: the item's first row block packs groups u and u + 1 into this thread's four
                 * panels at the start of the scratch (wi), for its other blocks (gru_tile2_pack) */
                const float *pwi = si ? wi + tid * 2 * (I + H) * 3 * VW : xi ? wi + u * I * 3 * VW : 0;
                const float *pw = si ? pwi + 2 * I * 3 * VW : w + u * wu;
                int64_t du = si ? H * 3 * VW : wu;
                for (int64_t b = bc; b < be; b += MR_GRU2) {
                    int64_t rem = be - b < MR_GRU2 ? be - b : MR_GRU2;
#define CALL(M) ISA(gru_rows2)(M, H, u, xt_ + b * xb, xb, xi ? xi + t * xit + b * xib : 0, xib, I, pwi, I * 3 * VW, \
                               bx, lens ? lens + b : 0, i, pw, wk, du, b_hn, hp + b * hs, hs, yt_ + b * yb, yb, \
                               gt ? gt + b * 3 * H : 0, hnt ? hnt + b * H : 0, b == bc && si ? si + u * VW : 0, \
                               b == bc && sh ? sh + u * VW : 0)
                    ROWS_SWITCH(MR_GRU2, rem, CALL)
#undef CALL
                }
                continue;
            }
#endif
            int64_t nu = group_units(H, u);
            int full = nu == VW || wu != VW;
            v8 bv[4];
            ISA(bias_vectors)(3, bx, H, u, nu, bv);
            if (!xi) ISA(prefetch_next)(3, x, xt, xb, T, i, reverse, H, nb, chunk, bc, u);
            int64_t be = nb < bc + chunk ? nb : bc + chunk, pair = last_row_pair(be - bc, MR_GRU, wu, U, u);
            int64_t bt = pair ? be - 1 : be;                                      /* rows in tiles */
            for (int64_t b = bc; b < bt; b += MR_GRU) {
                int64_t rem = bt - b < MR_GRU ? bt - b : MR_GRU;
#define ARGS(M, F) M, F, nu, H, u, xt_ + b * xb, xb, xi ? xi + t * xit + b * xib : 0, xib, I, \
                   xi ? wi + u * I * 3 * VW : 0, bv, lens ? lens + b : 0, i, w + u * wu, wk, wg, b_hn, \
                   hp + b * hs, hs, yt_ + b * yb, yb, \
                   gt ? gt + b * 3 * H : 0, hnt ? hnt + b * H : 0
#define CALL(M) if (full) ISA(gru_rows)(ARGS(M, 1)); else ISA(gru_rows)(ARGS(M, 0))
                ROWS_SWITCH(MR_GRU, rem, CALL)
#undef CALL
#undef ARGS
            }
            if (pair > 0) {
                int64_t r = be - 1;
                ISA(gru_row_pair)(H, u, xt_ ? xt_ + r * xb : 0, xi ? xi + t * xit + r * xib : 0, I, wi, bx,
                                  lens ? lens + r : 0, i, w, wk, wg, wu, b_hn, hp + r * hs, yt_ + r * yb,
                                  gt ? gt + r * 3 * H : 0, hnt ? hnt + r * H : 0);
            }
        }
        if (step_claims)
            step_done(step_claims + nth * CLAIM_STRIDE, ran + (prev_h && tid == 0) + hold,
                      items + (prev_h != 0) + (nb < B));
        hp = yt_; hs = yb;
    }
    if (tid != 0) return;
    __atomic_add_fetch(&row_steps_run, row_steps, __ATOMIC_RELAXED);
    if (hT && hT != hp) ISA(copy_rows)(B, H, hp, hs, hT);
}

#undef ROW_STEP

static void ISA(gru_forward)(int64_t T, int64_t B, int64_t H, int32_t reverse, const float *x, int64_t xt,
                             int64_t xb, const float *xi, int64_t xit, int64_t xib, int64_t I, const float *wi,
                             const float *bx, const int64_t *lens, const float *w, int64_t wk,
                             int64_t wg, int64_t wu, const float *b_hn,
                             const float *h0, float *y, int64_t yt, int64_t yb, float *hT, float *gates,
                             float *hn, float *prev_h, float *work, const float *si, const float *sh)
{
    int nth = threads_for(wu, T, B, H, 3, w);
    /* si, sh (or NULL): W_ih^T and W_hh^T as stored, to be packed into wi and w (a writable layer's
     * batched step, as lstm_forward's). Where each item owns a pair of unit groups over the whole
     * batch (gru_rows2), the item's first row block packs them as it reads them (gru_tile2_pack),
     * into four panels per thread at wi; otherwise they are packed here first. */
#ifdef WIDE
    int64_t U = (H + VW - 1) / VW;
    int on_use = si && T == 1 && B > 1 && U % 2 == 0 && chunk_rows(MR_GRU, B, H) >= B && nth <= U / 2;
#else
    int on_use = 0;
#endif
    pack_first_unless(on_use, 3, I, H, &si, &sh, wi, w);
    int64_t *claims = team_claims(T, &nth);                                   /* next_item */
    const int64_t i0 = first_step(T, B);
#define PART(tid, n) ISA(gru_forward_part)(tid, n, claims, T, i0, B, H, reverse, x, xt, xb, xi, xit, xib, I, wi, bx, lens, w, wk, \
                                           wg, wu, b_hn, h0, \
                   y, yt, yb, \
                                           hT, gates, hn, prev_h, work, si, sh)
    RUN_PARTS(nth, PART);
#undef PART
    free(claims);
}

/* -- Elman RNN forward: h' = act(x W_ih^T + b + h W_hh^T), act tanh or relu ------------------------ */
/* Its weights are read as panels of 32 units (mc_pack_panels: (ceil(H/32), K, 32), zero past H):
 * the tile's four vectors are a panel's four groups of 8 units, so the RNN runs the LSTM's 3 x 4
 * register tile (at one row, the pair tile's 8 chains) where one vector per unit group would keep
 * a quarter of the accumulators, each a chain waiting on the FMA latency. A panel is the RNN's
 * "unit group" for the items of a step (step_items, last_row_pair). */
#ifndef MC_PANEL
#define MC_PANEL 32                                                   /* units per panel: 4 vectors */
/* the units of piece g (0..3) of panel c that exist: 8, fewer in the last, 0 past H */
static inline int64_t piece_units(int64_t H, int64_t c, int g)
{
    int64_t n = H - c * MC_PANEL - g * VW;
    return n < 0 ? 0 : n < VW ? n : VW;
}
#endif

INL v8 ISA(rnn_act)(const int relu, v8 a)
{
    if (!relu) return ISA(vtanh)(a);
#ifdef __AVX__
    return __builtin_ia32_maxps256(ISA(splat)(0.0f), a);       /* max(0, a): NaN, the second operand, stays */
#else
    v8i neg = a < ISA(splat)(0.0f);                                          /* false for NaN: it stays */
    return (v8)(~neg & (v8i)a);
#endif
}

/* one row of panel c: h' from the pre-activations in acc, into y (and act, what BPTT reads), or
 * the state passed through unchanged when the row's sequence has ended (as `held`) */
INL void ISA(rnn_out)(const int relu, const v8 acc[4], int held, int64_t H, int64_t c, const float *hp, float *y,
                      float *act)
{
    for (int g = 0; g < 4; g++) {
        int64_t n = piece_units(H, c, g), o = c * MC_PANEL + g * VW;
        if (!n) break;
        if (held) { ISA(stn)(y + o, ISA(ldn)(hp + o, n), n); continue; }
        v8 v = ISA(rnn_act)(relu, acc[g]);
        ISA(stn)(y + o, v, n);
        if (act) ISA(stn)(act + o, v, n);
    }
}

/* the tile's starting registers for one row of panel c: the bias (raw input: the projection is
 * made in the tile next), else the given projection plus the bias */
INL void ISA(rnn_start)(const float *x, int raw, const float *bx, int64_t H, int64_t c, v8 acc[4])
{
    for (int g = 0; g < 4; g++) {
        int64_t n = piece_units(H, c, g), o = c * MC_PANEL + g * VW;
        v8 b = bx && n ? ISA(ldn)(bx + o, n) : ISA(splat)(0.0f);
        acc[g] = raw || !n ? b : ISA(ldn)(x + o, n) + b;
    }
}

/* mr rows of one step for panel c, whose panels are at wi (W_ih^T) and w (W_hh^T); raw: x holds
 * the input rows (I wide, the projection made here), else the projection. si, sh (or NULL): W_ih^T
 * and W_hh^T as stored at the panel's first column, which this block packs into wi and w as it
 * reads them (tile_wide_pack) */
INL void ISA(rnn_rows)(const int mr, const int relu, int64_t H, int64_t c, const float *x, int64_t xb, int raw,
                       int64_t I, const float *wi, const float *bx, const int64_t *lens, int64_t i, const float *w,
                       const float *hp, int64_t hs, float *y, int64_t yb, float *act, const float *si,
                       const float *sh)
{
    v8 acc[MRMAX][4];
    for (int m = 0; m < mr; m++) ISA(rnn_start)(x + m * xb, raw, bx, H, c, acc[m]);
#ifdef WIDE
    if (raw && si) ISA(tile_wide_pack_rows)(mr, I, x, xb, si, H, VW, VW, (float *)wi, acc); else
#endif
    if (raw) ISA(tile)(4, mr, 1, VW, I, x, xb, wi, MC_PANEL, VW, acc);
#ifdef WIDE
    if (sh) ISA(tile_wide_pack_rows)(mr, H, hp, hs, sh, H, VW, VW, (float *)w, acc); else
#endif
    ISA(tile)(4, mr, 1, VW, H, hp, hs, w, MC_PANEL, VW, acc);
    for (int m = 0; m < mr; m++)
        ISA(rnn_out)(relu, acc[m], lens && i >= lens[m], H, c, hp + m * hs, y + m * yb, act ? act + m * H : 0);
}

/* rnn_rows for one row and the panels c, c + 1, side by side (tile_row_pair) */
INL void ISA(rnn_row_pair)(const int relu, int64_t H, int64_t c, const float *x, int raw, int64_t I, const float *wi,
                           const float *bx, const int64_t *lens, int64_t i, const float *w, const float *hp, float *y,
                           float *act)
{
    v8 acc[2][4];
    for (int p = 0; p < 2; p++) ISA(rnn_start)(x, raw, bx, H, c + p, acc[p]);
    if (raw) ISA(tile_row_pair)(4, I, x, wi + c * I * MC_PANEL, MC_PANEL, VW, I * MC_PANEL, acc);
    ISA(tile_row_pair)(4, H, hp, w + c * H * MC_PANEL, MC_PANEL, VW, H * MC_PANEL, acc);
    for (int p = 0; p < 2; p++) ISA(rnn_out)(relu, acc[p], lens && i >= *lens, H, c + p, hp, y, act);
}

/* as lstm_forward_part, for the RNN: packed, the items of each step over panels; else W_hh^T (H, H)
 * as stored, streamed by rows into work (B, H) (one thread), then the activation */
static void ISA(rnn_forward_part)(int tid, int nth, int64_t *claims, int64_t T, int64_t i0, int64_t B, int64_t H,
                                  int64_t I,
                                  int32_t reverse, int relu, const float *x, int64_t xt, int64_t xb, const float *wi,
                                  const float *bx, const int64_t *lens, const float *w, int packed, const float *h0,
                                  float *y, int64_t yt, int64_t yb, float *hT, float *act, float *prev_h, float *work,
                                  const float *si, const float *sh)
{
    int64_t C = (H + MC_PANEL - 1) / MC_PANEL, U = (H + VW - 1) / VW;
    const float *hp = h0;
    int64_t hs = H;
    int raw = wi != 0, ranked = !act && packed && lens_ranked(lens, B);
    int64_t row_steps = 0;
    for (int64_t i = 0; i < T; i++) {
        int64_t t = reverse ? T - 1 - i : i;
        if (prev_h && tid == 0) ISA(copy_rows)(B, H, hp, hs, prev_h + t * B * H);          /* the state entering t */
        const float *xt_ = x + t * xt;
        float *yt_ = y + t * yt, *at = act ? act + t * B * H : 0;
        if (!packed) {
            ISA(axpy_product)(B, H, H, hp, hs, w, work);
            for (int64_t b = 0; b < B; b++)
                for (int64_t u = 0; u < U; u++) {
                    int64_t nu = group_units(H, u);
                    if (ISA(held)(lens ? lens + b : 0, i, nu, u, hp + b * hs, yt_ + b * yb, 0, 0)) continue;
                    v8 a = ISA(ldn)(work + b * H + u * VW, nu) + ISA(ldn)(xt_ + b * xb + u * VW, nu);
                    if (bx) a += ISA(ldn)(bx + u * VW, nu);
                    v8 v = ISA(rnn_act)(relu, a);
                    ISA(stn)(yt_ + b * yb + u * VW, v, nu);
                    if (at) ISA(stn)(at + b * H + u * VW, v, nu);
                }
            hp = yt_; hs = yb;
            continue;
        }
        int64_t nb = ISA(step_rows)(lens, ranked, B, i, tid, H, hp, hs, yt_, yb, 0, 0), hold = nb < B && tid == 0;
        row_steps += nb;
        int64_t chunk = chunk_rows(MR_LSTM, nb, H), items = step_items(nb, chunk, C);
        int64_t *step_claims = claims ? claims + i * (nth + 1) * CLAIM_STRIDE : 0, ran = 0;
        for (int64_t j = next_item(step_claims, tid, nth, items, -1); j < items;
             j = next_item(step_claims, tid, nth, items, j), ran++) {
            int64_t k = item_in_order(nb, i + i0, nth, items, j), c = item_group(nb, C, k);
            if (item_is_pair(nb, C, k)) {
                ISA(rnn_row_pair)(relu, H, c, xt_, raw, I, wi, bx, lens, i, w, hp, yt_, at);
                continue;
            }
            int64_t bc = j / C * chunk, be = nb < bc + chunk ? nb : bc + chunk;
            /* si, sh: the item's first row block packs panel c into this thread's two panels at the
             * start of the scratch (wi), for its other blocks: no pair then (as lstm_forward_part's) */
            int64_t pair = si ? 0 : last_row_pair(be - bc, MR_LSTM, MC_PANEL * H, C, c), bt = pair ? be - 1 : be;
            const float *pwi = si ? wi + tid * (I + H) * MC_PANEL : raw ? wi + c * I * MC_PANEL : 0;
            const float *pw = si ? pwi + I * MC_PANEL : w + c * H * MC_PANEL;
            for (int64_t b = bc; b < bt; b += MR_LSTM) {
                int64_t rem = bt - b < MR_LSTM ? bt - b : MR_LSTM;
#define CALL(M) ISA(rnn_rows)(M, relu, H, c, xt_ + b * xb, xb, raw, I, pwi, bx, lens ? lens + b : 0, i, pw, \
                              hp + b * hs, hs, yt_ + b * yb, yb, at ? at + b * H : 0, \
                              b == bc && si ? si + c * MC_PANEL : 0, b == bc && sh ? sh + c * MC_PANEL : 0)
                ROWS_SWITCH(MR_LSTM, rem, CALL)
#undef CALL
            }
            if (pair > 0) {
                int64_t r = be - 1;
                ISA(rnn_row_pair)(relu, H, c, xt_ + r * xb, raw, I, wi, bx, lens ? lens + r : 0, i, w, hp + r * hs,
                                  yt_ + r * yb, at ? at + r * H : 0);
            }
        }
        if (step_claims)
            step_done(step_claims + nth * CLAIM_STRIDE, ran + (prev_h && tid == 0) + hold,
                      items + (prev_h != 0) + (nb < B));
        hp = yt_; hs = yb;
    }
    if (tid != 0) return;
    __atomic_add_fetch(&row_steps_run, row_steps, __ATOMIC_RELAXED);
    if (hT && hT != hp) ISA(copy_rows)(B, H, hp, hs, hT);                   /* hT may be h0 itself (T = 0) */
}

static void ISA(rnn_forward)(int64_t T, int64_t B, int64_t H, int64_t I, int32_t reverse, int32_t relu,
                             const float *x, int64_t xt, int64_t xb, const float *wi, const float *bx,
                             const int64_t *lens, const float *w, int32_t packed, const float *h0, float *y,
                             int64_t yt, int64_t yb, float *hT, float *act, float *prev_h, float *work,
                             const float *si, const float *sh)
{
    int nth = threads_for(packed ? MC_PANEL * H : VW, T, B, H, 1, w);
    /* si, sh (or NULL): W_ih^T and W_hh^T as stored, to be packed into the panels at wi and w (a
     * writable layer's batched step, as lstm_forward's): by the tile as it first reads them where
     * each item owns a panel over the whole batch and every panel is whole, else here first */
#ifdef WIDE
    int64_t C = (H + MC_PANEL - 1) / MC_PANEL;
    int on_use = si && T == 1 && H % MC_PANEL == 0 && chunk_rows(MR_LSTM, B, H) >= B && nth <= C;
#else
    int on_use = 0;
#endif
    pack_first_unless(on_use, 1, I, H, &si, &sh, wi, w);
    int64_t *claims = team_claims(T, &nth);                                   /* next_item */
    const int r = relu != 0;
    const int64_t i0 = first_step(T, B);
#define PART(tid, n) ISA(rnn_forward_part)(tid, n, claims, T, i0, B, H, I, reverse, r, x, xt, xb, wi, bx, lens, w, packed, \
                                           h0, y, yt, yb, hT, act, prev_h, work, si, sh)
    RUN_PARTS(nth, PART);
#undef PART
    free(claims);
}

/* -- BPTT's product: out (B, H) (+)= a (B, N) @ W_hh, with W_hh^T = wt (H, N) read by rows ---------- */
INL void ISA(nt_rows)(const int mr, const int nk, int64_t N, const float *a, const float *wt, float *out,
                      int64_t H, int accumulate)
{
    v8 acc[MRMAX][4];
    for (int m = 0; m < mr; m++)
        for (int j = 0; j < nk; j++) acc[m][j] = ISA(splat)(0.0f);
    int64_t n8 = N & ~(int64_t)(VW - 1);
    for (int64_t n = 0; n < n8; n += VW) {
        v8 wv[4];
        for (int j = 0; j < nk; j++) wv[j] = ISA(ld)(wt + j * N + n);
        for (int m = 0; m < mr; m++) {
            v8 av = ISA(ld)(a + m * N + n);
            for (int j = 0; j < nk; j++) acc[m][j] += av * wv[j];
        }
    }
    for (int m = 0; m < mr; m++)
        for (int j = 0; j < nk; j++) {
            float s = ISA(hsum)(acc[m][j]);
            for (int64_t n = n8; n < N; n++) s += a[m * N + n] * wt[j * N + n];
            out[m * H + j] = accumulate ? out[m * H + j] + s : s;
        }
}

static void ISA(nt_product)(int64_t B, int64_t N, int64_t H, int64_t k0, int64_t k1, const float *a,
                            const float *wt, float *out, int accumulate)
{
    for (int64_t k = k0; k < k1; k += 4) {                     /* 4 rows of W_hh^T stay in L1 ... */
        int64_t nk = k1 - k < 4 ? k1 - k : 4;
        for (int64_t b = 0; b < B; b += MR_NT) {               /* ... while the row blocks of a stream by */
            int64_t rem = B - b < MR_NT ? B - b : MR_NT;
#define CALLK(M, NK) ISA(nt_rows)(M, NK, N, a + b * N, wt + k * N, out + b * H + k, H, accumulate)
#define CALL(M) switch (nk) { case 1: CALLK(M, 1); break; case 2: CALLK(M, 2); break; \
                              case 3: CALLK(M, 3); break; default: CALLK(M, 4); }
            ROWS_SWITCH(MR_NT, rem, CALL)
#undef CALL
#undef CALLK
        }
    }
}

/* BPTT's product from the forward's register tile: out (B, H) (+)= a (B, N) @ W_hh, with W_hh packed
 * by mc_pack_cols as (ceil(H/32), N, 4, 8): 32 output columns per panel, so the tile runs K = N
 * with the same 3 x 4 accumulators as the forward (the dot-product form above ends every output
 * in a horizontal sum: LSTM B=32, H=256 backward kernel 1.3x this one's time) */
INL void ISA(nt_tile_rows)(const int mr, int64_t N, int64_t H, const float *a, const float *w, float *out,
                           int64_t ncol, int accumulate)
{
    v8 acc[MRMAX][4];
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < 4; g++) acc[m][g] = ISA(splat)(0.0f);
    ISA(tile)(4, mr, 1, VW, N, a, N, w, 4 * VW, VW, acc);
    for (int m = 0; m < mr; m++)
        for (int g = 0; g < 4 && g * VW < ncol; g++) {
            int64_t n = ncol - g * VW < VW ? ncol - g * VW : VW;
            float *o = out + m * H + g * VW;
            ISA(stn)(o, accumulate ? acc[m][g] + ISA(ldn)(o, n) : acc[m][g], n);
        }
}

/* Thread `tid` of `nth`'s share of BPTT's product: with W_hh packed (wp), its panels of 32 columns
 * from the tile, else its columns in the dot-product form (wt, W_hh^T as stored: few rows) */
static void ISA(bptt_product)(int tid, int nth, int64_t B, int64_t N, int64_t H, const float *a, const float *wt,
                              const float *wp, float *out, int accumulate)
{
    if (!wp) {
        int64_t k0 = (H * tid / nth) & ~(int64_t)3, k1 = tid == nth - 1 ? H : (H * (tid + 1) / nth) & ~(int64_t)3;
        ISA(nt_product)(B, N, H, k0, k1, a, wt, out, accumulate);
        return;
    }
    int64_t C = (H + 31) / 32, c0 = C * tid / nth, c1 = C * (tid + 1) / nth;
    for (int64_t c = c0; c < c1; c++) {                       /* one panel (N x 32, in L2) ... */
        int64_t ncol = H - c * 32 < 32 ? H - c * 32 : 32;
        for (int64_t b = 0; b < B; b += MR_LSTM) {             /* ... for every row block of a */
            int64_t rem = B - b < MR_LSTM ? B - b : MR_LSTM;
#define CALL(M) ISA(nt_tile_rows)(M, N, H, a + b * N, wp + c * N * 32, out + b * H + c * 32, ncol, accumulate)
            ROWS_SWITCH(MR_LSTM, rem, CALL)
#undef CALL
        }
    }
}

/* -- LSTM backward: one step's gate gradients, then dh = dg @ W_hh ------------------------------- */
/* Thread `tid` of `nth` runs rows [b0, b1) of the gate gradients and columns [k0, k1) of the
 * product; a barrier after each, since each reads what all threads wrote */
static void ISA(lstm_backward_part)(int tid, int nth, int64_t T, int64_t B, int64_t H, int32_t reverse,
                                    const float *wt, const float *wp, const float *dy, int64_t dyt, int64_t dyb,
                                    const float *gates, const float *tanhc, const float *prev_c, float *dgx,
                                    float *work)
{
    float *__restrict dh = work, *__restrict dc = work + B * H;
    int64_t b0 = B * tid / nth, b1 = B * (tid + 1) / nth;
    for (int64_t s = 0; s < T; s++) {
        int64_t t = reverse ? s : T - 1 - s;                   /* the processing order, backwards */
        for (int64_t b = b0; b < b1; b++) {
            const float *__restrict a = gates + (t * B + b) * 4 * H;                 /* i, f, g, o */
            const float *__restrict tc = tanhc + (t * B + b) * H;
            const float *__restrict c = prev_c + (t * B + b) * H;
            const float *__restrict dyr = dy ? dy + t * dyt + b * dyb : 0;   /* NULL: no output gradient */
            float *__restrict d = dgx + (t * B + b) * 4 * H;
            float *__restrict dhb = dh + b * H, *__restrict dcb = dc + b * H;
            if (dy)
                for (int64_t j = 0; j < H; j++) dhb[j] += dyr[j];                    /* carried + output */
            for (int64_t j = 0; j < H; j++) {
                float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j], t_ = tc[j];
                float dhv = dhb[j];
                float dcv = dhv * o * (1.0f - t_ * t_) + dcb[j];     /* backprop h' = o*tanh(c') into c' */
                d[3 * H + j] = dhv * t_ * o * (1.0f - o);                              /* ... into o, through σ */
                d[j] = dcv * g * i * (1.0f - i);                     /* backprop c' = f*c + i*g: i through σ */
                d[H + j] = dcv * c[j] * f * (1.0f - f);                                /* f through σ */
                d[2 * H + j] = dcv * i * (1.0f - g * g);                               /* g through tanh */
                dcb[j] = dcv * f;                                                      /* dc_prev */
            }
        }
        BARRIER(nth);
        ISA(bptt_product)(tid, nth, B, 4 * H, H, dgx + t * B * 4 * H, wt, wp, dh, 0);     /* dh_prev = dg @ W_hh */
        BARRIER(nth);
    }
}

static void ISA(lstm_backward)(int64_t T, int64_t B, int64_t H, int32_t reverse, const float *wt, const float *dy,
                               int64_t dyt, int64_t dyb, const float *gates, const float *tanhc,
                               const float *prev_c, const float *dhT, const float *dcT, float *dgx, float *dh0,
                               float *dc0, float *work)
{
    memcpy(work, dhT, (size_t)(B * H) * sizeof(float));
    memcpy(work + B * H, dcT, (size_t)(B * H) * sizeof(float));
    int nth = threads_for(0, T, B, H, 4, 0);
    float *wp = bptt_weights(T, B, H, 4 * H, wt);
#define PART(tid, n) ISA(lstm_backward_part)(tid, n, T, B, H, reverse, wt, wp, dy, dyt, dyb, gates, tanhc, prev_c, \
                                             dgx, work)
    RUN_PARTS(nth, PART);
#undef PART
    free(wp);
    memcpy(dh0, work, (size_t)(B * H) * sizeof(float));
    memcpy(dc0, work + B * H, (size_t)(B * H) * sizeof(float));
}

/* -- GRU backward ------------------------------------------------------------------------------- */
static void ISA(gru_backward_part)(int tid, int nth, int64_t T, int64_t B, int64_t H, int32_t reverse,
                                   const float *wt, const float *wp, const float *dy, int64_t dyt, int64_t dyb,
                                   const float *gates, const float *hn, const float *prev_h, float *dgx, float *dgh,
                                   float *work)
{
    float *__restrict dh = work;
    int64_t b0 = B * tid / nth, b1 = B * (tid + 1) / nth;
    for (int64_t s = 0; s < T; s++) {
        int64_t t = reverse ? s : T - 1 - s;
        for (int64_t b = b0; b < b1; b++) {
            const float *__restrict a = gates + (t * B + b) * 3 * H;                 /* r, z, n */
            const float *__restrict hv = hn + (t * B + b) * H;
            const float *__restrict h = prev_h + (t * B + b) * H;
            const float *__restrict dyr = dy ? dy + t * dyt + b * dyb : 0;   /* NULL: no output gradient */
            float *__restrict dx = dgx + (t * B + b) * 3 * H, *__restrict dr = dgh + (t * B + b) * 3 * H;
            float *__restrict dhb = dh + b * H;
            if (dy)
                for (int64_t j = 0; j < H; j++) dhb[j] += dyr[j];
            for (int64_t j = 0; j < H; j++) {
                float r = a[j], z = a[H + j], n = a[2 * H + j];
                float dhv = dhb[j];
                float dn = dhv * (1.0f - z) * (1.0f - n * n);      /* backprop h' = (1-z)*n + z*h into n, tanh */
                float dz = dhv * (h[j] - n) * z * (1.0f - z);      /* ... into z, through σ */
                float drr = dn * hv[j] * r * (1.0f - r);           /* backprop r*hn into r, through σ */
                dhb[j] = dhv * z;                                  /* ... into h directly */
                dx[j] = drr; dx[H + j] = dz; dx[2 * H + j] = dn;
                dr[j] = drr; dr[H + j] = dz; dr[2 * H + j] = dn * r;   /* ... and into hn */
            }
        }
        BARRIER(nth);
        ISA(bptt_product)(tid, nth, B, 3 * H, H, dgh + t * B * 3 * H, wt, wp, dh, 1);     /* dh += dgh @ W_hh */
        BARRIER(nth);
    }
}

static void ISA(gru_backward)(int64_t T, int64_t B, int64_t H, int32_t reverse, const float *wt, const float *dy,
                              int64_t dyt, int64_t dyb, const float *gates, const float *hn, const float *prev_h,
                              const float *dhT, float *dgx, float *dgh, float *dh0, float *work)
{
    memcpy(work, dhT, (size_t)(B * H) * sizeof(float));
    int nth = threads_for(0, T, B, H, 3, 0);
    float *wp = bptt_weights(T, B, H, 3 * H, wt);
#define PART(tid, n) ISA(gru_backward_part)(tid, n, T, B, H, reverse, wt, wp, dy, dyt, dyb, gates, hn, prev_h, \
                                            dgx, dgh, work)
    RUN_PARTS(nth, PART);
#undef PART
    free(wp);
    memcpy(dh0, work, (size_t)(B * H) * sizeof(float));
}

/* -- RNN backward: dg = dh * act'(h') (from h' itself), then dh = dg @ W_hh ------------------------ */
static void ISA(rnn_backward_part)(int tid, int nth, int64_t T, int64_t B, int64_t H, int32_t reverse, int relu,
                                   const float *wt, const float *wp, const float *dy, int64_t dyt, int64_t dyb,
                                   const float *act, float *dgx, float *work)
{
    float *__restrict dh = work;
    int64_t b0 = B * tid / nth, b1 = B * (tid + 1) / nth;
    for (int64_t s = 0; s < T; s++) {
        int64_t t = reverse ? s : T - 1 - s;
        for (int64_t b = b0; b < b1; b++) {
            const float *__restrict a = act + (t * B + b) * H;
            const float *__restrict dyr = dy ? dy + t * dyt + b * dyb : 0;   /* NULL: no output gradient */
            float *__restrict d = dgx + (t * B + b) * H, *__restrict dhb = dh + b * H;
            if (dy)
                for (int64_t j = 0; j < H; j++) dhb[j] += dyr[j];                    /* carried + output */
            if (relu)
                for (int64_t j = 0; j < H; j++) d[j] = dhb[j] * (a[j] > 0.0f ? 1.0f : 0.0f);   /* [h' > 0] */
            else
                for (int64_t j = 0; j < H; j++) d[j] = dhb[j] * (1.0f - a[j] * a[j]);          /* 1 - h'^2 */
        }
        BARRIER(nth);
        ISA(bptt_product)(tid, nth, B, H, H, dgx + t * B * H, wt, wp, dh, 0);         /* dh_prev = dg @ W_hh */
        BARRIER(nth);
    }
}

static void ISA(rnn_backward)(int64_t T, int64_t B, int64_t H, int32_t reverse, int32_t relu, const float *wt,
                              const float *dy, int64_t dyt, int64_t dyb, const float *act, const float *dhT,
                              float *dgx, float *dh0, float *work)
{
    memcpy(work, dhT, (size_t)(B * H) * sizeof(float));
    int nth = threads_for(0, T, B, H, 1, 0);
    float *wp = bptt_weights(T, B, H, H, wt);
    const int r = relu != 0;
#define PART(tid, n) ISA(rnn_backward_part)(tid, n, T, B, H, reverse, r, wt, wp, dy, dyt, dyb, act, dgx, work)
    RUN_PARTS(nth, PART);
#undef PART
    free(wp);
    memcpy(dh0, work, (size_t)(B * H) * sizeof(float));
}

/* -- the machine's limit: 12 independent FMA chains (named, so they live in registers), enough
 * to keep both FMA pipes busy through their latency, in the widest vectors the tiles use (16 lanes
 * in the AVX-512 build). Returns the flops done; the sum lands in fma_sink. ------------------------ */
#ifdef WIDE
typedef v16 ISA(vpeak);
#define PEAK_REG "+v"
#else
typedef v8 ISA(vpeak);
#define PEAK_REG "+x"
#endif
static volatile float ISA(fma_sink);

static double ISA(fma_peak)(int64_t iters)
{
    const ISA(vpeak) one = {0}, m = one + 0.9999999f, c = one + 1e-7f;
    ISA(vpeak) a0 = one + 1.00f, a1 = one + 1.01f, a2 = one + 1.02f, a3 = one + 1.03f, a4 = one + 1.04f;
    ISA(vpeak) a5 = one + 1.05f, a6 = one + 1.06f, a7 = one + 1.07f, a8 = one + 1.08f, a9 = one + 1.09f;
    ISA(vpeak) a10 = one + 1.10f, a11 = one + 1.11f;
    for (int64_t it = 0; it < iters; it++) {
        a0 = a0 * m + c; a1 = a1 * m + c; a2 = a2 * m + c; a3 = a3 * m + c; a4 = a4 * m + c; a5 = a5 * m + c;
        a6 = a6 * m + c; a7 = a7 * m + c; a8 = a8 * m + c; a9 = a9 * m + c; a10 = a10 * m + c; a11 = a11 * m + c;
#ifdef __AVX__
        /* the compiler may not fold or shorten the chains */
        __asm__ volatile("" : PEAK_REG(a0), PEAK_REG(a1), PEAK_REG(a2), PEAK_REG(a3), PEAK_REG(a4), PEAK_REG(a5),
                              PEAK_REG(a6), PEAK_REG(a7), PEAK_REG(a8), PEAK_REG(a9), PEAK_REG(a10), PEAK_REG(a11));
#endif
    }
    ISA(vpeak) sum = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)) + ((a8 + a9) + (a10 + a11));
    float total = 0;
    for (size_t l = 0; l < sizeof sum / sizeof(float); l++) total += sum[l];
    ISA(fma_sink) = total;
    return (double)iters * 2 * 12 * (double)(sizeof sum / sizeof(float));
}
#undef PEAK_REG

/* -- the other limit: a loop that only reads n floats (a step's weights) `passes` times into 8
 * independent sums, in the same vectors, every other pass backwards (as one-row steps run,
 * item_in_order and first_step: a pass starts on what the one before ended on, still in cache). A
 * step at B=1 reads every weight once for 2 flops per 4 bytes, so this rate, not the FMA loop's,
 * bounds it. Returns the bytes read; the sum of what it read (passes times a's) lands in *sum, so
 * nothing is left out. --------------------------------------------------------------------------- */
static double ISA(read_peak)(const float *a, int64_t n, int64_t passes, float *sum)
{
    typedef float vpu __attribute__((vector_size(sizeof(ISA(vpeak))), aligned(4), may_alias));
    const int64_t L = (int64_t)(sizeof(ISA(vpeak)) / sizeof(float)), n8 = n - n % (8 * L);
    ISA(vpeak) s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0}, s7 = {0};
    float tail = 0;
#define READ8(q) do { s0 += *(const vpu *)(q); s1 += *(const vpu *)((q) + L); s2 += *(const vpu *)((q) + 2 * L); \
                     s3 += *(const vpu *)((q) + 3 * L); s4 += *(const vpu *)((q) + 4 * L); \
                     s5 += *(const vpu *)((q) + 5 * L); s6 += *(const vpu *)((q) + 6 * L); \
                     s7 += *(const vpu *)((q) + 7 * L); } while (0)
    for (int64_t p = 0; p < passes; p++) {
        if (p & 1)
            for (int64_t v = n8 - 8 * L; v >= 0; v -= 8 * L) READ8(a + v);
        else
            for (int64_t v = 0; v < n8; v += 8 * L) READ8(a + v);
        for (int64_t i = n8; i < n; i++) tail += a[i];
    }
#undef READ8
    ISA(vpeak) all = ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7));
    for (int64_t l = 0; l < L; l++) tail += all[l];
    *sum = tail;
    return (double)passes * (double)n * sizeof(float);
}

