"""One GRU step on the CPU in float32 with the gate math compiled: forward and backward side by side.

Same contract as ``gru_cell`` (whose docstring has the equations and why only b_hn stays out of the
input projection): one ``(B,H) @ (H,3H)`` BLAS product per step, then one Numba loop per direction
in place of the NumPy calls. Selected by ``model_core.cells.select`` for float32 on the CPU when
Numba is present.
"""
from __future__ import annotations

import numpy as np

from model_core.cells.gru_cell import GATES, STATE_SIZE, cache_shapes, fold_bias
from model_core.cells.matmul import product, recurrent_product
from model_core.jit import njit
from model_core.jit.numba_activations import sigmoid_f32, tanh_f32

__all__ = ["GATES", "STATE_SIZE", "cache_shapes", "fold_bias", "gate_constants", "step_backward", "step_forward"]

_ONE = np.float32(1.0)   # a float64 literal would promote the whole expression to float64


def gate_constants(xp, H: int, dtype):
    """A zero b_hn for layers built with ``bias=False``, so the kernel has one signature."""
    return {"zero_bias": xp.zeros((H,), dtype=dtype)}


@njit
def _gates_forward(gates, xproj_t, b_hn, h, hn, h_next):
    """gates (B, 3H): h W_hh^T on entry, activated r, z, n on exit; hn, h, h_next (B, H)."""
    B, G = gates.shape
    H = G // 3
    for b in range(B):
        a, x, hnb, hb, out = gates[b], xproj_t[b], hn[b], h[b], h_next[b]
        for j in range(2 * H):
            a[j] = sigmoid_f32(a[j] + x[j])                                # r, z
        for j in range(H):
            hnb[j] = a[2 * H + j] + b_hn[j]                                # h W_hn + b_hn, kept for dr
        for j in range(H):
            n = tanh_f32(x[2 * H + j] + a[j] * hnb[j])                     # n = tanh(x W_in + b_in + r * hn)
            a[2 * H + j] = n
            out[j] = n + a[H + j] * (hb[j] - n)                            # h' = (1 − z) * n + z * h


@njit
def _gates_backward(dh_next, gates, hn, h, dgx, dgh, dh):
    """Input-side and hidden-side pre-activation grads (B, 3H), and dh' * z into dh (B, H)."""
    B, G = gates.shape
    H = G // 3
    for b in range(B):
        a, hnb, hb, dhn, dx, dhid, dhb = gates[b], hn[b], h[b], dh_next[b], dgx[b], dgh[b], dh[b]
        for j in range(H):
            z, n = a[H + j], a[2 * H + j]
            dhb[j] = dhn[j] * z                                            # backprop h' into h directly
            dx[H + j] = dhn[j] * (hb[j] - n) * (z * (_ONE - z))            # ... into z, through σ
            dx[2 * H + j] = dhn[j] * (_ONE - z) * (_ONE - n * n)           # ... into n, through tanh
        for j in range(H):
            r = a[j]
            dx[j] = dx[2 * H + j] * hnb[j] * (r * (_ONE - r))              # backprop r * hn into r, through σ
            dhid[2 * H + j] = dx[2 * H + j] * r                            # ... and into hn
        for j in range(2 * H):
            dhid[j] = dx[j]                                                # r, z: the same on both sides


def step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, out):
    """xproj_t: (B, 3H); prev: (h,); weight_hh_t: (H, 3H); bias_hh: (3H,) or None; out: (h',)."""
    (h,), (h_next,) = prev, out
    H = h.shape[1]
    gates = cache_t["gates"]                                           # (B, 3H)
    recurrent_product(xp, h, weight_hh_t, gates)                       # the one recurrent product
    b_hn = consts["zero_bias"] if bias_hh is None else bias_hh[2 * H:]
    _gates_forward(gates, xproj_t, b_hn, h, cache_t["hn"], h_next)


def step_backward(xp, d_next, prev, weight_hh, consts, cache_t, dgx_t, dgh_t):
    """Writes ``dgx_t`` and ``dgh_t`` (B, 3H); returns (dh,) for the previous state."""
    (dh_next,), (h,) = d_next, prev
    dh = xp.empty_like(h)                                              # (B, H)
    _gates_backward(dh_next, cache_t["gates"], cache_t["hn"], h, dgx_t, dgh_t, dh)
    dh += product(xp, dgh_t, weight_hh)                                # (B, 3H) @ (3H, H)
    return (dh,)
