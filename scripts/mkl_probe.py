"""MKL's ``cblas_sgemm`` and its packed GEMM (``cblas_sgemm_pack`` / ``cblas_sgemm_compute``) through
ctypes, for the recurrent-product probe (``bench_probe``). Never a dependency: the probe looks for
``libmkl_rt`` (the ``mkl`` wheel, ~1.1 GB installed, or ``MKL_RT=/path/libmkl_rt.so.2``) and skips
MKL when there is none.

    python -m venv /tmp/venv-mkl && /tmp/venv-mkl/bin/pip install mkl numpy
    PYTHONPATH=. /tmp/venv-mkl/bin/python -m scripts.bench_core --probe --threads 1
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

import numpy as np

ROW_MAJOR, NO_TRANS, PACKED, B_MATRIX = 101, 111, 151, 162        # CBLAS_LAYOUT, _TRANSPOSE, _STORAGE, _IDENTIFIER
_f32p = ctypes.POINTER(ctypes.c_float)


def load() -> ctypes.CDLL | None:
    """libmkl_rt, pinned to one thread, or None."""
    candidates = [os.environ.get("MKL_RT"), *sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*"))),
                  ctypes.util.find_library("mkl_rt")]
    for path in filter(None, candidates):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.MKL_Set_Num_Threads(1)
        i, f = ctypes.c_int, ctypes.c_float
        lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, _f32p, i, _f32p, i, f, _f32p, i]
        lib.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
        lib.cblas_sgemm_pack_get_size.argtypes = [i, i, i, i]
        lib.cblas_sgemm_pack.argtypes = [i, i, i, i, i, i, f, _f32p, i, _f32p]
        lib.cblas_sgemm_compute.argtypes = [i, i, i, i, i, i, _f32p, i, _f32p, i, f, _f32p, i]
        return lib
    return None


def _p(a: np.ndarray):
    return a.ctypes.data_as(_f32p)


def jobs(lib: ctypes.CDLL, h: np.ndarray, wt: np.ndarray, out: np.ndarray) -> dict:
    """``out = h @ wt`` two ways: plain sgemm, and over weights packed once (as a recurrent loop would)."""
    m, k = h.shape
    n = wt.shape[1]
    size = lib.cblas_sgemm_pack_get_size(B_MATRIX, m, n, k)
    buf = np.empty(size // 4 + 16, np.float32)                           # the jobs below keep it alive
    packed = _p(buf[(-buf.ctypes.data % 64) // 4:])                      # 64-byte aligned
    lib.cblas_sgemm_pack(ROW_MAJOR, B_MATRIX, NO_TRANS, m, n, k, 1.0, _p(wt), n, packed)
    hp, wp, op = _p(h), _p(wt), _p(out)
    return {
        "mkl sgemm": lambda: lib.cblas_sgemm(ROW_MAJOR, NO_TRANS, NO_TRANS, m, n, k, 1.0, hp, k, wp, n, 0.0, op, n),
        "mkl packed": lambda buf=buf: lib.cblas_sgemm_compute(ROW_MAJOR, NO_TRANS, PACKED, m, n, k, hp, k, packed, n,
                                                              0.0, op, n),
    }
