"""The recurrent product ``h @ W_hh^T`` into a preallocated buffer, shaped to suit the BLAS.

OpenBLAS (NumPy's BLAS on x86) has a "small matrix" sgemm kernel for AVX-512 CPUs that skips
packing the operands, and uses it only while M·N·K ≤ 10^6. Past that, every call packs the whole
weight matrix first, which at a handful of rows costs more than the product: at H=256, B=4 a single
(4, 256) @ (256, 1024) product takes ~52 µs, two column halves ~21 µs. So for 3 ≤ B ≤ 8 on the
CPU the product is split by columns into pieces under the limit; bigger batches amortise the
packing and are left alone, and B ≤ 2 always fits. CuPy goes straight to cuBLAS.
"""
from __future__ import annotations

import numpy as np

SMALL_MNK = 1_000_000     # OpenBLAS's limit for its small-matrix sgemm path (kernel/x86_64)
SPLIT_MAX_ROWS = 8        # past this, splitting measured slower than one packed product
_ALIGN = 16               # piece widths in whole 64-byte lines of float32


def recurrent_product(xp, h, weight_t, out):
    """out[...] = h @ weight_t; h: (B, K), weight_t: (K, N) (a C-contiguous view), out: (B, N)."""
    B, K = h.shape
    N = weight_t.shape[1]
    if xp is not np or B <= 2 or B > SPLIT_MAX_ROWS or B * N * K <= SMALL_MNK:
        xp.matmul(h, weight_t, out=out)
        return
    pieces = -(-B * N * K // SMALL_MNK)                                 # ceil
    width = -(-N // pieces)
    width = -(-width // _ALIGN) * _ALIGN
    while B * width * K > SMALL_MNK and width > _ALIGN:                 # rounding up overshot
        width -= _ALIGN
    for j in range(0, N, width):
        np.matmul(h, weight_t[:, j:j + width], out=out[:, j:j + width])


def product(xp, a, w):
    """``a @ w`` as a new (B, N) array, split the same way (backward's ``dg @ W_hh``)."""
    out = xp.empty((a.shape[0], w.shape[1]), dtype=a.dtype)
    recurrent_product(xp, a, w, out)
    return out
