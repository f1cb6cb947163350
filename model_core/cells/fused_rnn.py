"""One Elman RNN step on the CPU in float32 with the activation compiled: forward and backward side by side.

Same contract as ``rnn_cell``. The gain is smaller than for the LSTM or GRU (NumPy's own ``tanh``
is vectorised too): one loop adds the input projection, activates and writes both the cache and
h', where NumPy makes three passes and a copy. Selected by ``model_core.cells.select``.
"""
from __future__ import annotations

import numpy as np

from model_core.cells.rnn_cell import GATES, STATE_SIZE, cache_shapes, fold_bias, gate_constants
from model_core.cells.matmul import product, recurrent_product
from model_core.jit import njit
from model_core.jit.numba_activations import tanh_f32

__all__ = ["GATES", "STATE_SIZE", "cache_shapes", "fold_bias", "gate_constants", "make"]

_ONE, _ZERO = np.float32(1.0), np.float32(0.0)


@njit
def _tanh_forward(act, xproj_t, h_next):
    """act (B, H): h W_hh^T on entry, tanh(· + xproj) on exit, copied into h_next."""
    B, H = act.shape
    for b in range(B):
        a, x, out = act[b], xproj_t[b], h_next[b]
        for j in range(H):
            v = tanh_f32(a[j] + x[j])
            a[j] = v
            out[j] = v


@njit
def _tanh_backward(dh_next, act, dg):
    B, H = act.shape
    for b in range(B):
        a, d, dn = act[b], dg[b], dh_next[b]
        for j in range(H):
            d[j] = dn[j] * (_ONE - a[j] * a[j])                            # backprop tanh: 1 − h'²


@njit
def _relu_forward(act, xproj_t, h_next):
    B, H = act.shape
    for b in range(B):
        a, x, out = act[b], xproj_t[b], h_next[b]
        for j in range(H):
            v = a[j] + x[j]
            v = _ZERO if v < _ZERO else v                                  # max(v, 0); NaN stays NaN
            a[j] = v
            out[j] = v


@njit
def _relu_backward(dh_next, act, dg):
    B, H = act.shape
    for b in range(B):
        a, d, dn = act[b], dg[b], dh_next[b]
        for j in range(H):
            d[j] = dn[j] * (_ONE if a[j] > _ZERO else _ZERO)               # backprop relu: [h' > 0]


def make(nonlinearity: str):
    """The step functions for ``"tanh"`` or ``"relu"``, as ``rnn_cell.make`` returns them."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    fwd_kernel, bwd_kernel = (_tanh_forward, _tanh_backward) if nonlinearity == "tanh" else (_relu_forward, _relu_backward)

    def step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, out):
        (h,), (h_next,) = prev, out
        act = cache_t["act"]                                          # (B, H)
        recurrent_product(xp, h, weight_hh_t, act)
        fwd_kernel(act, xproj_t, h_next)

    def step_backward(xp, d_next, prev, weight_hh, consts, cache_t, dgx_t, dgh_t):
        (dh_next,) = d_next
        bwd_kernel(dh_next, cache_t["act"], dgx_t)
        return (product(xp, dgx_t, weight_hh),)                       # (B, H) @ (H, H)

    return {"step_forward": step_forward, "step_backward": step_backward}
