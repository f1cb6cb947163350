/* LSTM and GRU inference over bfloat16 weights (float32 arithmetic), included by rnn_kernels.c once
 * per instruction set after rnn_kernels_body.h (whose types, ISA() names and gate functions it uses).
 *
 * Why: a one-row step reads every weight once for two flops, so its time is the weights' bytes over
 * what a core reads. At H=256, I=64 the LSTM's float32 weights are 1.25 MiB: past a Zen 4 core's
 * 1 MiB L2, and 11 us to read even from L2. In bfloat16 they are 0.63 MiB and stay in L2.
 *
 * Layout (native_bf16.pack's): [W_ih^T; W_hh^T] as one K = Ip + Hp rows (I and H each rounded up to
 * even, the extra rows zero), by blocks of 16 hidden units: (UB, K/2, G, 16) uint32 words, word =
 * bf16(row 2p) | bf16(row 2p + 1) << 16 of one gate's column. A word's low half becomes a float by
 * a shift and its high half by a mask: two integer ops for 2 x 16 weights. (vcvtph2ps, float16's
 * conversion, ran at one 16-lane convert per two cycles on Zen 4: an H=256 step's product in 11.7
 * us; this one in 7.2, the float32 weights' in 14.4, C harness.)
 *
 * The input and h sit side by side in a row buffer, v = [x_t (Ip), h_{t-1} (UB*16)], so one K loop
 * makes the input projection and the recurrent product (the GRU's n keeps its two sums apart). Even
 * rows sum into one accumulator and odd rows into another, added at the end, in every tile: a row's
 * bits depend neither on the batch it runs in, nor on the thread count, nor on AVX2 against AVX-512
 * (the portable build, without FMA, rounds each product). bias16: (UB, 4, 16), the cell's folded
 * biases (the GRU's fourth: b_hn), zero padded. */
#ifndef MC_BF16_TYPES
#define MC_BF16_TYPES
typedef uint32_t u8w __attribute__((vector_size(32), aligned(4), may_alias));
typedef uint32_t u16w __attribute__((vector_size(64), aligned(4), may_alias));
#define BF_BLOCK 16                                  /* hidden units per block of the layout */
#define BF_SLOTS 4                                   /* accumulators a row: LSTM i f g o; GRU r z, n's input and hidden sums */
/* A step's work items on a team: row chunks of BF_TEAM_CHUNK rows x nth parts of the unit blocks,
 * thread o's share part o (its weights stay in its L2), which it runs first; one thread: one item.
 * Against 2 or 4 parts a thread and chunks of 8 or 32 (in-process A/B, 2 threads): level within
 * the noise, 32 rows up to 1.05x. */
#define BF_TEAM_CHUNK 16
/* the layout's sizes for H units and I inputs: UB blocks; Ip: I rounded up to even (H too, in KP); KPx
 * input row pairs of KP; HB = UB * BF_BLOCK; vs: floats a row of v, [x_t (Ip), h (HB)] */
typedef struct { int64_t UB, Ip, KPx, KP, HB, vs; } bf16_dims_t;
static inline bf16_dims_t bf16_dims(int64_t H, int64_t I)
{
    bf16_dims_t d;
    d.UB = (H + BF_BLOCK - 1) / BF_BLOCK;
    d.Ip = (I + 1) & ~(int64_t)1;
    d.KPx = d.Ip / 2;
    d.KP = (d.Ip + ((H + 1) & ~(int64_t)1)) / 2;
    d.HB = d.UB * BF_BLOCK;
    d.vs = d.Ip + d.HB;
    return d;
}
#endif

#ifdef WIDE
#define BV v16
#define BVU v16u
#define BVW u16w
#define BLANES 16
#define BSIG(v) ISA(vsigmoid16)(v)
#define BTANH(v) ISA(vtanh16)(v)
#define BF_MR 2                                      /* rows a tile: 2 x 4 gates x 2 sums = 16 of 32 registers */
#else
#define BV v8
#define BVU v8u
#define BVW u8w
#define BLANES 8
#define BSIG(v) ISA(vsigmoid)(v)
#define BTANH(v) ISA(vtanh)(v)
#define BF_MR 2                                      /* 2 rows x a block's 2 halves x 1 gate x 2 sums: 8 of 16 registers */
#endif

INL BV ISA(bf_even)(BVW w) { return (BV)(w << 16); }
INL BV ISA(bf_odd)(BVW w) { return (BV)(w & 0xffff0000u); }

/* One row's gates and state update on BLANES lanes (n of them exist) from pre, its sums plus biases;
 * or, where its sequence has ended (!run), h passed through and y zero. LSTM (G = 4): c updated in
 * place; GRU: pre[3] = h W_hn + b_hn. hp: h; hn: h'; y: h' (NULL: none) */
INL void ISA(bf_row_out)(const int G, BV pre[BF_SLOTS], int run, float *c, const float *hp, float *hn, float *y,
                         int64_t n)
{
    if (!run) {
        memcpy(hn, hp, (size_t)n * sizeof(float));
        if (y) memset(y, 0, (size_t)n * sizeof(float));
        return;
    }
    BV h;
    if (G == 4) {                                                 /* lstm_gates' */
        BV i = BSIG(pre[0]), f = BSIG(pre[1]), gg = BTANH(pre[2]), o = BSIG(pre[3]);
        BV cn = f * (BV)*(const BVU *)c + i * gg;
        h = o * BTANH(cn);
        *(BVU *)c = cn;                            /* c and the h region: padded to whole blocks */
    } else {                                                      /* gru_gates' */
        BV rr = BSIG(pre[0]), z = BSIG(pre[1]), nn = BTANH(pre[2] + rr * pre[3]);
        h = nn + z * ((BV)*(const BVU *)hp - nn);
    }
    *(BVU *)hn = h;
    if (y) {
        if (n == BLANES) { *(BVU *)y = h; }
        else memcpy(y, &h, (size_t)n * sizeof(float));
    }
}

#ifdef WIDE
/* the sums of mr rows over row pairs p0 .. p1 - 1, gate g into accumulator g, but the GRU's n (g = 2)
 * into `n_slot`: 2 for its input rows, 3 for its hidden rows (r * (h W_hn + b_hn) needs them apart) */
INL void ISA(bf_sums)(const int G, const int mr, const int n_slot, int64_t p0, int64_t p1, const uint32_t *w,
                      const float *v, int64_t vs, BV ev[BF_MR][BF_SLOTS], BV od[BF_MR][BF_SLOTS])
{
    for (int64_t p = p0; p < p1; p++) {
        const uint32_t *q = w + p * BF_BLOCK * G;
        BVW wg[BF_SLOTS];
        for (int g = 0; g < G; g++) wg[g] = *(const BVW *)(q + g * BF_BLOCK);
        for (int r = 0; r < mr; r++) {
            float a = v[r * vs + 2 * p], b = v[r * vs + 2 * p + 1];
            for (int g = 0; g < G; g++) {
                int s = g == 2 ? n_slot : g;
                ev[r][s] += ISA(bf_even)(wg[g]) * a;
                od[r][s] += ISA(bf_odd)(wg[g]) * b;
            }
        }
    }
}

/* mr rows (of v, vs floats apart) x the G gates of one block's units (w: their words of row pair 0,
 * the next pair BF_BLOCK * G words on; KPx pairs of input rows, then hidden ones to KP); then each
 * row's bf_row_out (run: which rows still run). c: rows cs apart; hp, hn: rows vs apart; y: rows yb
 * apart. n: the lanes that exist (< BF_BLOCK only in the last block) */
INL void ISA(bf_tile)(const int G, const int mr, int64_t KPx, int64_t KP, const uint32_t *w, const float *bias,
                      const float *v, int64_t vs, const int *run, float *c, int64_t cs, const float *hp, float *hn,
                      float *y, int64_t yb, int64_t n)
{
    BV ev[BF_MR][BF_SLOTS], od[BF_MR][BF_SLOTS], zero = {0};
    for (int r = 0; r < mr; r++)
        for (int g = 0; g < BF_SLOTS; g++) ev[r][g] = od[r][g] = zero;
    ISA(bf_sums)(G, mr, 2, 0, KPx, w, v, vs, ev, od);
    ISA(bf_sums)(G, mr, G == 4 ? 2 : 3, KPx, KP, w, v, vs, ev, od);
    for (int r = 0; r < mr; r++) {
        BV pre[BF_SLOTS];
        for (int g = 0; g < BF_SLOTS; g++) pre[g] = ev[r][g] + od[r][g] + (BV)*(const BVU *)(bias + g * BF_BLOCK);
        ISA(bf_row_out)(G, pre, run[r], c + r * cs, hp + r * vs, hn + r * vs, y ? y + r * yb : 0, n);
    }
}
#else
/* 8 lanes (AVX2, and the portable build): mr rows x a block's two halves at once, over gates g0 ..
 * g0 + ng - 1 (ng * mr <= 2; gate g0 + k of row r into ev[k * mr + r], od[...]). A row pair's 64-byte
 * line holds one gate's 16 words, so a pass reads each of its lines whole, and each word widened
 * serves mr rows. (Half a block at a time over all its gates, one row a tile, read every line
 * twice, the second time from L2 once the block outgrew L1, and widened each word for one row:
 * LSTM B=32 ran 1.9x the float32 time, a B=1 step 0.91x, AVX2 build on Zen 4.) */
INL void ISA(bf_sums2)(const int G, const int mr, const int g0, const int ng, int64_t p0, int64_t p1,
                       const uint32_t *w, const float *v, int64_t vs, BV (*ev)[2], BV (*od)[2])
{
    for (int64_t p = p0; p < p1; p++) {
        const uint32_t *q = w + p * BF_BLOCK * G + g0 * BF_BLOCK;
        float a[BF_MR], b[BF_MR];
        for (int r = 0; r < mr; r++) a[r] = v[r * vs + 2 * p], b[r] = v[r * vs + 2 * p + 1];
        for (int k = 0; k < ng; k++)
            for (int l = 0; l < 2; l++) {
                BVW wg = *(const BVW *)(q + k * BF_BLOCK + l * BLANES);
                BV e = ISA(bf_even)(wg), o = ISA(bf_odd)(wg);
                for (int r = 0; r < mr; r++) {
                    ev[k * mr + r][l] += e * a[r];
                    od[k * mr + r][l] += o * b[r];
                }
            }
    }
}

/* bf_tile's on 8 lanes: the sums in passes of 2 / mr slots (gates; the GRU's n as its input and then
 * its hidden sums), each accumulator over the row pairs in order as the wide tile's: the same bits.
 * Two slots a pass for one row keep 8 FMA chains going (one a pass: 4, at their latency). */
INL void ISA(bf_tile)(const int G, const int mr, int64_t KPx, int64_t KP, const uint32_t *w, const float *bias,
                      const float *v, int64_t vs, const int *run, float *c, int64_t cs, const float *hp, float *hn,
                      float *y, int64_t yb, int64_t n)
{
    const int ns = 2 / mr;                                                   /* slots a pass */
    BV pre[BF_MR][2][BF_SLOTS], zero = {0};                                  /* [row][half][slot] */
    for (int s0 = 0; s0 < BF_SLOTS; s0 += ns) {
        BV ev[2][2] = {{zero, zero}, {zero, zero}}, od[2][2] = {{zero, zero}, {zero, zero}};
        if (G == 4 || s0 < 2) ISA(bf_sums2)(G, mr, s0, ns, 0, KP, w, v, vs, ev, od);         /* whole gates */
        else
            for (int k = 0; k < ns; k++) {                      /* the GRU's n: slot 2 its input sums, 3 its hidden */
                int in = s0 + k == 2;
                ISA(bf_sums2)(G, mr, 2, 1, in ? 0 : KPx, in ? KPx : KP, w, v, vs, ev + k * mr, od + k * mr);
            }
        for (int k = 0; k < ns; k++)
            for (int r = 0; r < mr; r++)
                for (int l = 0; l < 2; l++)
                    pre[r][l][s0 + k] = ev[k * mr + r][l] + od[k * mr + r][l] +
                                        (BV)*(const BVU *)(bias + (s0 + k) * BF_BLOCK + l * BLANES);
    }
    for (int r = 0; r < mr; r++)
        for (int l = 0; l < 2 && l * BLANES < n; l++)
            ISA(bf_row_out)(G, pre[r][l], run[r], c + r * cs + l * BLANES, hp + r * vs + l * BLANES,
                            hn + r * vs + l * BLANES, y ? y + r * yb + l * BLANES : 0,
                            n - l * BLANES < BLANES ? n - l * BLANES : BLANES);
}
#endif

/* Rows [b0, b1) of the step at time t for unit blocks [u0, u1) (a work item), row pairs outer so that
 * a pair's v stays in L1 across the blocks: each BF_MR rows' tiles, or, where all of them have ended
 * (a ragged batch's tail, ranked longest first by the ONNX nodes), the state passed through with no
 * sums. (Blocks outer re-read v from L2: 1.01-1.04x the time at 1 thread, in-process A/B.) */
INL void ISA(bf16_item)(const int G, int64_t H, int64_t KPx, int64_t KP, int64_t Ip, int64_t vs, int64_t u0, int64_t u1,
                        int64_t b0, int64_t b1, int64_t t, const int64_t *lens, const uint32_t *w,
                        const float *bias16, const float *vc, float *vn, float *c, float *y, int64_t yt, int64_t yb)
{
    const int64_t HB = vs - Ip, a0 = u0 * BF_BLOCK, a1 = u1 * BF_BLOCK < H ? u1 * BF_BLOCK : H;
    for (int64_t b = b0; b < b1; b += BF_MR) {
        int m = b1 - b < BF_MR ? (int)(b1 - b) : BF_MR, run[BF_MR] = {0}, any = 0;
        for (int r = 0; r < m; r++) any |= run[r] = !lens || t < lens[b + r];
        if (!any) {
            for (int r = 0; r < m; r++) {
                memcpy(vn + (b + r) * vs + Ip + a0, vc + (b + r) * vs + Ip + a0, (size_t)(a1 - a0) * sizeof(float));
                if (y) memset(y + t * yt + (b + r) * yb + a0, 0, (size_t)(a1 - a0) * sizeof(float));
            }
            continue;
        }
        for (int64_t u = u0; u < u1; u++) {
            int64_t a = u * BF_BLOCK, nl = H - a < BF_BLOCK ? H - a : BF_BLOCK;
            const uint32_t *wu = w + u * KP * BF_BLOCK * G;
            const float *bu = bias16 + u * BF_BLOCK * BF_SLOTS;
            float *yo = y ? y + t * yt + b * yb + a : 0;
#define TILE(g, mr) ISA(bf_tile)(g, mr, KPx, KP, wu, bu, vc + b * vs, vs, run, c + b * HB + a, HB, \
                                 vc + b * vs + Ip + a, vn + b * vs + Ip + a, yo, yb, nl)
            if (G == 4) { if (m == BF_MR) TILE(4, BF_MR); else TILE(4, 1); }
            else { if (m == BF_MR) TILE(3, BF_MR); else TILE(3, 1); }
#undef TILE
        }
    }
}

/* Thread tid of nth: the items of each step it claims (next_item; BF_TEAM_CHUNK's), thread 0 also
 * the next step's input rows, then the wait for all of the step's work (step_done), as the float32
 * kernels do. A static split of the blocks with an omp barrier a step left a thread waiting whenever
 * the host slowed the other's core (GRU B=64, 2 threads: 9.5% of the samples in the barrier's
 * spin). In-process A/B, 2 threads, H=256, median of 21: GRU B=16-256 0.89-0.93x the time, B=1
 * 0.95; LSTM B=256 0.94, B=1-64 level (0.97-1.02); 1 thread level (0.96-1.02). */
static void ISA(forward_bf16_part)(int tid, int nth, int64_t *claims, const int G, int64_t T, int64_t B, int64_t H,
                                   int64_t I, int32_t reverse, const float *x, int64_t xt, int64_t xb,
                                   const uint32_t *w, const float *bias16, const int64_t *lens, float *y, int64_t yt,
                                   int64_t yb, float *work)
{
    const bf16_dims_t d = bf16_dims(H, I);
    const int64_t UB = d.UB, Ip = d.Ip, KPx = d.KPx, KP = d.KP, vs = d.vs;
    const int64_t S = nth < UB ? nth : UB, chunk = nth > 1 ? BF_TEAM_CHUNK : B, nc = (B + chunk - 1) / chunk,
                  items = nc * S;
    float *v[2] = {work, work + B * vs}, *c = work + 2 * B * vs;
    for (int64_t s = 0; s < T; s++) {
        int64_t t = reverse ? T - 1 - s : s, ran = 0, copy = s + 1 < T;
        const float *vc = v[s & 1];
        float *vn = v[(s + 1) & 1];
        if (tid == 0 && copy) {          /* vn's input rows: read by step s + 1 only, written here by no item */
            int64_t tn = reverse ? t - 1 : t + 1;
            for (int64_t b = 0; b < B; b++) memcpy(vn + b * vs, x + tn * xt + b * xb, (size_t)I * sizeof(float));
        }
        int64_t *step_claims = claims ? claims + s * (nth + 1) * CLAIM_STRIDE : 0;
        for (int64_t j = next_item(step_claims, tid, nth, items, -1); j < items;
             j = next_item(step_claims, tid, nth, items, j), ran++) {
            int64_t p = j / nc, b0 = j % nc * chunk, b1 = b0 + chunk < B ? b0 + chunk : B;
            ISA(bf16_item)(G, H, KPx, KP, Ip, vs, UB * p / S, UB * (p + 1) / S, b0, b1, t, lens, w, bias16, vc, vn, c,
                           y, yt, yb);
        }
        if (step_claims) step_done(step_claims + nth * CLAIM_STRIDE, ran + (tid == 0 && copy), items + copy);
    }
}

/* One direction of T steps from the raw input x (T, B, I) (rows xt / xb floats apart) over the
 * packed bf16 weights of G gates (4 LSTM, 3 GRU); lens (B,) or NULL as mc_lstm_forward's; h0 (B, H),
 * and c0 for the LSTM; y (T, B, H) rows yt / yb apart, or NULL; hT, and cT for the LSTM (B, H) out.
 * work: 2 * B * vs + B * UB * 16 floats, on a cache line (vs = Ip + UB * 16). */
static void ISA(forward_bf16)(const int G, int64_t T, int64_t B, int64_t H, int64_t I, int32_t reverse,
                              const float *x, int64_t xt, int64_t xb, const uint32_t *w, const float *bias16,
                              const int64_t *lens, const float *h0, const float *c0, float *y, int64_t yt, int64_t yb,
                              float *hT, float *cT, float *work, int nth)
{
    const bf16_dims_t d = bf16_dims(H, I);
    const int64_t Ip = d.Ip, HB = d.HB, vs = d.vs;
    float *v0 = work, *c = work + 2 * B * vs;
    memset(work, 0, (size_t)(2 * B * vs + B * HB) * sizeof(float));      /* padding lanes: zero for good */
    for (int64_t b = 0; b < B; b++) {
        memcpy(v0 + b * vs + Ip, h0 + b * H, (size_t)H * sizeof(float));
        if (G == 4) memcpy(c + b * HB, c0 + b * H, (size_t)H * sizeof(float));
        if (T > 0) memcpy(v0 + b * vs, x + (reverse ? T - 1 : 0) * xt + b * xb, (size_t)I * sizeof(float));
    }
    int64_t *claims = team_claims(T, &nth);                                   /* next_item */
#define PART(tid, nt) ISA(forward_bf16_part)(tid, nt, claims, G, T, B, H, I, reverse, x, xt, xb, w, bias16, lens, y, yt, \
                                             yb, work)
    RUN_PARTS(nth, PART);
#undef PART
    free(claims);
    const float *hl = work + (T & 1) * B * vs;
    for (int64_t b = 0; b < B; b++) {
        memcpy(hT + b * H, hl + b * vs + Ip, (size_t)H * sizeof(float));
        if (G == 4) memcpy(cT + b * H, c + b * HB, (size_t)H * sizeof(float));
    }
}

#undef BV
#undef BVU
#undef BVW
#undef BLANES
#undef BSIG
#undef BTANH
#undef BF_MR
