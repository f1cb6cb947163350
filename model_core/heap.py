"""Freed memory kept for reuse in the process, as onnxruntime's CPU arena keeps it.

glibc gives a large block back to the kernel when it is freed (above its mmap threshold, which it
raises as such blocks are freed, up to 32 MiB) and trims the heap's top once the free space there
passes its trim threshold. The next call's arrays then land on fresh pages, and each page's first
touch is a fault: a ragged ONNX LSTM node (B=32, T=100, H=256, two threads), whose ranked batch
takes two more arrays than a full one, took ~1,880 faults a call and ran slower than not ranking
at all (docs/performance-log.md, "Ragged batches ranked in the kernel"). Fixed thresholds keep
freed pages for the next call: ~40 faults a call. Training pays the same way: an LSTM's forward
cache and BPTT's gradients (B=32, T=100, H=512: ~45 MB a step) took 2,200-5,100 faults a training
step at B=32, H=256 and 512. The cost is the process's footprint, which stays at its peak, as with
an arena.

Process-wide, so the engine never sets it on import (PyTorch leaves the C allocator alone too): the
processes this project owns call it (``InferenceSession`` unless ``enable_cpu_mem_arena`` is off,
the service's lifespan, ``scripts/train.py``, the benchmarks), and a training loop of a user's own
calls ``model_core.keep_freed_memory()`` once.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3          # glibc's mallopt parameters
MMAP_THRESHOLD = 32 << 20                            # the most glibc accepts (its dynamic ceiling)
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Set glibc's thresholds so that freed memory stays in the process; False where the C library
    is not glibc (musl, macOS), which keep their own policy. Process-wide and idempotent."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):    # glibc only: musl's mallopt does nothing
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
