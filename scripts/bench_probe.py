"""The recurrent product alone, ``(B,H) @ (H,4H)`` float32 on one thread, in GFLOP/s, against this
core's measured peak. Used by ``bench_core.py --probe``; the caller pins every thread pool to 1.

Contestants (each checked against float64 NumPy before timing):

* ``openblas``: NumPy's ``matmul`` into a preallocated output, W^T C-contiguous (its best case);
* ``torch.mm``: torch's CPU sgemm (MKL/oneDNN inside the wheel), when torch is installed;
* ``numba naive``: a plain compiled panel loop (``for k: out[b] += h[b,k] * W[k]``), when Numba is;
* ``ours packed``: the native kernel's register tile over the packed weights (``model_core.native``),
  the product every LSTM step of a batch runs;
* ``ours rows``: the native kernel's row-streaming product over W^T as stored, used for small batches;
* ``mkl sgemm`` and ``mkl packed``: MKL's ``cblas_sgemm`` and its packed GEMM, when ``libmkl_rt`` is
  found (``scripts.mkl_probe``; never a dependency);
* ``onednn sgemm``: oneDNN's ``dnnl_sgemm``, when oneDNN 2.x's C library is installed
  (``scripts.onednn_probe``; never a dependency).

The peak is the larger of two measurements: a loop of independent FMAs in registers
(``mc_fma_peak``, in the widest vectors the kernels' tiles use: 512-bit in the AVX-512 build), and
the best BLAS on a large square product.
"""
from __future__ import annotations

import time

import numpy as np

PROBE_SHAPES = [(1, 256), (32, 256), (64, 256), (256, 256), (32, 512)]
clock = time.perf_counter          # bench_core --clock cpu sets time.thread_time


def best_seconds(fn, repeat: int, min_time: float = 2e-4, warm: float = 0.02) -> float:
    """Min over ``repeat`` timings, each of enough calls to last ``min_time``: per-call seconds. The
    contestant first runs untimed for ``warm`` seconds: on the Xeon a kernel run within ~4 ms of
    another's 512-bit loads ran 1.10-1.14x slower (see ``model_core.cells.native_weights.projected``),
    so without it each contestant's first timings paid for the one before."""
    t0 = clock()
    while clock() - t0 < warm:
        fn()
    t0 = clock()
    fn()
    one = max(clock() - t0, 1e-7)
    calls = max(1, int(min_time / one))
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        for _ in range(calls):
            fn()
        best = min(best, (clock() - t0) / calls)
    return best


def measure_peak(repeat: int, torch=None) -> dict:
    """GFLOP/s of the FMA loop and of the best BLAS on a 1024^3 product; ``peak`` is the larger."""
    out = {"fma_loop": measure_fma(repeat), "blas_square": None}
    n = 1024
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    c = np.empty_like(a)
    best = 2 * n**3 / best_seconds(lambda: np.matmul(a, a, out=c), max(3, repeat // 3)) / 1e9
    if torch is not None:
        ta = torch.from_numpy(a)
        best = max(best, 2 * n**3 / best_seconds(lambda: torch.mm(ta, ta), max(3, repeat // 3)) / 1e9)
    out["blas_square"] = best
    out["peak"] = max(v for v in out.values() if v is not None)
    return out


def measure_fma(repeat: int) -> float | None:
    """GFLOP/s of the kernels' FMA loop (``mc_fma_peak``) on this core. None without the kernels."""
    from model_core import native

    if not native.AVAILABLE:
        return None
    iters = 200_000
    t = best_seconds(lambda: native.lib.mc_fma_peak(iters), repeat)
    return native.lib.mc_fma_peak(iters) / t / 1e9                              # it returns the flops it did


def measure_read(nbytes: int, repeat: int) -> float | None:
    """GB/s of the read loop (``mc_read_peak``) over a buffer of ``nbytes``: how fast one core streams
    that many bytes of weights from wherever that size lives (L2, L3). None without the kernels."""
    from model_core import native

    if not native.AVAILABLE:
        return None
    from model_core.cells.native_weights import aligned_empty

    a = aligned_empty(max(1, nbytes // 4))                  # on a cache line, as the kept weights are
    a[...] = np.random.default_rng(0).standard_normal(a.size, dtype=np.float32)
    total = np.empty(1, np.float32)
    passes = 2 * max(1, int(2**22 // a.nbytes))     # ~8 MiB a call (the ctypes call is noise), each call
                                                    # ending where the next starts (every other pass backwards)
    t = best_seconds(lambda: native.lib.mc_read_peak(a.ctypes.data, a.size, passes, total.ctypes.data), repeat)
    return native.lib.mc_read_peak(a.ctypes.data, a.size, passes, total.ctypes.data) / t / 1e9


def _numba_panel():
    from model_core import jit

    if not jit.AVAILABLE:
        return None

    @jit.njit
    def panel(h, w, out):
        B, K = h.shape
        N = w.shape[1]
        for b in range(B):
            for n in range(N):
                out[b, n] = 0.0
            for k in range(K):
                hv = h[b, k]
                for n in range(N):
                    out[b, n] += hv * w[k, n]
    return panel


def probe(repeat: int, torch=None, shapes=PROBE_SHAPES) -> list[dict]:
    """One row per (B, H): GFLOP/s per contestant (None where it is unavailable)."""
    from model_core import native
    from model_core.cells.native_weights import pack, ptr

    from scripts import mkl_probe, onednn_probe

    panel = _numba_panel()
    mkl, onednn = mkl_probe.load(), onednn_probe.load()
    rows = []
    for B, H in shapes:
        G = 4
        rng = np.random.default_rng(B * 1000 + H)
        h = rng.standard_normal((B, H), dtype=np.float32)
        wt = rng.standard_normal((H, G * H), dtype=np.float32)            # W_hh^T as the layer stores it
        want = h.astype(np.float64) @ wt.astype(np.float64)
        out = np.empty((B, G * H), np.float32)
        flops = 2.0 * B * H * G * H
        jobs = {"openblas": lambda: np.matmul(h, wt, out=out)}
        if torch is not None:
            th, tw = torch.from_numpy(h), torch.from_numpy(wt)
            jobs["torch.mm"] = lambda: torch.mm(th, tw)
        if panel is not None:
            jobs["numba naive"] = lambda: panel(h, wt, out)
        if native.AVAILABLE:
            packed = pack(wt)
            hp, pp, wp, op = ptr(h), ptr(packed), ptr(wt), ptr(out)
            jobs["ours packed"] = lambda: native.lib.mc_product(B, H, G, hp, pp, 8 * G, 8, 8 * G * H, op)
            jobs["ours rows"] = lambda: native.lib.mc_product(B, H, G, hp, wp, G * H, H, 8, op)
        if mkl is not None:
            jobs.update(mkl_probe.jobs(mkl, h, wt, out))
        if onednn is not None:
            jobs.update(onednn_probe.sgemm_jobs(onednn, h, wt, out))
        row = {"B": B, "H": H}
        for name, fn in jobs.items():
            res = fn()
            got = res.numpy() if name == "torch.mm" else out
            err = float(np.max(np.abs(got - want)) / max(1.0, float(np.max(np.abs(want)))))
            if err > 1e-4:
                raise SystemExit(f"probe: {name} differs from float64 at B={B}, H={H}: {err:.2g}")
            row[name] = flops / best_seconds(fn, repeat) / 1e9
        rows.append(row)
    return rows
