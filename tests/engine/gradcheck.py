"""Finite-difference helpers for gradient checks (CS231n's ``eval_numerical_gradient_array``).

Use float64 throughout: with eps=1e-6 centred differences are accurate to roughly 1e-9 relative,
while float32 rounding alone would swamp that.
"""
from __future__ import annotations

import numpy as np


def numerical_grad(f, x, eps: float = 1e-6) -> np.ndarray:
    """d f() / d x by centred differences, one element at a time.

    ``f`` takes no arguments and returns a float computed from ``x``; ``x`` (NumPy or CuPy) is
    perturbed in place and restored exactly. Returns a host array shaped like ``x``.
    """
    grad = np.zeros(x.shape, dtype=np.float64)
    for idx in np.ndindex(*x.shape):
        old = x[idx].item()
        x[idx] = old + eps
        f_plus = float(f())
        x[idx] = old - eps
        f_minus = float(f())
        x[idx] = old
        grad[idx] = (f_plus - f_minus) / (2.0 * eps)
    return grad


def rel_error(a, b) -> float:
    """max over elements of |a - b| / max(1e-8, |a| + |b|); accepts NumPy or CuPy arrays."""
    a = np.asarray(a.get() if hasattr(a, "get") else a, dtype=np.float64)
    b = np.asarray(b.get() if hasattr(b, "get") else b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"rel_error: shapes differ, {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))
