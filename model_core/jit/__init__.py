"""Optional Numba kernels for the CPU float32 path, chosen once when this package is imported.

The engine never needs Numba: without it (or with ``MODEL_CORE_JIT=0`` in the environment) every
cell runs its NumPy reference step, and the results agree to float32 rounding
(``tests/engine/test_fast_paths.py``). With it, the elementwise gate math of one step runs as one compiled
loop instead of ten NumPy calls, each of which makes a full pass over the gate buffer.

Compiled code is cached on disk (``cache=True``: next to the sources, or in ``NUMBA_CACHE_DIR``), so
only the first process on a machine pays for compilation.
"""
from __future__ import annotations

import os

ENV_VAR = "MODEL_CORE_JIT"

# The gate kernels are written for float32 and must keep IEEE semantics where it matters: NaN and
# inf pass through as they do in NumPy, so no "nnan"/"ninf". "contract" allows FMAs and "arcp" a
# vectorised division; neither changes results beyond float32 rounding.
FASTMATH = frozenset({"contract", "arcp", "nsz"})


def _load_numba():
    """(numba module or None, why): the one place that decides whether the JIT path exists."""
    if os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off"):
        return None, f"disabled by {ENV_VAR}={os.environ[ENV_VAR]}"
    try:
        import numba  # optional dependency
    except Exception as exc:  # ImportError, or an llvmlite that fails to load
        return None, f"numba is not importable ({type(exc).__name__}: {exc})"
    return numba, f"numba {numba.__version__}"


numba, REASON = _load_numba()
AVAILABLE = numba is not None


def njit(fn):
    """Compile ``fn`` lazily (on first call) for the host CPU, cached on disk when possible.

    ``error_model="numpy"`` drops Python's ZeroDivisionError check, which would otherwise stop
    LLVM from vectorising any loop with a division in it. ``nogil`` lets sessions served from
    several threads run kernels at the same time.
    """
    if numba is None:
        raise RuntimeError(f"model_core.jit is unavailable: {REASON}")
    options = dict(fastmath=set(FASTMATH), error_model="numpy", nogil=True)
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:                        # no writable cache location: compile per process
        return numba.njit(cache=False, **options)(fn)
