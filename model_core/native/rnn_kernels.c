/* The recurrent time loop in compiled code: LSTM and GRU, forward and BPTT, float32, one thread.
 *
 * Loaded with ctypes by model_core/native/__init__.py (no Python API here), so one C file serves
 * every Python version. Built by setup.py at install (optional: without a compiler the engine
 * runs its NumPy/Numba cells), or by the loader into a cache directory when a compiler is present.
 *
 * Why it is faster than a BLAS call per step:
 *  - the recurrent weights are read in a layout chosen for this loop: "packed" puts, per group of
 *    8 hidden units, the G gates' 8 columns of each row k side by side (U, H, G, 8), so one
 *    register tile covers every gate of 8 units and a whole group is one contiguous stream;
 *  - the tile's accumulators stay in registers over the whole K loop (MR rows x G vectors), then
 *    the gates, the state update and h' are computed from those registers: the gate buffer is
 *    never written and read back, and nothing is packed per step;
 *  - the whole sequence is one call: no per-step Python, no per-step BLAS dispatch.
 * BPTT's product dh = dg @ W_hh runs from the same register tile over W_hh packed by 32-column
 * panels (mc_pack_cols, per call), or for a few rows a step in a dot-product form over the rows
 * of W_hh^T as stored.
 *
 * Vectors are GCC vector extensions (8 floats); each kernel is compiled three times (AVX-512,
 * AVX2+FMA, baseline) and dispatched once at load by __builtin_cpu_supports. The AVX-512 build's
 * tiles hold two gates of a unit group per 16-lane register (tile_wide): the same layout, the same
 * bits. The baseline build is portable C (SSE2 pairs on x86, NEON on ARM).
 *
 * The forward can also take the raw input (mc_lstm_forward_fused, mc_gru_forward_fused): each
 * tile starts from the bias and runs over the step's input rows against W_ih^T packed like W_hh^T
 * before the recurrent product, so the input projection never exists as an array (inference and
 * the training forward, with the packed layout).
 *
 * Forward takes x's projection without the biases when bx (G*H,) is given (the gate epilogue adds
 * it: no separate pass over the (T, B, G*H) projection) or with them when bx is NULL, and, for
 * inference on ragged batches, lens (B,) (NULL: every row runs all T steps): from processing step
 * lens[b] on, row b's state passes through unchanged, so a ragged batch is one call too; with lens
 * ranked longest first a step computes only the rows still running (running_rows).
 *
 * Work buffers: LSTM forward 6*B*H floats, GRU forward 3*B*H, backward 2*B*H / B*H; a NULL work
 * in forward is allocated here (the streaming step's case: one malloc beats a NumPy allocation).
 *
 * Shapes: B batch, H hidden, G gates (4 LSTM i,f,g,o; 3 GRU r,z,n), U = ceil(H/8) unit groups.
 * Weights are described by three strides (in floats): wk between rows k, wg between gates, wu
 * between unit groups. Packed: (wk, wg, wu) = (8G, 8, 8GH), read by the register tile. W_hh^T as
 * the layer stores it, (H, GH) C-contiguous: (GH, H, 8) (wu == 8 marks it), read row by row
 * (axpy_product) for small batches, where packing would cost more than it saves.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define VW 8                                   /* floats per vector */

/* Threads: 1 unless mc_set_threads asks for more (model_core.set_num_threads). A sequence is split
 * across threads by unit groups (forward) or rows and columns (BPTT), with a wait per step (the
 * forward's step_done, BPTT's barrier), so it pays only when a step has enough work (threads_for).
 * Without OpenMP (a compiler lacking -fopenmp) everything runs on one thread. */
#ifdef _OPENMP
#include <omp.h>
#define BARRIER(nth) do { if ((nth) > 1) { _Pragma("omp barrier") } } while (0)
#define RUN_PARTS(nth, PART) do { if ((nth) > 1) { \
        _Pragma("omp parallel num_threads(nth)") PART(omp_get_thread_num(), omp_get_num_threads()); \
    } else PART(0, 1); } while (0)
#else
#define BARRIER(nth) ((void)(nth))
#define RUN_PARTS(nth, PART) PART(0, 1)
#endif
#define MIN_WEIGHTS (128 * 1024)               /* floats: 512 KiB, a Zen 3 core's L2 */
static int mc_threads = 1;

/* The threads for a recurrent call: the team once a step's recurrent product has TEAM_MIN_MACS
 * multiply-adds (B*G*H*H), twice that for a single step (T = 1), which also starts the team. Below
 * it a step's share is shorter than the wait that ends it (~1 us a step here). Measured on the quiet
 * 2-core VM, 2 threads against 1, in-process A/B, median of 10 (2026-12-03): sequences LSTM H=128
 * B=1-4 0.56-0.73x the time, H=64 B=4-8 0.60-0.71, H=32 B=16-32 0.59-0.67, GRU H=128 B=2-4 0.59-0.60;
 * forward+backward H=128 B=1-4 0.66-0.74, H=64 B=8 0.78, H=32 B=16 0.90; single steps LSTM H=256
 * B=1 0.77 (33.6 -> 26.3 us), B=8 0.63, H=128 B=2-4 0.82-0.90, H=64 B=16 0.91, GRU H=256 B=1 0.80;
 * and below it H=32 B=1-8 1.21-1.63x, H=16 1.50-1.80. (The rule it replaced, B*H >= 2048 or weights
 * past L2, a step from B*H >= 16384, left those gains on one thread.) While the host took the other
 * core now and then, the same sequences ran 0.92-1.15x: a team pays when its second core is there. */
#define TEAM_MIN_MACS 65536
/* Can a call of B rows read W_hh^T (w, as stored) in the row form (gru_row_chunk, lstm_row_chunk)?
 * The kernels then do. One LSTM or GRU row, H a multiple of 16 (whole vectors in every build),
 * W_hh^T within 1 MiB, which stays in L2 from step to step (at H=512, 3 MiB from L3, the form ran
 * 1.7x the packed tile's time, C harness), and w on a cache line: its rows are whole lines apart,
 * and 16 bytes past one every 64-byte load spans two (a B=1 step 8.7 us against 5.3, in-process).
 * Which layout a call passes is native_weights.reads_row_form's choice. */
#define ROW_FORM_MAX_FLOATS (256 * 1024)
int32_t mc_row_form(int64_t B, int64_t H, int64_t G, const float *w)
{
    return B == 1 && (G == 3 || G == 4) && H > 0 && H % 16 == 0 && G * H * H <= ROW_FORM_MAX_FLOATS &&
           !((uintptr_t)w & 63);
}

static int threads_for(int64_t wu, int64_t T, int64_t B, int64_t H, int64_t G, const float *w)
{
    if (mc_threads <= 1 || (wu == VW && !mc_row_form(B, H, G, w))) return 1;      /* unpacked: serial */
    return B * G * H * H >= (T < 2 ? 2 * TEAM_MIN_MACS : TEAM_MIN_MACS) ? mc_threads : 1;
}

/* the thread count for later calls (1 = serial); returns what this build can use */
int32_t mc_set_threads(int32_t n)
{
#ifdef _OPENMP
    mc_threads = n < 1 ? 1 : n;
#else
    (void)n;
    mc_threads = 1;
#endif
    return mc_threads;
}

/* OpenBLAS's parallel jobs, run on this library's OpenMP team (openblas_set_threads_callback_function,
 * OpenBLAS >= 0.3.27; model_core.threads installs it when the engine runs more than one thread).
 * With two pools on two cores, OpenBLAS's workers spin for a while after every product and took
 * the core from the kernels' team that ran next, and the reverse: a training step at 2 threads
 * was slower than at 1 (LSTM B=32 BPTT kernel 44 ms against 31; with OpenBLAS's spin cut short,
 * 20). One team serves both. `job` is OpenBLAS's, called once per job with the thread's index. */
typedef void (*blas_job_t)(int, void *, int);
static int64_t blas_team_calls;                          /* products run here: what the tests check */

int64_t mc_blas_team_calls(void) { return __atomic_load_n(&blas_team_calls, __ATOMIC_RELAXED); }

static int64_t team_forwards;                            /* forward calls split across the team: for the tests */

int64_t mc_team_forwards(void) { return __atomic_load_n(&team_forwards, __ATOMIC_RELAXED); }
static int64_t team_projections;                         /* mc_project calls split across the team: for the tests */
int64_t mc_team_projections(void) { return __atomic_load_n(&team_projections, __ATOMIC_RELAXED); }

static int64_t row_steps_run;               /* rows the packed forward steps ran, summed: for the tests */

int64_t mc_row_steps_run(void) { return __atomic_load_n(&row_steps_run, __ATOMIC_RELAXED); }

static int64_t one_row_steps;               /* calls of one step of one row (first_step): their parity */

int64_t mc_one_row_steps(void) { return __atomic_load_n(&one_row_steps, __ATOMIC_RELAXED); }

void mc_blas_team(int sync, blas_job_t job, int n, size_t size, void *jobs, int data)
{
    (void)sync;                                          /* OpenBLAS asks for a synchronous run: so it is */
    __atomic_add_fetch(&blas_team_calls, 1, __ATOMIC_RELAXED);
#ifdef _OPENMP
    if (n > 1) {
#pragma omp parallel for num_threads(n) schedule(static, 1)
        for (int i = 0; i < n; i++) job(omp_get_thread_num(), (char *)jobs + (size_t)i * size, data);
        return;
    }
#endif
    for (int i = 0; i < n; i++) job(0, (char *)jobs + (size_t)i * size, data);
}

#define STR2(x) #x
#define STR(x) STR2(x)

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define MULTI_ISA 1
#endif

/* W_hh^T (H, N) C-contiguous -> (ceil(H/32), N, 32): panel c holds W_hh's columns c*32 .. c*32+31
 * (rows c*32 .. of W_hh^T), each row n of the panel one contiguous run of 32, zero past H; BPTT's
 * register tile reads it as (N, 4, 8). Blocks of 8 x 32 (1 KiB) keep the transpose in L1. */
void mc_pack_cols(int64_t H, int64_t N, const float *wt, float *out)
{
    int64_t C = (H + 31) / 32;
    for (int64_t c = 0; c < C; c++)
        for (int64_t n0 = 0; n0 < N; n0 += 8) {
            int64_t nn = N - n0 < 8 ? N - n0 : 8;
            float *d = out + (c * N + n0) * 32;
            for (int64_t j = 0; j < 32; j++) {
                int64_t r = c * 32 + j;
                const float *src = wt + r * N + n0;
                for (int64_t n = 0; n < nn; n++) d[n * 32 + j] = r < H ? src[n] : 0.0f;
            }
        }
}

void mc_pack_rows(int64_t K_, int64_t H, int64_t G, const float *wt, float *out);   /* below */
void mc_pack_panels(int64_t K_, int64_t H, const float *wt, float *out);             /* below */

/* A batched step's W_ih^T and W_hh^T as stored (si, sh, or NULL; G gates, G = 1 the RNN's panels),
 * packed into wi and w here unless its tile packs them as it first reads them (on_use:
 * tile_wide_pack, gru_tile2_pack): then NULL, for the tiles to read wi and w */
static void pack_first_unless(int on_use, int64_t G, int64_t I, int64_t H, const float **si, const float **sh,
                              const float *wi, const float *w)
{
    if (!*sh || on_use) return;
    if (G == 1) {
        if (*si) mc_pack_panels(I, H, *si, (float *)wi);
        mc_pack_panels(H, H, *sh, (float *)w);
    } else {
        if (*si) mc_pack_rows(I, H, G, *si, (float *)wi);
        mc_pack_rows(H, H, G, *sh, (float *)w);
    }
    *si = *sh = 0;
}

/* float buffers that start on a cache line: malloc puts large blocks 16 bytes past one, where half of
 * the kernels' 32-byte vector loads and stores span two lines (LSTM forward, B=32: 1.2x the time
 * with the packed weights or the c buffer there, in-process A/B). free() releases them. */
static float *alloc_floats(size_t n)
{
    void *p = 0;
    return posix_memalign(&p, 64, n * sizeof(float)) ? 0 : p;
}

/* BPTT's W_hh packed for the register tile (mc_pack_cols), or NULL: few rows a step, where the
 * dot-product form over W_hh^T as stored costs less than packing (1 MiB at H=256: ~2 products),
 * or no memory (the dot-product form then runs: slower, the same result up to rounding) */
#define BPTT_PACK_MIN_BATCH 8
static float *bptt_weights(int64_t T, int64_t B, int64_t H, int64_t N, const float *wt)
{
    if (B < BPTT_PACK_MIN_BATCH || T * B < 64) return 0;
    float *wp = alloc_floats((size_t)((H + 31) / 32 * 32 * N));
    if (wp) mc_pack_cols(H, N, wt, wp);
    return wp;
}

#ifdef MULTI_ISA
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx2,fma")
#define ISA(name) name##_avx512
#define WIDE 1                                 /* 512-bit tiles (tile_wide) */
/* 32 registers: 12 rows x 2 16-lane accumulators (GRU: one 16- and one 8-lane). LSTM forward at
 * 1 thread against 6 rows (the 8-lane tile's 6x4): B=32 0.86x the time, H=512 0.83x; 8 rows
 * in between (1.02x and 1.07x of 12's; Xeon with AVX-512, bench_core, 2026-12-03). The GRU runs
 * two unit groups an item from two rows (gru_rows2: 8 rows x 3 16-lane accumulators); its 12-row
 * tile is left for an odd last group and the row chunks. */
#define MR_LSTM 12
#define MR_GRU 12
#define MR_GRU2 8
#define MR_NT 3
#define MR_PROJ 6                              /* 8-lane: 6 rows x 4 gates, 32 registers */
#include "rnn_kernels_body.h"
#include "bf16_body.h"
#undef ISA
#undef WIDE
#undef MR_LSTM
#undef MR_GRU
#undef MR_GRU2
#undef MR_NT
#undef MR_PROJ
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define ISA(name) name##_avx2
#define MR_LSTM 3                              /* 16 registers: 3x4 accumulators, W from memory */
#define MR_GRU 4
#define MR_NT 3
#define MR_PROJ 3
#include "rnn_kernels_body.h"
#include "bf16_body.h"
#undef ISA
#undef MR_LSTM
#undef MR_GRU
#undef MR_NT
#undef MR_PROJ
#pragma GCC pop_options
#endif

#define ISA(name) name##_base
#define MR_LSTM 2
#define MR_GRU 2
#define MR_NT 2
#define MR_PROJ 2
#include "rnn_kernels_body.h"
#include "bf16_body.h"
#undef ISA

/* -- dispatch ---------------------------------------------------------------------------------- */
typedef struct {
    const char *isa;
    void (*product)(int64_t, int64_t, int64_t, const float *, const float *, int64_t, int64_t, int64_t, float *);
    void (*lstm_forward)(int64_t, int64_t, int64_t, int32_t, const float *, int64_t, int64_t, const float *,
                         int64_t, int64_t, int64_t, const float *, const float *,
                         const int64_t *, const float *, int64_t, int64_t, int64_t, const float *, const float *,
                         float *, int64_t, int64_t,
                         float *, float *, float *, float *, float *, float *, float *, const float *, const float *);
    void (*lstm_backward)(int64_t, int64_t, int64_t, int32_t, const float *, const float *, int64_t, int64_t,
                          const float *, const float *, const float *, const float *, const float *, float *,
                          float *, float *, float *);
    void (*gru_forward)(int64_t, int64_t, int64_t, int32_t, const float *, int64_t, int64_t, const float *,
                        int64_t, int64_t, int64_t, const float *, const float *,
                        const int64_t *, const float *, int64_t, int64_t, int64_t, const float *, const float *,
                        float *, int64_t, int64_t,
                        float *, float *, float *, float *, float *, const float *, const float *);
    void (*gru_backward)(int64_t, int64_t, int64_t, int32_t, const float *, const float *, int64_t, int64_t,
                         const float *, const float *, const float *, const float *, float *, float *, float *,
                         float *);
    double (*fma_peak)(int64_t);
    double (*read_peak)(const float *, int64_t, int64_t, float *);
    void (*axpy_product)(int64_t, int64_t, int64_t, const float *, int64_t, const float *, float *);
    void (*rnn_forward)(int64_t, int64_t, int64_t, int64_t, int32_t, int32_t, const float *, int64_t, int64_t,
                        const float *, const float *, const int64_t *, const float *, int32_t, const float *, float *,
                        int64_t, int64_t, float *, float *, float *, float *, const float *, const float *);
    void (*rnn_backward)(int64_t, int64_t, int64_t, int32_t, int32_t, const float *, const float *, int64_t, int64_t,
                         const float *, const float *, float *, float *, float *);
    void (*project)(int64_t, int64_t, int64_t, int64_t, const float *, int64_t, const float *, const float *, float *,
                    int64_t, int64_t, int64_t);
    void (*forward_bf16)(int, int64_t, int64_t, int64_t, int64_t, int32_t, const float *, int64_t, int64_t,
                         const uint32_t *, const float *, const int64_t *, const float *, const float *, float *,
                         int64_t, int64_t, float *, float *, float *, int);
} kernels_t;

#define TABLE(sfx, name) { name, product_##sfx, lstm_forward_##sfx, lstm_backward_##sfx, gru_forward_##sfx, \
                           gru_backward_##sfx, fma_peak_##sfx, read_peak_##sfx, axpy_product_##sfx, \
                           rnn_forward_##sfx, rnn_backward_##sfx, project_##sfx, forward_bf16_##sfx }

static const kernels_t BASE = TABLE(base, "baseline");
#ifdef MULTI_ISA
static const kernels_t AVX2 = TABLE(avx2, "avx2+fma");
static const kernels_t AVX512 = TABLE(avx512, "avx512vl");
#endif
static const kernels_t *K = 0;

/* 0 auto, 1 baseline, 2 avx2, 3 avx512; returns the chosen ISA's name (the loader's env override). */
const char *mc_select(int32_t want)
{
    K = &BASE;
#ifdef MULTI_ISA
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    if ((want == 0 || want == 3) && avx512) K = &AVX512;
    else if ((want == 0 || want == 2 || want == 3) && avx2) K = &AVX2;
#else
    (void)want;
#endif
    return K->isa;
}

#define ENSURE() do { if (!K) mc_select(0); } while (0)

void mc_pack_rows(int64_t K_, int64_t H, int64_t G, const float *wt, float *out)
{
    /* wt: (K_, G*H) C-contiguous (W_hh^T, K_ = H, or W_ih^T, K_ = I) -> out (U, K_, G, 8); columns
     * past H are zero. Eight rows of wt (32 KiB at H=256) at a time, so that both sides stream: each
     * group's 8 x G x 8 floats of the block are one contiguous run of out, and the block's rows stay
     * in L1 while every group reads them (row by row, out was written 32 bytes at a time a whole
     * panel apart) */
    int64_t U = (H + VW - 1) / VW, full = H / VW;
    /* with more than one thread, weights larger than L2 are packed by the team, a share of the row
     * blocks each (a per-call copy of W_hh^T at B=1 is part of every call) */
    int nth = mc_threads > 1 && K_ * G * H >= MIN_WEIGHTS ? mc_threads : 1;
    (void)nth;
#pragma omp parallel for num_threads(nth) schedule(static) if (nth > 1)
    for (int64_t k0 = 0; k0 < K_; k0 += 8) {
        int64_t k1 = k0 + 8 < K_ ? k0 + 8 : K_;
        for (int64_t u = 0; u < U; u++) {
            float *d = out + (u * K_ + k0) * G * VW;
            for (int64_t k = k0; k < k1; k++)
                for (int64_t g = 0; g < G; g++, d += VW) {
                    const float *s = wt + k * G * H + g * H + u * VW;
                    if (u < full)
                        for (int l = 0; l < VW; l++) d[l] = s[l];
                    else                                                  /* the last, partial group */
                        for (int64_t l = 0; l < VW; l++) d[l] = u * VW + l < H ? s[l] : 0.0f;
                }
        }
    }
}

void mc_product(int64_t B, int64_t H, int64_t G, const float *h, const float *w, int64_t wk, int64_t wg,
                int64_t wu, float *out)
{
    ENSURE();
    K->product(B, H, G, h, w, wk, wg, wu, out);
}

/* The projection's team: each thread its share of the unit groups, each value summed as on one
 * thread (the same bits), from twice TEAM_MIN_MACS multiply-adds (N*I*G*H), as a single step: the
 * projection also starts the team. Against one thread, in-process, worker warm, median of 300
 * (Zen 4, 2026-12-04): I=64 H=256 LSTM N=2 0.88-0.92x the time, N=16 0.67x, N=100 0.56-0.58x; GRU
 * N=4 0.90-0.92x, N=100 0.56-0.63x; I=16 H=64 N=16 (65536) level, N=32 0.91x. One-row forward at
 * 2 threads, H=256, T=100: LSTM 0.87x, GRU 0.85x. */
#define PROJECT_TEAM_MIN_MACS (2 * TEAM_MIN_MACS)
/* The input projection of N rows, out (N, G*H) rows os floats apart = x (N, I) rows xs apart @ W_ih^T
 * + bias (G*H,) or NULL, W_ih^T packed (U, I, G, 8) (mc_pack_rows), G = 4 (LSTM) or 3 (GRU): the
 * bits the fused forward's tile makes before it turns to h (a one-row sequence projects first) */
int32_t mc_project(int64_t N, int64_t I, int64_t H, int64_t G, const float *x, int64_t xs, const float *wi,
                   const float *bias, float *out, int64_t os)
{
    ENSURE();
    if (G != 4 && G != 3) return -1;
    int64_t U = (H + VW - 1) / VW;
    int nth = mc_threads > 1 && N * I * G * H >= PROJECT_TEAM_MIN_MACS ? mc_threads : 1;
    if (nth > 1) __atomic_add_fetch(&team_projections, 1, __ATOMIC_RELAXED);
#define PART(tid, n) K->project(N, I, H, G, x, xs, wi, bias, out, os, share_start(U, tid, n), share_start(U, (tid) + 1, n))
    RUN_PARTS(nth, PART);
#undef PART
    return 0;
}

void mc_lstm_forward(int64_t T, int64_t B, int64_t H, int32_t reverse, const float *x, int64_t xt, int64_t xb,
                     const float *bx, const int64_t *lens, const float *w, int64_t wk, int64_t wg, int64_t wu,
                     const float *h0, const float *c0, float *y, int64_t yt, int64_t yb, float *hT, float *cT, float *gates, float *tanhc,
                     float *prev_h, float *prev_c, float *work)
{
    ENSURE();
    float *own = work ? 0 : alloc_floats((size_t)(6 * B * H));     /* NULL work: a step's */
    if (!work && !own) return;
    K->lstm_forward(T, B, H, reverse, x, xt, xb, 0, 0, 0, 0, 0, bx, lens, w, wk, wg, wu, h0, c0, y, yt, yb, hT, cT,
                    gates, tanhc, prev_h, prev_c, work ? work : own, 0, 0);
    free(own);
}

/* The forward with the input projection made in the tile: xi (T, B, I) rows xit / xib floats apart,
 * wi W_ih^T packed (U, I, 4, 8) (mc_pack_rows), bx both biases (4H,) or NULL, lens as
 * mc_lstm_forward's (ragged batches, inference; NULL: full length), gates .. prev_c what BPTT
 * reads, as mc_lstm_forward's (NULL: inference). W_hh must be packed (the register tile's layout):
 * returns -1 for the row-streaming one, whose product has no tile. */
int32_t mc_lstm_forward_fused(int64_t T, int64_t B, int64_t H, int64_t I, int32_t reverse, const float *xi,
                              int64_t xit, int64_t xib, const float *wi, const float *bx, const int64_t *lens,
                              const float *w, int64_t wk, int64_t wg, int64_t wu, const float *h0, const float *c0,
                              float *y, int64_t yt, int64_t yb, float *hT, float *cT, float *gates, float *tanhc,
                              float *prev_h, float *prev_c, float *work)
{
    ENSURE();
    if (wu == VW) return -1;
    K->lstm_forward(T, B, H, reverse, 0, 0, 0, xi, xit, xib, I, wi, bx, lens, w, wk, wg, wu, h0, c0, y, yt, yb, hT, cT,
                    gates, tanhc, prev_h, prev_c, work, 0, 0);
    return 0;
}

void mc_lstm_backward(int64_t T, int64_t B, int64_t H, int32_t reverse, const float *wt, const float *dy,
                      int64_t dyt, int64_t dyb, const float *gates, const float *tanhc, const float *prev_c,
                      const float *dhT, const float *dcT, float *dgx, float *dh0, float *dc0, float *work)
{
    ENSURE();
    K->lstm_backward(T, B, H, reverse, wt, dy, dyt, dyb, gates, tanhc, prev_c, dhT, dcT, dgx, dh0, dc0, work);
}

void mc_gru_forward(int64_t T, int64_t B, int64_t H, int32_t reverse, const float *x, int64_t xt, int64_t xb,
                    const float *bx, const int64_t *lens, const float *w, int64_t wk, int64_t wg, int64_t wu,
                    const float *b_hn, const float *h0,
                    float *y, int64_t yt, int64_t yb, float *hT, float *gates, float *hn, float *prev_h,
                    float *work)
{
    ENSURE();
    float *own = work ? 0 : alloc_floats((size_t)(3 * B * H));
    if (!work && !own) return;
    K->gru_forward(T, B, H, reverse, x, xt, xb, 0, 0, 0, 0, 0, bx, lens, w, wk, wg, wu, b_hn, h0, y, yt, yb, hT, gates,
                   hn, prev_h, work ? work : own, 0, 0);
    free(own);
}

/* mc_lstm_forward_fused's GRU: wi W_ih^T packed (U, I, 3, 8), bx the folded bias (3H,: b_ih, plus
 * b_hh for r and z) or NULL, b_hn (H,) as mc_gru_forward's */
int32_t mc_gru_forward_fused(int64_t T, int64_t B, int64_t H, int64_t I, int32_t reverse, const float *xi,
                             int64_t xit, int64_t xib, const float *wi, const float *bx, const int64_t *lens,
                             const float *w, int64_t wk, int64_t wg, int64_t wu, const float *b_hn, const float *h0,
                             float *y, int64_t yt, int64_t yb, float *hT, float *gates, float *hn, float *prev_h,
                             float *work)
{
    ENSURE();
    if (wu == VW) return -1;
    K->gru_forward(T, B, H, reverse, 0, 0, 0, xi, xit, xib, I, wi, bx, lens, w, wk, wg, wu, b_hn, h0, y, yt, yb, hT,
                   gates, hn, prev_h, work, 0, 0);
    return 0;
}

void mc_gru_backward(int64_t T, int64_t B, int64_t H, int32_t reverse, const float *wt, const float *dy,
                     int64_t dyt, int64_t dyb, const float *gates, const float *hn, const float *prev_h,
                     const float *dhT, float *dgx, float *dgh, float *dh0, float *work)
{
    ENSURE();
    K->gru_backward(T, B, H, reverse, wt, dy, dyt, dyb, gates, hn, prev_h, dhT, dgx, dgh, dh0, work);
}

/* -- one inference step, for the streaming step(): the kernel with its scratch and packing here --------
 * Arrays arrive as handles: with mc_set_handles(offset >= 0), a NumPy array's address (Python's
 * id()) whose data pointer sits `offset` bytes in (PyArrayObject's first field after the object
 * header), else the data pointer itself. Reading a.ctypes.data costs ~2 us per array in Python,
 * several times the kernel's own time for a small step; the loader checks the offset on real
 * arrays before enabling it. Every array is C-contiguous, float32. */
static int64_t handle_offset = -1;

void mc_set_handles(int64_t offset) { handle_offset = offset; }

static float *arr(intptr_t a)
{
    if (!a || handle_offset < 0) return (float *)a;
    return *(float **)((char *)a + handle_offset);
}

/* per-thread scratch for a step (c ping-pong, packed weights): reused, so a step makes
 * no allocation once warm; kept until the thread exits (a few MB per serving thread at most) */
static __thread float *scratch_buf;
static __thread size_t scratch_size;

static float *scratch(size_t n)
{
    if (n > scratch_size) {
        free(scratch_buf);
        scratch_buf = alloc_floats(n);
        scratch_size = scratch_buf ? n : 0;
    }
    return scratch_buf;
}

/* n floats rounded up to whole cache lines: where the next buffer in a scratch block starts, so that
 * packed weights placed after the state buffers start on a line too (see alloc_floats) */
static inline int64_t whole_lines(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* from this many rows the packed register tile beats streaming W_hh^T, the packing included */
#define STEP_PACK_MIN_BATCH 16

/* the step's weights: W_hh^T as stored (few rows), or packed into `pk` */
static const float *step_weights(int64_t B, int64_t H, int64_t G, const float *w_hh_t, float *pk, int64_t *wk,
                                 int64_t *wg, int64_t *wu)
{
    if (B < STEP_PACK_MIN_BATCH) { *wk = G * H; *wg = H; *wu = VW; return w_hh_t; }
    mc_pack_rows(H, H, G, w_hh_t, pk);
    *wk = G * VW; *wg = VW; *wu = H * G * VW;
    return pk;
}

/* xp (B, 4H): x W_ih^T + biases; w_hh_t (H, 4H); h, c (B, H) in; h_out, c_out (B, H) out (never
 * the inputs). Returns 0, or -1 when out of memory. */
int32_t mc_lstm_step(int64_t B, int64_t H, intptr_t xp, intptr_t w_hh_t, intptr_t h, intptr_t c, intptr_t h_out,
                     intptr_t c_out)
{
    ENSURE();
    if (B < 1) return 0;                                                  /* an empty batch: nothing to do */
    int64_t G = 4, U = (H + VW - 1) / VW, packed = B >= STEP_PACK_MIN_BATCH ? U * H * G * VW : 0;
    int64_t own = whole_lines(6 * B * H);
    float *work = scratch((size_t)(own + packed));
    if (!work) return -1;
    int64_t wk, wg, wu;
    const float *w = step_weights(B, H, G, arr(w_hh_t), work + own, &wk, &wg, &wu);
    K->lstm_forward(1, B, H, 0, arr(xp), 0, G * H, 0, 0, 0, 0, 0, 0, 0, w, wk, wg, wu, arr(h), arr(c), arr(h_out), 0, H,
                    0, arr(c_out), 0, 0, 0, 0, work, 0, 0);
    return 0;
}

/* the GRU's: xp (B, 3H) holds every bias but b_hn (H,) (or 0: none), which stays inside r * (h W_hn + b_hn) */
int32_t mc_gru_step(int64_t B, int64_t H, intptr_t xp, intptr_t w_hh_t, intptr_t b_hn, intptr_t h, intptr_t h_out)
{
    ENSURE();
    if (B < 1) return 0;
    int64_t G = 3, U = (H + VW - 1) / VW, packed = B >= STEP_PACK_MIN_BATCH ? U * H * G * VW : 0;
    int64_t own = whole_lines(3 * B * H), zeros = whole_lines(H);
    float *work = scratch((size_t)(own + zeros + packed));
    if (!work) return -1;
    float *zero = work + own;
    const float *bn = arr(b_hn);
    if (!bn) { memset(zero, 0, (size_t)H * sizeof(float)); bn = zero; }
    int64_t wk, wg, wu;
    const float *w = step_weights(B, H, G, arr(w_hh_t), zero + zeros, &wk, &wg, &wu);
    K->gru_forward(1, B, H, 0, arr(xp), 0, G * H, 0, 0, 0, 0, 0, 0, 0, w, wk, wg, wu, bn, arr(h), arr(h_out), 0, H, 0,
                   0, 0, 0, work, 0, 0);
    return 0;
}

/* -- one inference step from the raw input: step() and a length-1 forward, the input projection here --
 * x (B, I); bias (G*H,) with both biases folded as the cells fold them (or 0: none). packed = 1:
 * w_ih and w_hh are the kept packed copies of read-only weights ((U, I, G, 8), (U, H, G, 8)) and
 * the projection is made in the register tile (the fused kernel; at B=1 the pair tile). packed =
 * 0: W_ih^T (I, G*H) and W_hh^T (H, G*H) as stored; from STEP_PACK_MIN_BATCH rows the kernel
 * packs both into scratch (fused; si, sh: lstm_forward's), below it the projection streams W_ih^T
 * row by row (axpy_product) and the step reads W_hh^T as stored. Against the projection as a NumPy
 * product plus a bias add before the step, this saves two calls and an array per layer and token.
 * gates .. prev_c: what BPTT reads (as mc_lstm_forward's, T = 1), for a length-1 sequence in
 * training; 0 for inference. Returns 0, or -1 without memory. */
static const float *input_step_weights(int64_t B, int64_t H, int64_t I, int64_t G, int64_t packed, const float *x,
                                       const float *w_ih, const float *bias, const float *w_hh, float *buf,
                                       const float **wi, const float **xproj, const float **bx, int64_t *wk,
                                       int64_t *wg, int64_t *wu, const float **si, const float **sh)
{
    int64_t U = (H + VW - 1) / VW;
    *bx = bias;
    *si = *sh = 0;
    if (packed || B >= STEP_PACK_MIN_BATCH) {                  /* the fused tile: W_ih and W_hh packed */
        *xproj = 0;
        *wi = w_ih;
        *wk = G * VW; *wg = VW; *wu = H * G * VW;
        if (packed) return w_hh;
        *si = w_ih;                                            /* for the kernel to pack into buf */
        *sh = w_hh;
        *wi = buf;
        return buf + U * I * G * VW;
    }
    K->axpy_product(B, I, G * H, x, I, w_ih, buf);            /* (B, G*H) = x W_ih^T, by rows of W_ih^T */
    *xproj = buf;
    *wi = 0;
    *wk = G * H; *wg = H; *wu = VW;
    return w_hh;
}

static size_t input_step_scratch(int64_t B, int64_t H, int64_t I, int64_t G, int64_t packed)
{
    int64_t U = (H + VW - 1) / VW;
    if (packed) return 0;
    return (size_t)(B >= STEP_PACK_MIN_BATCH ? U * (I + H) * G * VW : B * G * H);
}

/* -- bfloat16 weights (bf16_body.h): inference only, float32 arithmetic -------------------------------
 * G = 4 (LSTM) or 3 (GRU); w: [W_ih^T; W_hh^T] packed as bf16_body.h says (native_bf16.pack), bias16
 * (UB, 4, 16): the LSTM's folded biases, or the GRU's r and z folded, b_in, b_hn; the rest as
 * mc_lstm_forward_fused's, but x's rows are I floats and h0, c0, hT, cT are (B, H) C-contiguous (c0
 * and cT the LSTM's only); y may be NULL. Returns 0, -1 without memory, -2 for another G. */
static size_t bf16_work(int64_t B, int64_t H, int64_t I)
{
    const bf16_dims_t d = bf16_dims(H, I);
    return (size_t)(2 * B * d.vs + B * d.HB);
}

int32_t mc_forward_bf16(int64_t G, int64_t T, int64_t B, int64_t H, int64_t I, int32_t reverse, const float *x,
                        int64_t xt, int64_t xb, const uint32_t *w, const float *bias16, const int64_t *lens,
                        const float *h0, const float *c0, float *y, int64_t yt, int64_t yb, float *hT, float *cT)
{
    ENSURE();
    if (G != 4 && G != 3) return -2;
    if (B < 1) return 0;
    float *work = scratch(bf16_work(B, H, I));
    if (!work) return -1;
    K->forward_bf16((int)G, T, B, H, I, reverse, x, xt, xb, w, bias16, lens, h0, c0, y, yt, yb, hT, cT, work,
                    threads_for(0, T, B, H, G, 0));
    return 0;
}

/* a step's `packed` = 2: w_ih holds the bf16 weights (mc_forward_bf16's w) and bias the bias16
 * (inference: what BPTT reads must be NULL) */
#define PACKED_BF16 2

int32_t mc_lstm_input_step_data(int64_t B, int64_t H, int64_t I, const float *x, const float *w_ih, const float *bias,
                                const float *w_hh, int64_t packed, const float *h, const float *c, float *h_out,
                                float *c_out, float *gates, float *tanhc, float *prev_h, float *prev_c)
{
    ENSURE();
    const int64_t G = 4;
    if (B < 1) return 0;                                                  /* an empty batch: nothing to do */
    if (packed == PACKED_BF16)
        return gates ? -2 : mc_forward_bf16(G, 1, B, H, I, 0, x, 0, I, (const uint32_t *)w_ih, bias, 0, h, c, 0, 0, 0,
                                            h_out, c_out);
    int64_t own = whole_lines(6 * B * H);                                 /* c ping-pong, (B, 4H) */
    float *work = scratch(own + input_step_scratch(B, H, I, G, packed));
    if (!work) return -1;
    const float *wi, *xp, *bx, *si, *sh;
    int64_t wk, wg, wu;
    const float *w = input_step_weights(B, H, I, G, packed, x, w_ih, bias, w_hh, work + own, &wi, &xp, &bx, &wk, &wg,
                                        &wu, &si, &sh);
    K->lstm_forward(1, B, H, 0, xp, 0, G * H, wi ? x : 0, 0, I, I, wi, bx, 0, w, wk, wg, wu, h, c, h_out, 0, H, 0,
                    c_out, gates, tanhc, prev_h, prev_c, work, si, sh);
    return 0;
}

/* the same with handles (ctypes' calls) */
int32_t mc_lstm_input_step(int64_t B, int64_t H, int64_t I, intptr_t x, intptr_t w_ih, intptr_t bias, intptr_t w_hh,
                           int64_t packed, intptr_t h, intptr_t c, intptr_t h_out, intptr_t c_out, intptr_t gates,
                           intptr_t tanhc, intptr_t prev_h, intptr_t prev_c)
{
    return mc_lstm_input_step_data(B, H, I, arr(x), arr(w_ih), arr(bias), arr(w_hh), packed, arr(h), arr(c), arr(h_out),
                                   arr(c_out), arr(gates), arr(tanhc), arr(prev_h), arr(prev_c));
}

/* the GRU's: bias folded as gru_cell.fold_bias folds it (b_ih, plus b_hh for r and z), b_hn (H,)
 * (or 0: none) inside r * (h W_hn + b_hn); gates, hn, prev_h as mc_gru_forward's (or 0) */
int32_t mc_gru_input_step_data(int64_t B, int64_t H, int64_t I, const float *x, const float *w_ih, const float *bias,
                               const float *b_hn, const float *w_hh, int64_t packed, const float *h, float *h_out,
                               float *gates, float *hn, float *prev_h)
{
    ENSURE();
    const int64_t G = 3;
    if (B < 1) return 0;
    if (packed == PACKED_BF16)
        return gates ? -2 : mc_forward_bf16(G, 1, B, H, I, 0, x, 0, I, (const uint32_t *)w_ih, bias, 0, h, 0, 0, 0, 0,
                                            h_out, 0);
    int64_t own = whole_lines(3 * B * H), zeros = whole_lines(H);        /* (B, 3H); a zero b_hn */
    float *work = scratch(own + zeros + input_step_scratch(B, H, I, G, packed));
    if (!work) return -1;
    float *zero = work + own;
    const float *bn = b_hn;
    if (!bn) { memset(zero, 0, (size_t)H * sizeof(float)); bn = zero; }
    const float *wi, *xp, *bx, *si, *sh;
    int64_t wk, wg, wu;
    const float *w = input_step_weights(B, H, I, G, packed, x, w_ih, bias, w_hh, zero + zeros, &wi, &xp, &bx, &wk, &wg,
                                        &wu, &si, &sh);
    K->gru_forward(1, B, H, 0, xp, 0, G * H, wi ? x : 0, 0, I, I, wi, bx, 0, w, wk, wg, wu, bn, h, h_out, 0, H, 0,
                   gates, hn, prev_h, work, si, sh);
    return 0;
}

int32_t mc_gru_input_step(int64_t B, int64_t H, int64_t I, intptr_t x, intptr_t w_ih, intptr_t bias, intptr_t b_hn,
                          intptr_t w_hh, int64_t packed, intptr_t h, intptr_t h_out, intptr_t gates, intptr_t hn,
                          intptr_t prev_h)
{
    return mc_gru_input_step_data(B, H, I, arr(x), arr(w_ih), arr(bias), arr(b_hn), arr(w_hh), packed, arr(h),
                                  arr(h_out), arr(gates), arr(hn), arr(prev_h));
}

/* -- the Elman RNN (relu: 0 tanh, 1 relu) ---------------------------------------------------------
 * W^T (K_, H) C-contiguous (W_hh^T, K_ = H, or W_ih^T, K_ = I) -> (ceil(H/32), K_, 32), the RNN
 * kernels' panels: panel c's row k is W^T[k, 32c .. 32c+31], zero past H */
void mc_pack_panels(int64_t K_, int64_t H, const float *wt, float *out)
{
    int64_t C = (H + MC_PANEL - 1) / MC_PANEL;
    for (int64_t c = 0; c < C; c++) {
        int64_t n = H - c * MC_PANEL < MC_PANEL ? H - c * MC_PANEL : MC_PANEL;
        for (int64_t k = 0; k < K_; k++) {
            float *d = out + (c * K_ + k) * MC_PANEL;
            memcpy(d, wt + k * H + c * MC_PANEL, (size_t)n * sizeof(float));
            if (n < MC_PANEL) memset(d + n, 0, (size_t)(MC_PANEL - n) * sizeof(float));
        }
    }
}

/* One direction of T steps. packed = 1: w is W_hh^T's panels (mc_pack_panels) and, with wi (W_ih^T's
 * panels), x is the raw input (T, B, I), the projection made in the register tile; without wi, x
 * is the projection (T, B, H). packed = 0: w is W_hh^T (H, H) as stored, streamed by rows (few
 * rows), and x the projection. bx: the folded bias (H,) or NULL. x, y rows xt/xb and yt/yb floats
 * apart; lens (B,) or NULL as mc_lstm_forward's (inference); act and prev_h (T, B, H): what BPTT
 * reads (h' and the state entering each step), or NULL. hT may be h0 (in place). Returns 0, -1 for
 * wi without packed weights, -2 without memory. */
int32_t mc_rnn_forward(int64_t T, int64_t B, int64_t H, int64_t I, int32_t reverse, int32_t relu, const float *x,
                       int64_t xt, int64_t xb, const float *wi, const float *bx, const int64_t *lens, const float *w,
                       int32_t packed, const float *h0, float *y, int64_t yt, int64_t yb, float *hT, float *act,
                       float *prev_h)
{
    ENSURE();
    if (wi && !packed) return -1;
    float *work = 0;
    if (!packed && B > 0 && T > 0 && !(work = scratch((size_t)(B * H)))) return -2;
    K->rnn_forward(T, B, H, I, reverse, relu, x, xt, xb, wi, bx, lens, w, packed, h0, y, yt, yb, hT, act, prev_h, work,
                   0, 0);
    return 0;
}

/* BPTT: wt W_hh^T (H, H); dy (T, B, H) rows dyt/dyb apart or NULL; act as the forward wrote it;
 * dhT (B, H) in; dgx (T, B, H) the pre-activation gradients and dh0 (B, H) out; work B*H floats */
void mc_rnn_backward(int64_t T, int64_t B, int64_t H, int32_t reverse, int32_t relu, const float *wt, const float *dy,
                     int64_t dyt, int64_t dyb, const float *act, const float *dhT, float *dgx, float *dh0, float *work)
{
    ENSURE();
    K->rnn_backward(T, B, H, reverse, relu, wt, dy, dyt, dyb, act, dhT, dgx, dh0, work);
}

/* One inference step of the RNN from the raw input x (B, I), as mc_lstm_input_step's: packed = 1,
 * w_ih and w_hh the kept panels of read-only weights (the projection in the tile); 0, W_ih^T (I, H)
 * and W_hh^T (H, H) as stored, packed into scratch from STEP_PACK_MIN_BATCH rows, below it the
 * projection streamed by rows of W_ih^T and W_hh^T read as stored. bias (H,) or 0; act, prev_h:
 * what BPTT reads (T = 1) or 0. Returns 0, or -1 without memory. */
int32_t mc_rnn_input_step_data(int64_t B, int64_t H, int64_t I, int64_t relu, const float *x, const float *w_ih,
                               const float *bias, const float *w_hh, int64_t packed, const float *h, float *h_out,
                               float *act, float *prev_h)
{
    ENSURE();
    if (B < 1) return 0;                                                  /* an empty batch: nothing to do */
    int64_t C = (H + MC_PANEL - 1) / MC_PANEL, r = relu != 0;
    if (packed) {
        K->rnn_forward(1, B, H, I, 0, r, x, 0, I, w_ih, bias, 0, w_hh, 1, h, h_out, 0, H, 0, act, prev_h, 0, 0, 0);
        return 0;
    }
    if (B >= STEP_PACK_MIN_BATCH) {
        float *pi = scratch((size_t)(C * (I + H) * MC_PANEL));
        if (!pi) return -1;
        float *ph = pi + C * I * MC_PANEL;
        K->rnn_forward(1, B, H, I, 0, r, x, 0, I, pi, bias, 0, ph, 1, h, h_out, 0, H, 0, act, prev_h, 0, w_ih,
                       w_hh);                                         /* the kernel packs them into pi, ph */
        return 0;
    }
    int64_t own = whole_lines(B * H);
    float *xp = scratch((size_t)(2 * own));                               /* the projection; the product */
    if (!xp) return -1;
    K->axpy_product(B, I, H, x, I, w_ih, xp);
    K->rnn_forward(1, B, H, 0, 0, r, xp, 0, H, 0, bias, 0, w_hh, 0, h, h_out, 0, H, 0, act, prev_h, xp + own, 0, 0);
    return 0;
}

int32_t mc_rnn_input_step(int64_t B, int64_t H, int64_t I, int64_t relu, intptr_t x, intptr_t w_ih, intptr_t bias,
                          intptr_t w_hh, int64_t packed, intptr_t h, intptr_t h_out, intptr_t act, intptr_t prev_h)
{
    return mc_rnn_input_step_data(B, H, I, relu, arr(x), arr(w_ih), arr(bias), arr(w_hh), packed, arr(h), arr(h_out),
                                  arr(act), arr(prev_h));
}

/* the FMA loop behind the probe's peak: returns the flops it did (iters * 2 * 12 * the lanes of the
 * widest vectors this build's tiles use) */
double mc_fma_peak(int64_t iters)
{
    ENSURE();
    return K->fma_peak(iters);
}

/* the read loop behind a step's floor (bench_core): reads a's n floats `passes` times in this
 * build's widest vectors; returns the bytes read, and the sum of what it read in *sum */
double mc_read_peak(const float *a, int64_t n, int64_t passes, float *sum)
{
    ENSURE();
    return K->read_peak(a, n, passes, sum);
}
