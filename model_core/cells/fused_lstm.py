"""One LSTM step on the CPU in float32 with the gate math compiled: forward and backward side by side.

Same contract as ``lstm_cell`` (whose docstring has the equations): one ``(B,H) @ (H,4H)`` BLAS
product per step, then a single Numba loop that does what ``lstm_cell`` does in ten NumPy calls
(add the input projection, four activations, the cell update, tanh(c'), h'). Reading and writing
each gate once instead of ten times is what makes this faster; the recurrent product is the same.
Selected by ``model_core.cells.select`` only when Numba is present and the layer is float32 on
the CPU.
"""
from __future__ import annotations

import numpy as np

from model_core.cells.lstm_cell import GATES, STATE_SIZE, cache_shapes, fold_bias, gate_constants
from model_core.cells.matmul import product, recurrent_product
from model_core.jit import njit
from model_core.jit.numba_activations import sigmoid_f32, tanh_f32

_ONE = np.float32(1.0)   # a float64 literal would promote the whole expression to float64

__all__ = ["GATES", "STATE_SIZE", "cache_shapes", "fold_bias", "gate_constants", "step_backward", "step_forward"]


@njit
def _gates_forward(gates, xproj_t, c, c_next, h_next, tanh_c):
    """gates (B, 4H): h W_hh^T on entry, activated i, f, g, o on exit; the rest are (B, H)."""
    B, G = gates.shape
    H = G // 4
    for b in range(B):
        a, x = gates[b], xproj_t[b]
        for j in range(H):
            a[j] = sigmoid_f32(a[j] + x[j])                                # i
        for j in range(H, 2 * H):
            a[j] = sigmoid_f32(a[j] + x[j])                                # f
        for j in range(2 * H, 3 * H):
            a[j] = tanh_f32(a[j] + x[j])                                   # g
        for j in range(3 * H, G):
            a[j] = sigmoid_f32(a[j] + x[j])                                # o
        cb, cn, hn, tc = c[b], c_next[b], h_next[b], tanh_c[b]
        for j in range(H):
            v = a[H + j] * cb[j] + a[j] * a[2 * H + j]                     # c' = f*c + i*g
            cn[j] = v
            t = tanh_f32(v)
            tc[j] = t
            hn[j] = a[3 * H + j] * t                                       # h' = o * tanh(c')


@njit
def _gates_backward(dh_next, dc_next, gates, tanh_c, c, dg, dc_prev):
    """Pre-activation gradients dg (B, 4H) and dc_prev (B, H) from dh', dc' (B, H).

    Several short loops rather than one: each touches few arrays, so LLVM vectorises every one
    of them (one loop over seven arrays needs more aliasing checks than it is willing to emit).
    """
    B, G = gates.shape
    H = G // 4
    for b in range(B):
        a, d, tc, cb, dhn, dcn, dc = gates[b], dg[b], tanh_c[b], c[b], dh_next[b], dc_next[b], dc_prev[b]
        for j in range(H):
            t = tc[j]
            d[3 * H + j] = dhn[j] * t                                      # backprop h' = o*tanh(c') into o
            dc[j] = dhn[j] * a[3 * H + j] * (_ONE - t * t) + dcn[j]         # ... and through tanh into c'
        for j in range(H):                                                 # backprop c' = f*c + i*g
            d[j] = dc[j] * a[2 * H + j]                                    # di
            d[H + j] = dc[j] * cb[j]                                       # df
            d[2 * H + j] = dc[j] * a[j]                                    # dg
        for j in range(H):
            dc[j] *= a[H + j]                                              # dc_prev = dc' * f
        for j in range(2 * H):                                             # backprop σ on i, f: s(1 − s)
            d[j] *= a[j] * (_ONE - a[j])
        for j in range(2 * H, 3 * H):                                      # backprop tanh on g: 1 − g²
            d[j] *= _ONE - a[j] * a[j]
        for j in range(3 * H, G):                                          # backprop σ on o
            d[j] *= a[j] * (_ONE - a[j])


def step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, out):
    """xproj_t: (B, 4H) with both biases; prev: (h, c); weight_hh_t: (H, 4H); out: (h', c')."""
    h, c = prev
    h_next, c_next = out
    gates = cache_t["gates"]                                           # (B, 4H)
    recurrent_product(xp, h, weight_hh_t, gates)                       # the one recurrent product
    _gates_forward(gates, xproj_t, c, c_next, h_next, cache_t["tanh_c"])


def step_backward(xp, d_next, prev, weight_hh, consts, cache_t, dgx_t, dgh_t):
    """d_next: (dh', dc'); writes dgx_t (B, 4H) (``dgh_t`` is the same array) and returns (dh, dc)."""
    dh_next, dc_next = d_next
    _, c = prev
    dc = xp.empty_like(c)                                              # (B, H)
    _gates_backward(dh_next, dc_next, cache_t["gates"], cache_t["tanh_c"], c, dgx_t, dc)
    dh = product(xp, dgx_t, weight_hh)                                 # (B, 4H) @ (4H, H)
    return dh, dc
