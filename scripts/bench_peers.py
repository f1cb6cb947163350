"""Helpers for ``scripts/bench_core.py``: the peers (torch, onnxruntime, a naive step), machine info,
timing and tables.

``bench_core`` imports this only after it has pinned the BLAS thread count, so importing NumPy
here is safe. Every peer is optional: ``optional()`` returns None for a package that is missing,
and the caller shows that peer as "n/a".

All weights come from one place, a model_core layer's ``state_dict()`` in PyTorch's names and gate
order; the helpers below convert them for torch (a straight copy) and for ONNX (gates reordered).
"""
from __future__ import annotations

import importlib
import os
import platform
import sys
import time

import numpy as np

from model_core.heap import keep_freed_memory
from model_core.onnx.export_weights import reorder_gates
from scripts import onednn_probe

CELLS = ("lstm", "gru", "rnn")
TORCH_LAYER = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}
TORCH_CELL = {"lstm": "LSTMCell", "gru": "GRUCell", "rnn": "RNNCell"}
ONNX_OP = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


def optional(name: str):
    """The module, or None when it is not installed (or fails to load)."""
    try:
        return importlib.import_module(name)
    except Exception:
        return None


# -- machine -----------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _blas() -> str:
    tpc = optional("threadpoolctl")
    if tpc is not None:
        pools = [f"{p.get('internal_api')} {p.get('version')} ({p.get('num_threads')} threads)"
                 for p in tpc.threadpool_info()]
        if pools:
            return "; ".join(pools)
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:
        return "unknown BLAS"


def machine_info(threads: int) -> dict:
    """CPU, visible cores, library versions and BLAS, for the header line and the JSON."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch, ort = optional("torch"), optional("onnxruntime")
    return {
        "cpu": _cpu_model(), "cores": cores, "threads": threads, "python": platform.python_version(),
        "numpy": np.__version__, "blas": _blas(),
        "torch": torch.__version__ if torch else "n/a",
        "onnxruntime": ort.__version__ if ort else "n/a",
        "onednn": onednn_probe.version(),
        "blas_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ},
    }


def _cpu_times() -> tuple[int, int]:
    with open("/proc/stat", encoding="utf-8") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]                           # total, idle + iowait


def busy_warning(cores: int, window_s: float = 0.5) -> str | None:
    """A warning when other processes keep the CPUs busy right now (sampled over ``window_s``)."""
    try:
        total0, idle0 = _cpu_times()
        time.sleep(window_s)
        total1, idle1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    busy = 1.0 - (idle1 - idle0) / max(1, total1 - total0)
    if busy < 0.25:
        return None
    return (f"WARNING: the CPUs were {busy:.0%} busy before starting ({cores} cores): other processes compete, "
            "and a thread pool that waits on a descheduled worker loses up to a scheduler slice per call. "
            "Trust the ratios more than the times, and re-run when the machine is quiet.")


def keep_heap() -> str:
    """Every contestant in the process runs with freed memory kept (``model_core.keep_freed_memory``:
    what our ``InferenceSession`` and onnxruntime's arena do by default, and the project's training
    and service processes set), so that no one's timing holds another's page faults; the header's
    words for it."""
    return "freed memory kept (model_core.keep_freed_memory)" if keep_freed_memory() else "the C library's policy"


def machine_line(info: dict) -> str:
    return (f"{info['cpu']} | {info['cores']} cores visible, threads={info['threads']} | "
            f"python {info['python']} | numpy {info['numpy']} ({info['blas']}) | "
            f"torch {info['torch']} | onnxruntime {info['onnxruntime']} | onednn {info['onednn']}"
            + (f" | heap: {info['heap']}" if "heap" in info else ""))


# -- torch -------------------------------------------------------------------------------------
def torch_layer(torch, cell: str, sd: dict, device: str):
    """``torch.nn.LSTM/GRU/RNN`` (one layer, time-major) holding the weights in ``sd``."""
    input_size, hidden = sd["weight_ih_l0"].shape[1], sd["weight_hh_l0"].shape[1]
    mod = getattr(torch.nn, TORCH_LAYER[cell])(input_size, hidden)
    mod.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()})
    return mod.to(device)


def torch_cell(torch, cell: str, sd: dict, device: str):
    """``torch.nn.LSTMCell/GRUCell/RNNCell`` with the layer-0 weights of ``sd``."""
    input_size, hidden = sd["weight_ih_l0"].shape[1], sd["weight_hh_l0"].shape[1]
    mod = getattr(torch.nn, TORCH_CELL[cell])(input_size, hidden)
    mod.load_state_dict({k.removesuffix("_l0"): torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()})
    return mod.to(device)


# -- onnxruntime -------------------------------------------------------------------------------
def onnx_model_bytes(onnx, cell: str, sd: dict) -> bytes:
    """A one-node ONNX graph (X (T, B, I) -> Y (T, 1, B, H), Y_h) with W/R/B initializers."""
    from onnx import TensorProto, helper, numpy_helper  # only when onnx is present

    hidden = sd["weight_hh_l0"].shape[1]
    input_size = sd["weight_ih_l0"].shape[1]

    W = reorder_gates(sd["weight_ih_l0"], cell)[None]                   # (1, G*H, I) in ONNX gate order
    R = reorder_gates(sd["weight_hh_l0"], cell)[None]                   # (1, G*H, H)
    B = np.concatenate([reorder_gates(sd["bias_ih_l0"], cell), reorder_gates(sd["bias_hh_l0"], cell)])[None]  # (1, 2*G*H)
    attrs = {"hidden_size": hidden}
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    node = helper.make_node(ONNX_OP[cell], ["X", "W", "R", "B"], ["Y", "Y_h"], **attrs)
    graph = helper.make_graph(
        [node], f"bench_{cell}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["T", "B", input_size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["T", 1, "B", hidden]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "B", hidden])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(a, dtype=np.float32), name)
                     for name, a in (("W", W), ("R", R), ("B", B))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8                                                # readable by any recent ORT
    onnx.checker.check_model(model)
    return model.SerializeToString()


class OrtRunner:
    """An InferenceSession over ``onnx_model_bytes``; ``run(x)`` returns Y as (T, B, H).

    On the GPU (CUDA execution provider) the input and output stay on the device through
    IO binding, so the timing excludes host/device copies, as it does for ours and cuDNN.
    """

    def __init__(self, ort, model_bytes: bytes, threads: int, gpu: bool):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CUDAExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        self.ort, self.gpu = ort, gpu
        self.sess = ort.InferenceSession(model_bytes, so, providers=providers)
        self._binding = None

    def bind(self, x: np.ndarray) -> None:
        """GPU only: put ``x`` on the device once, before timing."""
        if self.gpu:
            io = self.sess.io_binding()
            io.bind_ortvalue_input("X", self.ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
            io.bind_output("Y", "cuda")
            io.bind_output("Y_h", "cuda")
            self._binding = io

    def run(self, x: np.ndarray) -> None:
        if self._binding is not None:
            self.sess.run_with_iobinding(self._binding)
        else:
            self.sess.run(["Y"], {"X": x})

    def output(self, x: np.ndarray) -> np.ndarray:
        """Y as a host (T, B, H) array, for the correctness check."""
        return self.sess.run(["Y"], {"X": x})[0][:, 0]


def ort_usable(ort, gpu: bool) -> bool:
    provider = "CUDAExecutionProvider" if gpu else "CPUExecutionProvider"
    return ort is not None and provider in ort.get_available_providers()


# -- the straightforward step ------------------------------------------------------------------
def naive_step(xp, cell: str, sd: dict):
    """The straightforward step of PERF_NOTES: separate exp-based sigmoids and tanh, new temporaries.

    Returns ``step(x (B, I), state) -> (h (B, H), state)``; state is ``(h, c)`` or ``(h,)``.
    """
    W_ih, W_hh = xp.asarray(sd["weight_ih_l0"]), xp.asarray(sd["weight_hh_l0"])
    b_ih, b_hh = xp.asarray(sd["bias_ih_l0"]), xp.asarray(sd["bias_hh_l0"])
    H = W_hh.shape[1]

    def sigmoid(z):
        return 1.0 / (1.0 + xp.exp(-z))

    def lstm(x, state):
        h, c = state
        z = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh                     # (B, 4H)
        i, f = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H])
        g, o = xp.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c = f * c + i * g
        h = o * xp.tanh(c)
        return h, (h, c)

    def gru(x, state):
        (h,) = state
        gx, gh = x @ W_ih.T + b_ih, h @ W_hh.T + b_hh                 # (B, 3H) each
        r = sigmoid(gx[:, :H] + gh[:, :H])
        z = sigmoid(gx[:, H:2 * H] + gh[:, H:2 * H])
        n = xp.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1.0 - z) * n + z * h
        return h, (h,)

    def rnn(x, state):
        (h,) = state
        h = xp.tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)            # (B, H)
        return h, (h,)

    return {"lstm": lstm, "gru": gru, "rnn": rnn}[cell]


# -- timing ------------------------------------------------------------------------------------
SETTLE_S = 0.3  # seconds idle before each timed turn: longer than OpenBLAS's ~0.1 s worker spin-wait
# Untimed single steps after that idle, before a turn's timed ones: this VM's cores come back slowly
# (a B=1 LSTM step ran 34, 24, 20 µs over its first three hundred calls after 0.3 s asleep, on one thread
# or two), so a turn that started timing at once measured the wake-up, twice the steady step at 2 threads.
STEP_WARM_S = 0.03


def no_sync() -> None:
    """The ``sync`` of a contestant whose calls return when done (the CPU): nothing to wait for."""


class ThreadClock:
    """``time`` as this module uses it, with the calling thread's CPU clock in place of the wall clock."""
    perf_counter = staticmethod(time.thread_time)
    perf_counter_ns = staticmethod(time.thread_time_ns)
    sleep = staticmethod(time.sleep)


def use_thread_clock() -> None:
    """Every timer here (``blocks_ms``, ``step_us``) on the calling thread's CPU clock (``--clock cpu``:
    with one thread every contestant computes on the calling thread)."""
    global time
    time = ThreadClock()


def settle() -> None:
    """Let the previous contestant's idle worker threads stop spinning before the next one runs.

    On a machine with few cores, a library's workers keep spinning for a while after a call
    (OpenBLAS for ~2^28 cycles); the next library's own pool then waits on a worker that has no
    core, and loses a scheduler slice per call. Run back to back, each library is slowed by the last.
    """
    time.sleep(SETTLE_S)


def _stats(times_s, unit: float) -> dict:
    """Median and min of times in seconds, converted by ``unit`` (1e3 for ms, 1e6 for µs)."""
    return {"median": float(np.median(times_s)) * unit, "min": float(np.min(times_s)) * unit}


def paired_ratio(ours, peer) -> dict | None:
    """a ÷ b round by round (each round's two turns a few hundred ms apart), summarised as the median
    and the 25th-75th percentiles, or None without both.

    A burst of outside load lasts seconds to minutes here, so it usually lands on both turns of a
    round and cancels in their ratio; a ratio of two minima compares two extremes that each moved
    with the load (two contestants running the same kernel came out up to 23% apart that way)."""
    if not ours or not peer:
        return None
    r = np.asarray(ours, dtype=float) / np.asarray(peer, dtype=float)
    p25, p50, p75 = np.percentile(r, [25, 50, 75])
    return {"median": float(p50), "p25": float(p25), "p75": float(p75), "rounds": int(r.size)}


def format_paired(p: dict | None) -> str:
    """``paired_ratio``'s summary as the tables print it: median [25th-75th percentile]."""
    return "n/a" if p is None else f"{p['median']:.2f} [{p['p25']:.2f}-{p['p75']:.2f}]"


def _turns(names: list[str], r: int) -> list[str]:
    """The contestants' order in round r: rotated by one each round, so that none always follows the same one."""
    k = r % len(names)
    return names[k:] + names[:k]


def blocks_ms(jobs: dict, repeat: int, warmup: int) -> dict:
    """``{name: {"median", "min", "runs"}}`` in ms (``runs``: the times round by round, for
    ``paired_ratio``) for each ``name: (fn, sync)``: ``repeat`` rounds that give every contestant one
    turn, in an order that rotates by round; a turn is ``warmup`` untimed calls (at least one), then
    the timed one.

    In turns, not one contestant's block after another's: on a shared machine the load from other
    processes comes in bursts of seconds to minutes (a peer's own time moved by 40% between runs
    minutes apart), and a burst then lands on every contestant alike instead of on one block. The
    untimed call of each turn puts the contestant's caches and thread pool back in the state that
    back-to-back calls see: right after ``settle``'s pause, or after another library's call, the first
    call pays for waking them (with 2 threads, 2-5x the time of the next one here)."""
    names = list(jobs)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeat):
        for name in _turns(names, r):
            fn, sync = jobs[name]
            settle()
            for _ in range(max(1, warmup)):
                fn()
                sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    return {name: {**_stats(ts, 1e3), "runs": [t * 1e3 for t in ts]} for name, ts in times.items()}


def clock_cost_ns(pairs: int = 2000) -> int:
    """The least two back-to-back readings of the benchmark's clock differ by: what reading it around
    one call adds to that call's time. The thread CPU clock is a system call (0.57 µs here, 4% of a
    15 µs step), the wall clock a vDSO read (~60 ns)."""
    diffs = []
    for _ in range(max(pairs, 1)):
        a = time.perf_counter_ns()
        diffs.append(time.perf_counter_ns() - a)
    return max(min(diffs), 0)


def step_us(jobs: dict, calls: int, rounds: int = 10) -> dict:
    """``{name: {"median", "min", "clock_us"}}`` latency in µs of ``state = step(state)`` for each
    ``name: (step, state0, sync)``.

    Each call is timed alone, as a streaming session waits for every step; the contestants take
    turns in ``rounds`` slices of the calls (as ``blocks_ms``, so a burst of outside load is shared),
    each after ``settle`` and ``STEP_WARM_S`` of its own untimed calls: the steady step, not a wake-up.
    Each time is less the clock's own cost (``clock_cost_ns``, given as ``clock_us``), every
    contestant alike.
    """
    cost = clock_cost_ns()
    names, states = list(jobs), {name: jobs[name][1] for name in jobs}
    for name in names:                                                  # warm-up
        step, _, sync = jobs[name]
        settle()
        for _ in range(min(200, calls)):
            states[name] = step(states[name])
        sync()
    times = {name: [] for name in names}
    rounds = max(1, min(rounds, calls))
    for r in range(rounds):
        n = calls * (r + 1) // rounds - calls * r // rounds
        for name in _turns(names, r):
            step, _, sync = jobs[name]
            settle()
            state = states[name]
            warm_until = time.perf_counter() + (STEP_WARM_S if SETTLE_S else 0.0)
            while time.perf_counter() < warm_until:
                state = step(state)
                sync()
            for _ in range(n):
                t0 = time.perf_counter_ns()
                state = step(state)
                sync()
                times[name].append(max(time.perf_counter_ns() - t0 - cost, 0))
            states[name] = state
    return {name: {**_stats(np.array(ts) / 1e9, 1e6), "clock_us": cost / 1e3} for name, ts in times.items()}


# -- tables ----------------------------------------------------------------------------------
def print_table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(r[k]) for r in rows]) for k, h in enumerate(headers)]
    rich = optional("rich.table")
    if rich is not None:
        from rich.console import Console  # optional pretty output

        table = rich.Table(title=title)
        for k, h in enumerate(headers):
            table.add_column(h, justify="left" if k == 0 else "right")
        for r in rows:
            table.add_row(*r)
        console = Console()
        # a log gets the table's natural width (cells, padding and borders): no ellipses, no headers wrapped
        natural = sum(widths) + 3 * len(widths) + 1
        (console if console.is_terminal else Console(width=max(200, natural))).print(table)
        return

    def line(cells):
        return "  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))

    print(f"\n{title}\n{line(headers)}\n{'  '.join('-' * w for w in widths)}")
    for r in rows:
        print(line(r))
    sys.stdout.flush()
