"""oneDNN as a peer, through ctypes: its ``dnnl_sgemm`` for the recurrent-product probe
(``bench_probe``) and its LSTM and GRU primitives for ``bench_core``'s forward table. Never a
dependency: the benchmarks look for oneDNN 2.x's C library (Debian's ``libdnnl2``, built with
OpenMP and without SYCL: ``apt install libdnnl2``, ~20 MB; or ``DNNL_LIB=/path/libdnnl.so.2``) and
leave its columns out when there is none.

    sudo apt install libdnnl2
    python -m scripts.bench_core --cell all --threads 1 --stat min --clock cpu

The primitives run as onnxruntime's sessions do: forward inference, weights reordered once into
the layout the primitive asks for (``format_tag_any``, oneDNN's packed GEMM), zero initial state,
the whole sequence in one call. The LSTM's gates are torch's order (i, f, g, o); the GRU is
oneDNN's linear-before-reset GRU, torch's, with the gates reordered to oneDNN's (u, r, o).

The constants below are oneDNN 2.6's (``dnnl_types.h``); oneDNN 3 changed the C API (opaque
memory descriptors), so another major version is left out with the reason.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

import numpy as np

from model_core.cells.native_weights import ptr

# dnnl_types.h (2.6): data type, format tags, propagation kind, direction, queries, engine, stream
F32, ANY, TNC, LDIGO, LDGO = 3, 1, 4, 7, 5
FORWARD_INFERENCE, LEFT2RIGHT = 96, 0
QUERY_WEIGHTS_MD = 131
CPU, STREAM_DEFAULT = 1, 1
ARG_SRC_LAYER, ARG_DST_LAYER, ARG_WEIGHTS_LAYER, ARG_WEIGHTS_ITER, ARG_BIAS = 1, 17, 33, 34, 41
ARG_FROM, ARG_TO = 1, 17
ALLOCATE = ctypes.c_void_p(ctypes.c_size_t(-1).value)          # DNNL_MEMORY_ALLOCATE
# dnnl_memory_desc_t is 696 bytes and dnnl_rnn_desc_t 15,344 in 2.6: opaque buffers with room
MD = ctypes.c_int64 * 128
RNN_DESC = ctypes.c_int64 * 2304
_vp = ctypes.c_void_p


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]


class _ExecArg(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_int), ("memory", _vp)]


def _check(status: int, what: str) -> None:
    if status != 0:
        raise RuntimeError(f"oneDNN: {what} failed (dnnl_status_t {status})")


def find() -> tuple[ctypes.CDLL | None, str]:
    """(libdnnl, its version) or (None, why not)."""
    candidates = [os.environ.get("DNNL_LIB"), "libdnnl.so.2", ctypes.util.find_library("dnnl")]
    for path in filter(None, candidates):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.dnnl_version.restype = ctypes.POINTER(_Version)
        v = lib.dnnl_version().contents
        version = f"{v.major}.{v.minor}.{v.patch}"
        if v.major != 2:
            return None, f"oneDNN {version} found, but only the 2.x C API is driven here"
        _declare(lib)
        return lib, version
    return None, "no libdnnl.so.2 (apt install libdnnl2, or DNNL_LIB=path)"


@functools.cache
def _found() -> tuple[ctypes.CDLL | None, str]:
    return find()


def load() -> ctypes.CDLL | None:
    """libdnnl (2.x), or None; loaded once."""
    return _found()[0]


def version() -> str:
    """oneDNN's version for a benchmark's header, or "n/a" and why."""
    lib, what = _found()
    return what if lib is not None else f"n/a ({what})"


def _declare(lib: ctypes.CDLL) -> None:
    i64, c = ctypes.c_int64, ctypes.c_char
    lib.dnnl_sgemm.argtypes = [c, c, i64, i64, i64, ctypes.c_float, _vp, i64, _vp, i64, ctypes.c_float, _vp, i64]
    lib.dnnl_memory_desc_init_by_tag.argtypes = [_vp, ctypes.c_int, ctypes.POINTER(i64), ctypes.c_int, ctypes.c_int]
    lib.dnnl_engine_create.argtypes = [ctypes.POINTER(_vp), ctypes.c_int, ctypes.c_size_t]
    lib.dnnl_stream_create.argtypes = [ctypes.POINTER(_vp), _vp, ctypes.c_uint]
    lib.dnnl_lstm_forward_desc_init.argtypes = [_vp, ctypes.c_int, ctypes.c_int] + [_vp] * 9 + [ctypes.c_uint]
    lib.dnnl_lbr_gru_forward_desc_init.argtypes = [_vp, ctypes.c_int, ctypes.c_int] + [_vp] * 7 + [ctypes.c_uint]
    lib.dnnl_primitive_desc_create.argtypes = [ctypes.POINTER(_vp), _vp, _vp, _vp, _vp]
    lib.dnnl_primitive_desc_query_md.restype = _vp
    lib.dnnl_primitive_desc_query_md.argtypes = [_vp, ctypes.c_int, ctypes.c_int]
    lib.dnnl_primitive_create.argtypes = [ctypes.POINTER(_vp), _vp]
    lib.dnnl_memory_create.argtypes = [ctypes.POINTER(_vp), _vp, _vp, _vp]
    lib.dnnl_reorder_primitive_desc_create.argtypes = [ctypes.POINTER(_vp), _vp, _vp, _vp, _vp, _vp]
    lib.dnnl_primitive_execute.argtypes = [_vp, _vp, ctypes.c_int, ctypes.POINTER(_ExecArg)]
    lib.dnnl_stream_wait.argtypes = [_vp]
    lib.dnnl_memory_set_data_handle.argtypes = [_vp, _vp]
    for name in ("primitive", "primitive_desc", "memory", "stream", "engine"):
        getattr(lib, f"dnnl_{name}_destroy").argtypes = [_vp]


def set_threads(n: int) -> None:
    """oneDNN's OpenMP threads: the process's libgomp, which our kernels share but do not read
    (they pass their own count to every parallel region)."""
    try:
        ctypes.CDLL("libgomp.so.1").omp_set_num_threads(int(n))
    except OSError:
        pass


# -- the product: dnnl_sgemm -------------------------------------------------------------------
def sgemm_jobs(lib: ctypes.CDLL, h: np.ndarray, wt: np.ndarray, out: np.ndarray) -> dict:
    """``out = h @ wt`` by oneDNN's row-major sgemm."""
    m, k = h.shape
    n = wt.shape[1]
    hp, wp, op = ptr(h), ptr(wt), ptr(out)
    return {"onednn sgemm": lambda: lib.dnnl_sgemm(b"N", b"N", m, n, k, 1.0, hp, k, wp, n, 0.0, op, n)}


# -- the recurrent primitives ------------------------------------------------------------------
class Recurrent:
    """A unidirectional one-layer LSTM or GRU forward (inference) for (T, B, I) float32 inputs,
    from torch's parameter names and shapes; ``run(x)`` returns y (T, B, H), a buffer reused."""

    def __init__(self, lib: ctypes.CDLL, cell: str, state_dict: dict, T: int, B: int):
        if cell not in ("lstm", "gru"):
            raise ValueError(f"oneDNN's peer runs lstm and gru, not {cell!r}")
        self.lib, self._keep, self._owned = lib, [], []          # _owned: (kind, handle), destroyed in order
        w_ih, w_hh = (np.asarray(state_dict[k], np.float32) for k in ("weight_ih_l0", "weight_hh_l0"))
        b_ih, b_hh = (np.asarray(state_dict[k], np.float32) for k in ("bias_ih_l0", "bias_hh_l0"))
        G = 4 if cell == "lstm" else 3
        H, I = w_hh.shape[1], w_ih.shape[1]
        order = [0, 1, 2, 3] if cell == "lstm" else [1, 0, 2]        # torch (r, z, n) -> oneDNN (u, r, o)

        def gates(w):                                                 # (G*H, K) -> (K, G, H): ldigo
            return np.ascontiguousarray(w.reshape(G, H, -1)[order].transpose(2, 0, 1))

        wl, wi = gates(w_ih), gates(w_hh)
        if cell == "lstm":
            bias = (b_ih + b_hh).reshape(G, H)
        else:                                                         # u, r: both biases; o: b_in; then b_hn
            bi, bh = b_ih.reshape(G, H)[order], b_hh.reshape(G, H)[order]
            bias = np.concatenate([bi[:2] + bh[:2], bi[2:], bh[2:]])
        self.bias = np.ascontiguousarray(bias, np.float32)
        self.y = np.empty((T, B, H), np.float32)
        self.x_shape = (T, B, I)

        engine, stream = _vp(), _vp()
        _check(lib.dnnl_engine_create(ctypes.byref(engine), CPU, 0), "engine")
        self._owned.append(("engine", engine))
        _check(lib.dnnl_stream_create(ctypes.byref(stream), engine, STREAM_DEFAULT), "stream")
        self._owned.append(("stream", stream))
        self.engine, self.stream = engine, stream
        src, dst = self._md([T, B, I], TNC), self._md([T, B, H], TNC)
        wl_any, wi_any = self._md([1, 1, I, G, H], ANY), self._md([1, 1, H, G, H], ANY)
        bias_md = self._md([1, 1, len(self.bias), H], LDGO)
        desc = RNN_DESC()
        if cell == "lstm":
            _check(lib.dnnl_lstm_forward_desc_init(desc, FORWARD_INFERENCE, LEFT2RIGHT, src, None, None, wl_any,
                                                   wi_any, bias_md, dst, None, None, 0), "lstm desc")
        else:
            _check(lib.dnnl_lbr_gru_forward_desc_init(desc, FORWARD_INFERENCE, LEFT2RIGHT, src, None, wl_any,
                                                      wi_any, bias_md, dst, None, 0), "lbr_gru desc")
        pd = _vp()
        _check(lib.dnnl_primitive_desc_create(ctypes.byref(pd), desc, None, engine, None), "primitive desc")
        self._owned.append(("primitive_desc", pd))
        self.prim = self._primitive(pd)
        # the weights reordered once into the primitive's own layout, as a session prepacks them
        self.w_layer = self._reordered(wl, self._md([1, 1, I, G, H], LDIGO),
                                       lib.dnnl_primitive_desc_query_md(pd, QUERY_WEIGHTS_MD, 0))
        self.w_iter = self._reordered(wi, self._md([1, 1, H, G, H], LDIGO),
                                      lib.dnnl_primitive_desc_query_md(pd, QUERY_WEIGHTS_MD, 1))
        self.m_bias = self._memory(bias_md, ptr(self.bias))
        self.m_src = self._memory(src, 0)                             # no buffer: run() hands x in
        self.m_dst = self._memory(dst, ptr(self.y))

    def _md(self, dims: list[int], tag: int) -> MD:
        md = MD()
        arr = (ctypes.c_int64 * len(dims))(*dims)
        _check(self.lib.dnnl_memory_desc_init_by_tag(md, len(dims), arr, F32, tag), f"memory desc {dims}")
        self._keep.append(md)
        return md

    def _primitive(self, pd) -> _vp:
        prim = _vp()
        _check(self.lib.dnnl_primitive_create(ctypes.byref(prim), pd), "primitive")
        self._owned.append(("primitive", prim))
        return prim

    def _memory(self, md, data) -> _vp:
        mem = _vp()
        _check(self.lib.dnnl_memory_create(ctypes.byref(mem), md, self.engine, data if data is not None else ALLOCATE),
               "memory")
        self._owned.append(("memory", mem))
        return mem

    def _execute(self, prim, args: list[tuple[int, _vp]]) -> None:
        arr = (_ExecArg * len(args))(*[_ExecArg(a, m) for a, m in args])
        _check(self.lib.dnnl_primitive_execute(prim, self.stream, len(args), arr), "execute")
        _check(self.lib.dnnl_stream_wait(self.stream), "wait")

    def _reordered(self, data: np.ndarray, user_md, want_md) -> _vp:
        self._keep.append(data)
        src, dst = self._memory(user_md, ptr(data)), self._memory(want_md, None)
        rpd = _vp()
        _check(self.lib.dnnl_reorder_primitive_desc_create(ctypes.byref(rpd), user_md, self.engine, want_md,
                                                           self.engine, None), "reorder desc")
        self._owned.append(("primitive_desc", rpd))
        self._execute(self._primitive(rpd), [(ARG_FROM, src), (ARG_TO, dst)])
        return dst

    def run(self, x: np.ndarray) -> np.ndarray:
        if x.shape != self.x_shape or x.dtype != np.float32 or not x.flags.c_contiguous:
            raise ValueError(f"oneDNN peer: want a C-contiguous float32 {self.x_shape}, got {x.dtype} {x.shape}")
        _check(self.lib.dnnl_memory_set_data_handle(self.m_src, ptr(x)), "set src")
        self._execute(self.prim, [(ARG_SRC_LAYER, self.m_src), (ARG_WEIGHTS_LAYER, self.w_layer),
                                  (ARG_WEIGHTS_ITER, self.w_iter), (ARG_BIAS, self.m_bias),
                                  (ARG_DST_LAYER, self.m_dst)])
        return self.y

    def __del__(self):
        for kind, handle in reversed(getattr(self, "_owned", [])):   # the engine last
            getattr(self.lib, f"dnnl_{kind}_destroy")(handle)
        self._owned = []
