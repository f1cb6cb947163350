"""One LSTM step, forward and backward side by side (TMVA's CellForward / CellBackward).

Gate order is PyTorch's i, f, g, o. The input projection ``x @ W_ih.T + b_ih + b_hh`` is done
for all timesteps at once by the layer, so a step is one ``(B,H) @ (H,4H)`` product plus
in-place elementwise work on preallocated buffers.

    i = σ(x W_ii + h W_hi + b_i)      c' = f * c + i * g
    f = σ(x W_if + h W_hf + b_f)      h' = o * tanh(c')
    g = tanh(x W_ig + h W_hg + b_g)
    o = σ(x W_io + h W_ho + b_o)
"""
from __future__ import annotations

from model_core.cells.matmul import product, recurrent_product

GATES = 4
STATE_SIZE = 2  # (h, c)


def gate_constants(xp, H: int, dtype):
    """Per-column scale/offset so one tanh call activates all four gates.

    σ(x) = 0.5·tanh(0.5·x) + 0.5, so sigmoid columns (i, f, o) use scale 0.5 and offset 0.5;
    the tanh column (g) uses scale 1 and offset 0. ``alpha``/``beta`` give the derivative
    a·(alpha − a) + beta, which is s(1−s) for sigmoid columns and 1 − g² for g.
    """
    scale = xp.full((GATES * H,), 0.5, dtype=dtype)
    scale[2 * H:3 * H] = 1.0
    offset = xp.full((GATES * H,), 0.5, dtype=dtype)
    offset[2 * H:3 * H] = 0.0
    alpha = xp.ones((GATES * H,), dtype=dtype)
    alpha[2 * H:3 * H] = 0.0
    beta = xp.zeros((GATES * H,), dtype=dtype)
    beta[2 * H:3 * H] = 1.0
    return {"scale": scale, "offset": offset, "alpha": alpha, "beta": beta}


def cache_shapes(B: int, H: int) -> dict[str, tuple[int, ...]]:
    """Per-step arrays the backward needs, beyond the incoming state."""
    return {"gates": (B, GATES * H), "tanh_c": (B, H)}


def fold_bias(bias_ih, bias_hh):
    """Both biases act additively on the pre-activations, so fold them into the input projection."""
    return bias_ih + bias_hh


def step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, out):
    """One step for a batch, writing into preallocated buffers.

    xproj_t: (B, 4H) input projection with biases; prev: (h, c), each (B, H);
    weight_hh_t: (H, 4H), W_hh transposed (a view, or a contiguous copy the loop made for BLAS);
    cache_t: {"gates": (B, 4H), "tanh_c": (B, H)}; out: (h', c') buffers.
    """
    h, c = prev
    h_next, c_next = out
    H = h.shape[1]
    gates = cache_t["gates"]                                 # (B, 4H)
    recurrent_product(xp, h, weight_hh_t, gates)             # the one recurrent product
    gates += xproj_t
    gates *= consts["scale"]
    xp.tanh(gates, out=gates)
    gates *= consts["scale"]                                 # 0.5·tanh(·)+0.5 on i, f, o; g untouched
    gates += consts["offset"]
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    tanh_c = cache_t["tanh_c"]                               # (B, H), scratch for i*g first
    xp.multiply(f, c, out=c_next)
    xp.multiply(i, g, out=tanh_c)
    c_next += tanh_c                                         # c' = f*c + i*g
    xp.tanh(c_next, out=tanh_c)
    xp.multiply(o, tanh_c, out=h_next)                       # h' = o * tanh(c')


def step_backward(xp, d_next, prev, weight_hh, consts, cache_t, dgx_t, dgh_t):
    """Backprop one step. Writes the pre-activation gradient into ``dgx_t`` (B, 4H).

    d_next: (dh', dc') flowing into this step's outputs. Returns (dh, dc) for the previous state.
    ``dgh_t`` is the same array as ``dgx_t`` for the LSTM (biases are folded).
    """
    dh_next, dc_next = d_next
    _, c = prev
    gates, tanh_c = cache_t["gates"], cache_t["tanh_c"]
    H = c.shape[1]
    i, f, g, o = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:3 * H], gates[:, 3 * H:]
    # backprop h' = o * tanh(c'): into o, and through tanh into c'
    dc = dh_next * o
    dc *= 1.0 - tanh_c * tanh_c
    dc += dc_next
    # backprop c' = f*c + i*g into each gate activation
    xp.multiply(dc, g, out=dgx_t[:, :H])                     # di
    xp.multiply(dc, c, out=dgx_t[:, H:2 * H])                # df
    xp.multiply(dc, i, out=dgx_t[:, 2 * H:3 * H])            # dg
    xp.multiply(dh_next, tanh_c, out=dgx_t[:, 3 * H:])       # do
    # backprop through the gate nonlinearities, all four at once: a·(alpha − a) + beta
    deriv = consts["alpha"] - gates
    deriv *= gates
    deriv += consts["beta"]
    dgx_t *= deriv
    dc *= f                                                  # dc_prev
    dh = product(xp, dgx_t, weight_hh)                       # (B, 4H) @ (4H, H)
    return dh, dc
