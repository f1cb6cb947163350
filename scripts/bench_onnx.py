#!/usr/bin/env python
"""Our ONNX LSTM / GRU / RNN kernels against onnxruntime's, in the same run.

    python -m scripts.bench_onnx                               # default grid, 1 thread each
    python -m scripts.bench_onnx --threads 2 --repeat 15
    python -m scripts.bench_onnx --ops LSTM --shapes "32,100,64,256" --directions bidirectional
    python -m scripts.bench_onnx --ops LSTM,GRU --bf16                # also our sessions on bfloat16 weights

Each case is one recurrent node (W, R, B as initializers, zero initial state) fed X (T, B, I)
in float32; ``ragged`` cases add sequence_lens spread over [T/2, T]. Before timing, our outputs
are checked against onnxruntime's (1e-4). The runtimes take turns as in ``bench_core``
(``bench_peers.blocks_ms``: a pause, an untimed call, the timed one; the first alternating by
round), so neither runs while the other's idle workers still spin: at 2 threads onnxruntime's
kept a core busy after each call, and ours, timed right after it, did not scale (26 ms at 2
threads against 28 at 1, LSTM B=32; 17.5 timed alone). Times are the best of ``--repeat`` turns
(the stable statistic on shared cores); ratio = ours / onnxruntime (lower is better, 1.0 is
parity). Both runtimes get ``--threads`` threads (the BLAS pool and the kernels' team for ours,
intra-op threads for onnxruntime).

``--bf16`` adds a third contestant to the LSTM and GRU rows, our session made with
``weights="bfloat16"``, checked first against our float32 session on the graph with W and R
rounded to bfloat16 (1e-4: the same arithmetic on the same weights), and ``bf16/ort``, its paired
ratio to onnxruntime.
"""
from __future__ import annotations

from scripts import blas_threads  # first: --threads sizes the BLAS pool before NumPy loads

import argparse

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from model_core.cells.native_bf16 import round_bf16
from model_core.onnx import InferenceSession
from model_core.onnx.ops.recurrent import BF16_OPS          # the nodes InferenceSession(weights="bfloat16") runs
from model_core.onnx.ops.recurrent_loops import GATES
from model_core.threads import set_num_threads
from scripts import bench_peers as peers

set_num_threads(blas_threads.threads(default=1))           # our kernels' team and OpenBLAS

DEFAULT_SHAPES = "1,100,64,256;32,100,64,256;16,100,128,128"


def build(op: str, direction: str, B: int, T: int, I: int, H: int, ragged: bool, seed: int = 0,
          rounded: bool = False):
    """(model bytes, feed) for one node; ``rounded``: W and R rounded to bfloat16 (the same draw)."""
    rng = np.random.default_rng(seed)
    D, G = (2 if direction == "bidirectional" else 1), GATES[op]
    scale = 1 / np.sqrt(H)
    weights = [(rng.standard_normal((D, G * H, I)) * scale).astype(np.float32),
               (rng.standard_normal((D, G * H, H)) * scale).astype(np.float32)]
    if rounded:
        weights = [round_bf16(w) for w in weights]
    inits = [numpy_helper.from_array(weights[0], "W"), numpy_helper.from_array(weights[1], "R"),
             numpy_helper.from_array((rng.standard_normal((D, 2 * G * H)) * scale).astype(np.float32), "B")]
    attrs = {"hidden_size": H, "direction": direction}
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    inputs = ["X", "W", "R", "B"] + (["sequence_lens"] if ragged else [])
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, inputs, outputs, **attrs)
    graph_inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, B, I])]
    if ragged:
        graph_inputs.append(helper.make_tensor_value_info("sequence_lens", TensorProto.INT32, [B]))
    graph = helper.make_graph([node], "bench", graph_inputs,
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=7)
    feed = {"X": rng.standard_normal((T, B, I)).astype(np.float32)}
    if ragged:
        feed["sequence_lens"] = rng.integers(T // 2, T + 1, B).astype(np.int32)
        feed["sequence_lens"][0] = T
    return model.SerializeToString(), feed


def timed(jobs: dict, repeat: int) -> dict:
    """``bench_peers.blocks_ms`` for ``{name: fn}``: best-of-``repeat`` milliseconds and the times round
    by round (for ``paired_ratio``), from ``repeat`` rounds of turns."""
    return peers.blocks_ms({name: (fn, peers.no_sync) for name, fn in jobs.items()}, repeat, warmup=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1", help="threads for each runtime (default 1)")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--ops", default="LSTM,GRU,RNN")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help='"B,T,I,H;..."')
    parser.add_argument("--directions", default="forward,bidirectional")
    parser.add_argument("--no-ragged", action="store_true", help="skip the sequence_lens cases")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the calling thread's CPU time (1 thread only; robust on a loaded machine)")
    parser.add_argument("--bf16", action="store_true",
                        help='also time our LSTM and GRU sessions made with weights="bfloat16"')
    args = parser.parse_args()
    if args.clock == "cpu":
        if args.threads != "1":
            raise SystemExit("--clock cpu needs --threads 1: every runtime then computes on the calling thread")
        peers.use_thread_clock()
    import onnxruntime as ort  # the reference extra only

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = int(args.threads)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes.split(";")]
    heap = peers.keep_heap()                            # before either runtime allocates
    print(f"threads={args.threads} repeat={args.repeat} clock={args.clock} (best-of-repeat ms, interleaved; "
          f"ratio = ours / onnxruntime of the two bests; paired: the median [25th-75th percentile] of the "
          f"ratios round by round); heap: {heap}")
    print(f"{'op':<5} {'direction':<14} {'B,T,I,H':<16} {'lengths':<8} {'ours':>9} {'ort':>9} {'ratio':>7} "
          f"{'paired':>18}" + (f" {'bf16':>9} {'bf16/ort':>18}" if args.bf16 else ""))
    ratios, paired, bf16_paired = [], [], []
    for op in args.ops.split(","):
        for direction in args.directions.split(","):
            for B, T, I, H in shapes:
                for ragged in (False, True) if not args.no_ragged else (False,):
                    model, feed = build(op, direction, B, T, I, H, ragged)
                    ours = InferenceSession(model)
                    ref = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
                    for got, want in zip(ours.run(None, feed), ref.run(None, feed)):
                        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
                    jobs = {"ours": lambda: ours.run(None, feed), "ort": lambda: ref.run(None, feed)}
                    if args.bf16 and op in BF16_OPS:
                        bf16 = InferenceSession(model, weights="bfloat16")
                        on_rounded = InferenceSession(build(op, direction, B, T, I, H, ragged, rounded=True)[0])
                        for got, want in zip(bf16.run(None, feed), on_rounded.run(None, feed)):
                            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
                        jobs["bf16"] = lambda: bf16.run(None, feed)
                    ms = timed(jobs, args.repeat)
                    t_ours, t_ort = ms["ours"]["min"], ms["ort"]["min"]
                    pr = peers.paired_ratio(ms["ours"]["runs"], ms["ort"]["runs"])
                    ratios.append(t_ours / t_ort)
                    paired.append(pr["median"])
                    row = (f"{op:<5} {direction:<14} {f'{B},{T},{I},{H}':<16} {'ragged' if ragged else 'full':<8} "
                           f"{t_ours:9.2f} {t_ort:9.2f} {t_ours / t_ort:7.2f} {peers.format_paired(pr):>18}")
                    if "bf16" in ms:
                        pb = peers.paired_ratio(ms["bf16"]["runs"], ms["ort"]["runs"])
                        bf16_paired.append(pb["median"])
                        row += f" {ms['bf16']['min']:9.2f} {peers.format_paired(pb):>18}"
                    elif args.bf16:
                        row += f" {'n/a':>9} {'n/a':>18}"
                    print(row, flush=True)
    print(f"geometric mean ratio {float(np.exp(np.mean(np.log(ratios)))):.2f}, "
          f"paired {float(np.exp(np.mean(np.log(paired)))):.2f}"
          + (f"; bf16/ort paired {float(np.exp(np.mean(np.log(bf16_paired)))):.2f}" if bf16_paired else ""))


if __name__ == "__main__":
    main()
