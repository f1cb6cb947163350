"""A benchmark's ``--threads N``, in force before NumPy starts its BLAS pool: import this module first.

OpenBLAS, OpenMP and MKL size their pools from the environment once, when the library loads, so
``--threads`` is read from the command line here, ahead of argparse (which reports a bad value
later). Without ``--threads`` the environment is left as it is and the benchmark's default is applied
at run time by ``model_core.threads.set_num_threads``.
"""
from __future__ import annotations

import os
import sys

_POOLS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def threads_arg(argv: list[str]) -> str | None:
    """The value of ``--threads N`` or ``--threads=N`` in ``argv``, None when absent."""
    for k, arg in enumerate(argv):
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
        if arg == "--threads" and k + 1 < len(argv):
            return argv[k + 1]
    return None


def threads(default: int) -> int:
    """``--threads`` from the command line as a positive count; ``default`` when absent or malformed."""
    value = threads_arg(sys.argv[1:])
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else default


_requested = threads_arg(sys.argv[1:])
if _requested is not None and _requested.isdigit() and int(_requested) > 0:
    for _var in _POOLS:
        os.environ[_var] = _requested
