#!/usr/bin/env python
"""Benchmark model_core's RNN/LSTM/GRU against torch and onnxruntime, forward, training and per step.

    python -m scripts.bench_core                          # LSTM on the CPU, default grid
    python -m scripts.bench_core --cell all --json bench.json
    python -m scripts.bench_core --shapes "32,100,64,256;1,10,8,16" --repeat 9
    python -m scripts.bench_core --device gpu             # adds large shapes; torch on CUDA is cuDNN
    python -m scripts.bench_core --sweep batch --json b.json   # for scripts/plot_performance.py
    python -m scripts.bench_core --probe --threads 1 --repeat 30  # the recurrent product alone, vs peak

Shapes are B,T,I,H; every layer is float32, one layer, unidirectional, zero initial state. Times
are the median (or ``--stat min``) of ``--repeat`` runs, the contestants taking turns (one untimed call,
then a timed one, per round), so that bursts of outside load on a shared machine hit all of them alike.
Before timing a shape, ours and onnxruntime are checked against torch (1e-4 on the outputs) and the
run stops if either differs. torch and onnxruntime are optional: a missing peer shows as "n/a".
"ours fwd" is a trainable layer (its weights writable: packed per call where a call packs them);
"ours served" the same weights frozen, as the service loads a model (packed once and kept, as
onnxruntime prepacks its initializers once per session); in the single-step table too. The step
table also gives each step's floor on this machine: the longer of its weights read once at this
core's measured read rate and its FMAs at the FMA loop's rate (``step_floor``). "served bf16" (LSTM and GRU,
CPU; forward and step) is the frozen layer with opt-in bfloat16 weights, ``freeze(weights="bfloat16")``:
float32 arithmetic on weights rounded once, checked against our float32 layer (the forward) or the
naive step on the same rounded weights (1e-4); the step's has its own floor (half the bytes).
"onednn" (LSTM and GRU, CPU) is oneDNN's RNN primitive, forward inference on weights reordered once,
where oneDNN 2.x's C library is installed (``scripts.onednn_probe``; never a dependency).

On the GPU the peers are torch's cuDNN layers and cells (a CUDA build of torch) and onnxruntime's
CUDA provider when installed; the single-step table then covers batched sessions, B=1 to 1024.
"""
from __future__ import annotations

from scripts import blas_threads  # first: --threads sizes the BLAS pool before NumPy loads

import argparse
import contextlib
import functools
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from model_core import jit, native
from model_core.backend import get_xp, gpu_available, to_device, to_numpy
from model_core.cells import uses_jit, uses_native
from model_core.cells.native_bf16 import round_weights
from model_core.nn import GRU, LSTM, RNN
from model_core.threads import set_num_threads
from scripts import bench_peers as peers
from scripts import bench_probe, onednn_probe

THREADS = blas_threads.threads(default=2)
if importlib.util.find_spec("threadpoolctl") is not None:
    import threadpoolctl

    _BLAS_LIMIT = threadpoolctl.threadpool_limits(limits=THREADS)     # held for the process's life
ENGINE_THREADS = set_num_threads(THREADS)                               # our kernels' team too
HEAP = peers.keep_heap()                                                # before any contestant allocates

OURS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
DEFAULT_SHAPES = [(1, 100, 64, 256), (32, 100, 64, 256), (256, 50, 64, 256), (32, 100, 128, 512)]
GPU_EXTRA_SHAPES = [(1024, 100, 128, 512), (4096, 50, 256, 1024)]
QUICK_SHAPES = [(2, 6, 8, 16)]
# Sweeps for the plots: one dimension varies, the rest stay at the middle of the default grid.
SWEEPS = {
    "batch": {"cpu": [(b, 50, 64, 256) for b in (1, 4, 16, 64, 256)],
              "gpu": [(b, 50, 64, 256) for b in (1, 16, 256, 1024, 4096)]},
    "hidden": {"cpu": [(32, 50, 64, h) for h in (64, 128, 256, 512, 1024)],
               "gpu": [(256, 50, 64, h) for h in (64, 128, 256, 512, 1024)]},
}
CPU_STEP_BATCHES = [1]
GPU_STEP_BATCHES = [1, 8, 64, 256, 1024]                               # batched sessions on one device
STEP_I, STEP_H = 64, 256
TOL = 1e-4
FWD_HEADERS = ["shape B,T,I,H", "ours fwd ms", "ours served ms", "torch fwd ms", "ort fwd ms", "ours/ort",
               "served/ort", "ours/torch", "ours fwd+bwd ms", "torch fwd+bwd ms", "ratio ours/torch",
               "served bf16 ms", "bf16/ort", "onednn fwd ms", "served/onednn"]
STEP_HEADERS = ["cell", "B", "ours step µs", "ours served µs", "torch cell µs", "naive step µs", "ours/torch",
                "served/torch", "ours/naive", "floor µs", "served/floor", "served bf16 µs", "bf16/torch",
                "bf16 floor µs", "bf16/floor"]
# (column, ours, peer): ratios taken round by round (bench_peers.paired_ratio)
PAIRS = [("ours/ort", "ours_fwd", "ort_fwd"), ("served/ort", "ours_served", "ort_fwd"),
         ("ours/torch", "ours_fwd", "torch_fwd"), ("fwd+bwd ours/torch", "ours_train", "torch_train"),
         ("bf16/ort", "ours_bf16", "ort_fwd"), ("served/onednn", "ours_served", "onednn_fwd")]
PAIRED_HEADERS = ["shape B,T,I,H"] + [column for column, _, _ in PAIRS]


class Env:
    """What a run needs: device, array module, syncs, and the peers that are usable."""

    def __init__(self, args):
        self.gpu = args.device == "gpu"
        self.device = args.device
        self.xp = get_xp(self.device)
        self.ours_sync = self.xp.cuda.Device().synchronize if self.gpu else peers.no_sync
        torch = peers.optional("torch")
        if torch is not None and self.gpu and not torch.cuda.is_available():
            torch = None                                                # a CPU-only torch is no cuDNN
        if torch is not None:
            torch.set_num_threads(THREADS)
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(1)
        self.torch = torch
        self.tdev = "cuda" if self.gpu else "cpu"
        self.torch_sync = torch.cuda.synchronize if (torch is not None and self.gpu) else peers.no_sync
        ort, onnx = peers.optional("onnxruntime"), peers.optional("onnx")
        self.ort = ort if (onnx is not None and peers.ort_usable(ort, self.gpu)) else None
        self.onnx = onnx
        self.onednn = None if self.gpu else onednn_probe.load()
        if self.onednn is not None:
            onednn_probe.set_threads(THREADS)
        self.warmup = 3 if self.gpu else 1
        self.stat = args.stat
        self.floor_repeat = 3 if args.quick else 15

    def inference(self):
        return self.torch.inference_mode() if self.torch is not None else contextlib.nullcontext()


def engine_line(env: Env) -> str:
    """Which step implementation model_core runs here (native kernels, compiled cells or the reference)."""
    if uses_native("lstm", env.xp, np.float32):
        return f"native LSTM/GRU/RNN kernels ({native.REASON})"
    if uses_jit(env.xp, np.float32):
        return f"compiled float32 cells ({jit.REASON}), BLAS for the products"
    if env.gpu:
        return "CuPy reference cells (cuBLAS products, elementwise kernels)"
    return f"NumPy reference cells (compiled cells off: {jit.REASON})"


def _fail(what: str, cell: str, shape, err: float) -> None:
    raise SystemExit(f"\n*** MISMATCH: {what} differs from torch for {cell} {shape}: max |diff| = {err:.3g} "
                     f"> {TOL:g}. Timings would be meaningless; fix the model or the conversion first. ***")


def _rel(a, b) -> float:
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


# -- one shape ---------------------------------------------------------------------------------
def bench_shape(env: Env, cell: str, shape, repeat: int) -> dict:
    B, T, I, H = shape
    rng = np.random.default_rng(0)
    ours = OURS[cell](I, H, device=env.device, seed=0)
    sd = ours.state_dict()
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    xs, dys = to_device(x, env.device), to_device(dy, env.device)
    row = {"shape": list(shape), "ours_fwd": None, "ours_served": None, "ours_bf16": None, "torch_fwd": None,
           "ort_fwd": None, "onednn_fwd": None, "ours_train": None, "torch_train": None, "check": {}, "ms": {}}
    jobs = {}                                                           # name -> (fn, sync)

    y_ours = to_numpy(ours.forward(xs)[0])
    ref = y_ours
    if env.torch is not None:
        torch = env.torch
        tmod = peers.torch_layer(torch, cell, sd, env.tdev)
        tx = torch.from_numpy(x).to(env.tdev)
        with torch.inference_mode():
            ref = tmod(tx)[0].cpu().numpy()
        err = float(np.max(np.abs(y_ours - ref)))
        row["check"]["ours_vs_torch"] = err
        if err > TOL:
            _fail("ours", cell, shape, err)

        def torch_fwd():
            with torch.inference_mode():
                tmod(tx)

        tx_train = tx.clone().requires_grad_(True)
        tdy = torch.from_numpy(dy).to(env.tdev)

        def torch_train():
            tmod.zero_grad(set_to_none=True)
            tx_train.grad = None
            tmod(tx_train)[0].backward(tdy)

        jobs["torch_fwd"] = (torch_fwd, env.torch_sync)
        jobs["torch_train"] = (torch_train, env.torch_sync)
    if env.ort is not None:
        runner = peers.OrtRunner(env.ort, peers.onnx_model_bytes(env.onnx, cell, sd), THREADS, env.gpu)
        err = float(np.max(np.abs(runner.output(x) - ref)))
        row["check"]["ort_vs_" + ("torch" if env.torch is not None else "ours")] = err
        if err > TOL:
            _fail("onnxruntime", cell, shape, err)
        runner.bind(x)
        jobs["ort_fwd"] = (lambda: runner.run(x), peers.no_sync)
    if env.onednn is not None and cell in ("lstm", "gru"):
        primitive = onednn_probe.Recurrent(env.onednn, cell, sd, T, B)
        err = float(np.max(np.abs(primitive.run(x) - ref)))
        row["check"]["onednn_vs_" + ("torch" if env.torch is not None else "ours")] = err
        if err > TOL:
            _fail("oneDNN", cell, shape, err)
        jobs["onednn_fwd"] = (lambda: primitive.run(x), peers.no_sync)

    def ours_train():
        _, _, cache = ours.forward_train(xs)
        return ours.backward(cache, dys)

    jobs["ours_fwd"] = (lambda: ours.forward(xs), env.ours_sync)
    if not env.gpu:
        # the same weights frozen, as the service loads a model: read-only, so the kernels pack them
        # once and keep the copy, as onnxruntime prepacks its initializers once per session
        served = OURS[cell](I, H, device=env.device, seed=0).freeze()
        err = float(np.max(np.abs(to_numpy(served.forward(xs)[0]) - ref)))
        if err > TOL:
            _fail("ours served (frozen)", cell, shape, err)
        jobs["ours_served"] = (lambda: served.forward(xs), env.ours_sync)
        if served.bf16_problem() is None:
            # opt-in bfloat16 weights: checked against our float32 layer on the same weights rounded
            bf16 = OURS[cell](I, H, device=env.device, seed=0).freeze(weights="bfloat16")
            rounded = OURS[cell](I, H, device=env.device, seed=0)
            rounded.load_state_dict(round_weights(sd))
            err = float(np.max(np.abs(bf16.forward(xs)[0] - rounded.forward(xs)[0])))
            row["check"]["bf16_vs_rounded"] = err
            if err > TOL:
                _fail("ours bf16 (against float32 on rounded weights)", cell, shape, err)
            jobs["ours_bf16"] = (lambda: bf16.forward(xs), env.ours_sync)
    jobs["ours_train"] = (ours_train, env.ours_sync)
    row["ms"] = peers.blocks_ms(jobs, repeat, env.warmup)
    row.update({name: st[env.stat] for name, st in row["ms"].items()})
    runs = {name: st["runs"] for name, st in row["ms"].items()}
    row["paired"] = {column: peers.paired_ratio(runs.get(a), runs.get(b)) for column, a, b in PAIRS}
    if env.torch is not None:                                           # gradients agree too (relative)
        dx, _, grads = ours_train()
        tgrads = {k: p.grad.cpu().numpy() for k, p in tmod.named_parameters()}
        rel = max([_rel(to_numpy(dx), tx_train.grad.cpu().numpy())]
                  + [_rel(to_numpy(grads[k]), tgrads[k]) for k in tgrads])
        row["check"]["grads_rel"] = rel
        if rel > 1e-3:
            print(f"WARNING: {cell} {shape} gradients differ from torch: max relative diff {rel:.3g}", flush=True)
    return row


# -- single step -------------------------------------------------------------------------------
@functools.cache
def _machine_rates(nbytes: int, repeat: int) -> tuple[float | None, float | None]:
    """(read GB/s over nbytes, FMA GFLOP/s) of this core, measured once per size a run: a cell's
    rows at every batch then share one floor's rates."""
    return bench_probe.measure_read(nbytes, repeat), bench_probe.measure_fma(repeat)


def step_floor(weights: list[np.ndarray], batch: int, repeat: int, bytes_per_weight: int = 4) -> dict | None:
    """The least one step can take on this machine: it reads every weight once and does 2 flops per
    weight and row, so it is bounded by this core's read rate over that many bytes (``mc_read_peak``,
    measured on a buffer their size: the cache level they land in) and by the FMA loop's rate,
    each as if THREADS cores added up; bytes_per_weight 2 for bfloat16 weights. None without the
    native kernels (or on the GPU)."""
    nbytes = sum(w.size for w in weights) * bytes_per_weight
    read, fma = _machine_rates(nbytes, repeat)
    if read is None:
        return None
    flops = 2.0 * batch * sum(w.size for w in weights)
    read_us, fma_us = nbytes / (read * THREADS) / 1e3, flops / (fma * THREADS) / 1e3
    return {"us": max(read_us, fma_us), "read_us": read_us, "fma_us": fma_us, "bytes": nbytes,
            "read_GB_s": read, "fma_GFLOP_s": fma}


def bench_step(env: Env, cell: str, batch: int, calls: int) -> dict:
    xp = env.xp
    rng = np.random.default_rng(1)
    ours = OURS[cell](STEP_I, STEP_H, device=env.device, seed=1)
    served = OURS[cell](STEP_I, STEP_H, device=env.device, seed=1).freeze()    # as the service loads a model
    sd = ours.state_dict()
    x = rng.standard_normal((batch, STEP_I), dtype=np.float32)
    xs = to_device(x, env.device)
    row = {"cell": cell, "B": batch, "ours": None, "served": None, "bf16": None, "torch": None, "naive": None,
           "us": {}}
    # opt-in bfloat16 weights (float32 arithmetic): LSTM and GRU on the CPU; checked against the naive step
    # on the same weights rounded to bfloat16, to TOL
    bf16 = (OURS[cell](STEP_I, STEP_H, device=env.device, seed=1).freeze(weights="bfloat16")
            if not env.gpu and served.bf16_problem() is None else None)

    def ours_step(state):
        return ours.step(xs, state)[1]

    def served_step(state):
        return served.step(xs, state)[1]

    naive = peers.naive_step(xp, cell, sd)

    def naive_step(state):
        return naive(xs, state)[1]

    zeros = xp.zeros((batch, STEP_H), dtype=np.float32)
    naive_state0 = (zeros, zeros) if cell == "lstm" else (zeros,)
    # the baseline must compute the same thing: three steps of each from zero
    s_ours, s_served, s_naive = ours.init_state(batch), served.init_state(batch), naive_state0
    for _ in range(3):
        s_ours, s_served, s_naive = ours_step(s_ours), served_step(s_served), naive_step(s_naive)
    for name, s in (("ours", s_ours), ("ours served", s_served)):
        h = to_numpy(s[0] if cell == "lstm" else s)[0]
        err = float(np.max(np.abs(h - to_numpy(s_naive[0]))))
        if err > TOL:
            _fail(f"the naive step (vs {name})", cell, (batch, 1, STEP_I, STEP_H), err)
    jobs = {"ours": (ours_step, ours.init_state(batch), env.ours_sync),
            "served": (served_step, served.init_state(batch), env.ours_sync),
            "naive": (naive_step, naive_state0, env.ours_sync)}
    if bf16 is not None:
        rounded = peers.naive_step(xp, cell, round_weights(sd))

        def bf16_step(state):
            return bf16.step(xs, state)[1]

        s_bf16, s_rounded = bf16.init_state(batch), naive_state0
        for _ in range(3):
            s_bf16, s_rounded = bf16_step(s_bf16), rounded(xs, s_rounded)[1]
        err = float(np.max(np.abs(to_numpy(s_bf16[0] if cell == "lstm" else s_bf16)[0] - to_numpy(s_rounded[0]))))
        if err > TOL:
            _fail("the naive step on bfloat16-rounded weights (vs ours bf16)", cell, (batch, 1, STEP_I, STEP_H), err)
        jobs["bf16"] = (bf16_step, bf16.init_state(batch), env.ours_sync)
    if env.torch is not None:
        torch = env.torch
        tcell = peers.torch_cell(torch, cell, sd, env.tdev)
        tx = torch.from_numpy(x).to(env.tdev)
        tz = torch.zeros((batch, STEP_H), device=env.tdev)
        jobs["torch"] = (lambda s: tcell(tx, s), (tz, tz) if cell == "lstm" else tz, env.torch_sync)
    with env.inference():                                               # no autograd for torch's cell
        row["us"] = peers.step_us(jobs, calls)
    row.update({name: st[env.stat] for name, st in row["us"].items()})
    row["clock_us"] = max((st["clock_us"] for st in row["us"].values()), default=0.0)
    if not env.gpu:
        weights = [sd["weight_ih_l0"], sd["weight_hh_l0"]]
        row["floor"] = step_floor(weights, batch, env.floor_repeat)
        if bf16 is not None:
            row["bf16_floor"] = step_floor(weights, batch, env.floor_repeat, bytes_per_weight=2)
    return row


# -- output ------------------------------------------------------------------------------------
def _fmt(v, digits: int = 2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ratio(a, b) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def fwd_cells(row: dict) -> list[str]:
    shape = ",".join(str(v) for v in row["shape"])
    o, sv, t, r, ot, tt, bf, dn = (row.get(k) for k in ("ours_fwd", "ours_served", "torch_fwd", "ort_fwd",
                                                        "ours_train", "torch_train", "ours_bf16", "onednn_fwd"))
    return [shape, _fmt(o), _fmt(sv), _fmt(t), _fmt(r), _ratio(o, r), _ratio(sv, r), _ratio(o, t), _fmt(ot), _fmt(tt),
            _ratio(ot, tt), _fmt(bf), _ratio(bf, r), _fmt(dn), _ratio(sv, dn)]


def paired_cells(row: dict) -> list[str]:
    return [",".join(str(v) for v in row["shape"])] + [peers.format_paired(row["paired"][c]) for c, _, _ in PAIRS]


def step_cells(row: dict) -> list[str]:
    o, s, t, n, b = row["ours"], row["served"], row["torch"], row["naive"], row.get("bf16")
    f, bf = ((row.get(k) or {}).get("us") for k in ("floor", "bf16_floor"))
    return [row["cell"], str(row["B"]), _fmt(o, 1), _fmt(s, 1), _fmt(t, 1), _fmt(n, 1), _ratio(o, t), _ratio(s, t),
            _ratio(o, n), _fmt(f, 1), _ratio(s, f), _fmt(b, 1), _ratio(b, t), _fmt(bf, 1), _ratio(b, bf)]


# -- CLI ---------------------------------------------------------------------------------------
def parse_shapes(text: str) -> list[tuple[int, int, int, int]]:
    shapes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        dims = tuple(int(v) for v in part.split(","))
        if len(dims) != 4 or min(dims) < 1:
            raise argparse.ArgumentTypeError(f"a shape is four positive integers B,T,I,H, got {part!r}")
        shapes.append(dims)
    if not shapes:
        raise argparse.ArgumentTypeError("--shapes needs at least one B,T,I,H")
    return shapes


def parse_batches(text: str) -> list[int]:
    try:
        batches = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(f"--step-batches takes positive integers like 1,64,1024, got {text!r}")
    return batches


def gpu_problem() -> str | None:
    """Why ``--device gpu`` cannot run here, in words, or None when it can."""
    if gpu_available():
        return None
    cupy = peers.optional("cupy")
    if cupy is None:
        why = "CuPy is not installed (pip install -e '.[gpu]' for cupy-cuda12x)"
    else:
        why = "CuPy is installed but sees no usable CUDA device (check the driver and CUDA_VISIBLE_DEVICES)"
    return f"--device gpu needs CuPy and a visible CUDA device: {why}. Use --device cpu on this machine."


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=parse_shapes, help='B,T,I,H list separated by ";" (replaces the grid)')
    p.add_argument("--cell", choices=[*peers.CELLS, "all"], default="lstm")
    p.add_argument("--device", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--repeat", type=int, default=5, help="timed runs per measurement, after a warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch, onnxruntime and BLAS threads")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="statistic shown (both go to --json); min resists load from other processes")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the calling thread's CPU time (with --threads 1 every contestant computes on the "
                        "calling thread, so time lost to other processes does not count; a loaded machine's choice)")
    p.add_argument("--step-calls", type=int, default=2000, help="calls per single-step latency")
    p.add_argument("--step-batches", type=parse_batches,
                   help=f"batch sizes for the single-step table (default {CPU_STEP_BATCHES} on the CPU, "
                        f"{GPU_STEP_BATCHES} on the GPU)")
    p.add_argument("--sweep", choices=sorted(SWEEPS),
                   help="time a sweep over batch or hidden size instead of the grid (for the plots)")
    p.add_argument("--probe", action="store_true",
                   help="time the recurrent product (B,H)@(H,4H) alone against the core's measured peak, then stop")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="a tiny grid and few step calls (smoke test)")
    return p


PROBE_NAMES = ["openblas", "torch.mm", "mkl sgemm", "mkl packed", "onednn sgemm", "numba naive", "ours rows",
               "ours packed"]


def run_probe(env: Env, args) -> int:
    """The recurrent product alone: GFLOP/s per contestant and its share of this core's peak."""
    info = peers.machine_info(THREADS) | {"heap": HEAP}
    print(peers.machine_line(info))
    if THREADS != 1:
        print("note: the probe is meant for --threads 1 (the peak is one core's)")
    peak = bench_probe.measure_peak(args.repeat, env.torch)
    print(f"peak: FMA loop {_fmt(peak['fma_loop'], 1)} GFLOP/s, best BLAS 1024^3 {_fmt(peak['blas_square'], 1)} "
          f"GFLOP/s -> peak {peak['peak']:.1f} GFLOP/s (min of {args.repeat})", flush=True)
    rows = bench_probe.probe(args.repeat, env.torch)
    table = [[f"{r['B']}, {r['H']}"] + [
        "n/a" if r.get(n) is None else f"{r[n]:.0f} ({100 * r[n] / peak['peak']:.0f}%)" for n in PROBE_NAMES]
        for r in rows]
    peers.print_table("(B,H) @ (H,4H), float32, GFLOP/s (share of peak)", ["B, H", *PROBE_NAMES], table)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "peak": peak, "probe": rows}, indent=2))
        print(f"\nwrote {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeat < 1 or args.threads < 1 or args.step_calls < 1:
        raise SystemExit("--repeat, --threads and --step-calls must be positive")
    if args.device == "gpu" and gpu_problem():
        raise SystemExit(gpu_problem())
    if args.clock == "cpu":
        if args.threads != 1 or args.device != "cpu":
            raise SystemExit("--clock cpu measures one thread's CPU time: it needs --threads 1 on the CPU")
        peers.use_thread_clock()
        bench_probe.clock = time.thread_time
    cells = list(peers.CELLS) if args.cell == "all" else [args.cell]
    if args.shapes:
        shapes = args.shapes
    elif args.sweep:
        shapes = SWEEPS[args.sweep][args.device]
    elif args.quick:
        shapes = QUICK_SHAPES
    else:
        shapes = DEFAULT_SHAPES + (GPU_EXTRA_SHAPES if args.device == "gpu" else [])
    calls = min(args.step_calls, 100) if args.quick else args.step_calls
    if args.step_batches:
        step_batches = args.step_batches
    elif args.sweep:
        step_batches = []                                               # a sweep times sequences only
    else:
        step_batches = GPU_STEP_BATCHES if args.device == "gpu" and not args.quick else CPU_STEP_BATCHES

    if args.quick:
        peers.SETTLE_S = 0.01                                           # a smoke test, not a measurement
    elif THREADS == 1:
        peers.SETTLE_S = 0.0                                            # one thread each: no pool spins on
    env = Env(args)
    if args.probe:
        return run_probe(env, args)
    info = peers.machine_info(THREADS) | {"heap": HEAP}
    info["engine"] = engine_line(env)
    print(peers.machine_line(info))
    print(f"ours: {info['engine']}")
    if args.device == "gpu" and env.torch is None:
        print("WARNING: torch has no CUDA here, so the cuDNN columns show n/a")
    warning = peers.busy_warning(info["cores"])
    if warning:
        print(warning)
        info["busy_warning"] = warning
    print(f"device {args.device}; float32, 1 layer, unidirectional, zero state; {args.stat} of {args.repeat} "
          f"({args.clock} clock) "
          f"contestants taking turns, each timed call after {env.warmup} untimed; outputs checked against torch to {TOL:g}",
          flush=True)
    results = {"machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "forward": {}, "step": []}
    for cell in cells:
        rows = []
        for shape in shapes:
            row = bench_shape(env, cell, shape, args.repeat)
            checks = ", ".join(f"{k} {v:.1e}" for k, v in row["check"].items())
            print(f"  {cell} {','.join(map(str, shape))}: {checks or 'no peer to check against'}", flush=True)
            rows.append(row)
        results["forward"][cell] = rows
        peers.print_table(f"{cell.upper()} forward / training step (ms, {args.device})", FWD_HEADERS,
                          [fwd_cells(r) for r in rows])
        peers.print_table(f"{cell.upper()} ratios round by round: median [25th-75th percentile] of {args.repeat} rounds",
                          PAIRED_HEADERS, [paired_cells(r) for r in rows])
    for cell in cells:
        for batch in step_batches:
            results["step"].append(bench_step(env, cell, batch, calls))
    if results["step"]:
        clock = max(r.get("clock_us", 0.0) for r in results["step"])
        peers.print_table(f"Single step, I={STEP_I} H={STEP_H} (µs, {args.stat} of {calls} calls, each less the "
                          f"clock's own {clock:.2f} µs, {args.device})", STEP_HEADERS,
                          [step_cells(r) for r in results["step"]])
        for r in results["step"]:
            f = r.get("floor")
            if f:
                print(f"  floor of {r['cell']} B={r['B']}: the longer of {f['bytes'] / 2**20:.2f} MiB of weights read "
                      f"once at {f['read_GB_s']:.0f} GB/s a core ({f['read_us']:.1f} µs) and its FMAs at "
                      f"{f['fma_GFLOP_s']:.0f} GFLOP/s a core ({f['fma_us']:.1f} µs), on {THREADS} core(s)")
            f = r.get("bf16_floor")
            if f:
                print(f"  bf16 floor of {r['cell']} B={r['B']}: {f['bytes'] / 2**20:.2f} MiB read at "
                      f"{f['read_GB_s']:.0f} GB/s ({f['read_us']:.1f} µs), the same FMAs ({f['fma_us']:.1f} µs)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
