"""The engine's thread count, set on purpose: every native pool the engine can use, in one call.

A server whose batcher is the parallelism wants one thread per request path: OpenBLAS's extra
threads spin-wait between small products (PERF_NOTES: 85% of a core at 200 typists), and a pool
per library on a 2-core machine only competes with itself. ``set_num_threads(n)`` sets:

* OpenBLAS (NumPy's BLAS), through its own ``openblas_set_num_threads`` found in the loaded
  library (no threadpoolctl needed at run time); with more than one thread its parallel jobs run
  on the native kernels' OpenMP team, so that one pool serves both;
* Numba's pool, only if it is already running: the engine's Numba kernels are serial, and
  setting the count would start the pool just to size it;
* the native kernels (``model_core.native``): their OpenMP team, for calls whose steps have
  enough work to split (``threads_for`` in the C source; 1: serial).

It returns what it did, for the caller's log line.
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np

_OPENBLAS_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads")
# OpenBLAS >= 0.3.27: a caller-managed pool for its parallel jobs (the kernels' OpenMP team)
_OPENBLAS_TEAM_SETTERS = ("scipy_openblas_set_threads_callback_function64_",
                          "scipy_openblas_set_threads_callback_function",
                          "openblas_set_threads_callback_function64_", "openblas_set_threads_callback_function")


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux), else NumPy's bundled ones."""
    found: list[str] = []
    maps = Path("/proc/self/maps")
    if maps.exists():
        for line in maps.read_text().splitlines():
            path = line.split()[-1] if len(line.split()) >= 6 else ""
            if "openblas" in Path(path).name.lower() and path not in found:
                found.append(path)
    if not found:
        libs = Path(np.__file__).resolve().parent.parent / "numpy.libs"
        found = [str(p) for p in sorted(libs.glob("*openblas*"))] if libs.is_dir() else []
    return found


def _set_openblas(n: int, team: int | None) -> str:
    """OpenBLAS's thread count, and where its parallel jobs run: on the native kernels' OpenMP team
    when ``team`` (the address of ``mc_blas_team``) is given, else on OpenBLAS's own threads. Two
    pools on few cores take turns badly: each one's idle workers spin while the other computes
    (docs/performance-log.md, "Results, 2 threads")."""
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)                      # the already-loaded copy: same handle, same pool
        except OSError:
            continue
        for name in _OPENBLAS_SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], None
                fn(n)
                return f"openblas={n}" + _route_openblas_jobs(lib, team)
    return "openblas: not found"


def _route_openblas_jobs(lib, team: int | None) -> str:
    for name in _OPENBLAS_TEAM_SETTERS:
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_void_p], None
            fn(team)                 # read at the start of each parallel product: safe between calls
            return " (on the native team)" if team else ""
    return ""


def _set_numba(n: int) -> str:
    numba = sys.modules.get("numba")
    if numba is None:
        return "numba: not loaded"
    from numba.np.ufunc import parallel  # only when Numba is already imported

    if not getattr(parallel, "_is_initialized", False):
        return "numba: pool not started (serial kernels)"
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return f"numba={numba.get_num_threads()}"


def set_num_threads(n: int) -> str:
    """Use ``n`` threads in every native pool the engine runs on; returns a summary of what was set."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the thread count must be a positive integer, got {n!r}")
    from model_core import native  # the library loads (or compiles) on first import

    team = native.set_threads(n) if native.AVAILABLE else 1
    kernels = f"native={team}" if native.AVAILABLE else "native: unavailable"
    return ", ".join((_set_openblas(n, native.blas_team() if team > 1 else None), _set_numba(n), kernels))
