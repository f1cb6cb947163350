"""Scalar float32 activations for the gate kernels, inlined into each loop so that it vectorises.

NumPy's ``tanh`` is a vectorised library call, but Numba would call libm's scalar ``tanhf`` one
element at a time. This is the rational approximation that Eigen and onnxruntime's MLAS use:
tanh(x) ≈ x·p(x²)/q(x²) on [-7.905, 7.905], where float32 tanh already rounds to ±1. Its error is
under 3e-7 absolute over the whole line (float32 has 6e-8 at 1), and it stays within [-1, 1].
The sigmoid goes through it, σ(x) = 0.5·tanh(0.5·x) + 0.5, so no ``exp`` is needed.
"""
from __future__ import annotations

import numpy as np

from model_core.jit import njit

_CLAMP = np.float32(7.90531110763549805)
_A1, _A3, _A5 = np.float32(4.89352455891786e-03), np.float32(6.37261928875436e-04), np.float32(1.48572235717979e-05)
_A7, _A9 = np.float32(5.12229709037114e-08), np.float32(-8.60467152213735e-11)
_A11, _A13 = np.float32(2.00018790482477e-13), np.float32(-2.76076847742355e-16)
_B0, _B2 = np.float32(4.89352518554385e-03), np.float32(2.26843463243900e-03)
_B4, _B6 = np.float32(1.18534705686654e-04), np.float32(1.19825839466702e-06)
_HALF = np.float32(0.5)


@njit
def tanh_f32(x):
    # clamp written so that NaN falls through both tests and comes out as NaN, as in NumPy
    x = _CLAMP if x > _CLAMP else x
    x = -_CLAMP if x < -_CLAMP else x
    x2 = x * x
    p = _A13
    p = p * x2 + _A11
    p = p * x2 + _A9
    p = p * x2 + _A7
    p = p * x2 + _A5
    p = p * x2 + _A3
    p = p * x2 + _A1
    q = _B6
    q = q * x2 + _B4
    q = q * x2 + _B2
    q = q * x2 + _B0
    return x * p / q


@njit
def sigmoid_f32(x):
    return _HALF * tanh_f32(_HALF * x) + _HALF


@njit
def tanh_into(x, out):
    """out[:] = tanh(x) over flat float32 arrays (for tests and the accuracy check)."""
    for k in range(x.size):
        out[k] = tanh_f32(x[k])
