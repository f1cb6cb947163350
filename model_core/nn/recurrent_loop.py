"""The loop over time for one layer and one direction, forward and backward (BPTT) side by side.

Cells supply the per-step math (``model_core.cells``); this file owns buffers, direction,
variable lengths and the weight layouts. Everything is indexed by time ``t``:
``prev[k][t]`` is state component ``k`` entering the step at time ``t``, whichever way the
direction runs. Padded steps (``t >= length``) leave the state untouched and output zero, which
is PyTorch's packed-sequence semantics (the reverse direction therefore starts at each
sequence's last valid step).

Weights arrive as the layer stores them: ``weight_hh`` (G*H, H) in Fortran order, so that
``weight_hh.T`` is the C-contiguous (H, G*H) matrix the forward product ``h @ W_hh^T`` wants
(OpenBLAS is up to 6x slower on a transposed operand at small batch sizes). Backward wants
``dg @ W_hh`` with W_hh C-contiguous, so it makes that copy once per call.
"""
from __future__ import annotations

import numpy as np

_TILE = 32  # source rows per block in ``c_layout``


def _time_order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def c_layout(xp, w):
    """``w`` as a C-contiguous array: ``w`` itself when it already is one.

    For a Fortran-ordered ``w`` (the layer's storage), NumPy's own transposing copy walks the
    source a whole row apart per element; copying 32 source rows at a time (one contiguous block
    into 32 destination columns) keeps each block in cache and is 2-3x faster.
    """
    if xp is not np or w.flags.c_contiguous or not w.flags.f_contiguous:
        return xp.ascontiguousarray(w)
    wt = w.T                                                     # (H, G*H), C-contiguous
    out = np.empty(w.shape, dtype=w.dtype)
    for i in range(0, wt.shape[0], _TILE):
        out[:, i:i + _TILE] = wt[i:i + _TILE].T
    return out


def forward_direction(xp, cell, consts, xproj, state0, weight_hh, bias_hh, masks, reverse, y_out, train):
    """Run one direction over a sequence.

    xproj: (T, B, G*H) input projection with biases folded in; state0: tuple of (B, H);
    weight_hh: (G*H, H); masks: None or (bool (T, B, 1), float (T, B, 1)); y_out: (T, B, H)
    view that receives h_t. Returns (final_state, cache); cache is None unless ``train``.
    """
    weight_hh_t = weight_hh.T                                    # (H, G*H), contiguous when stored F-order
    if cell.native and masks is None:                            # the whole loop in one compiled call
        return cell.sequence_forward(xproj, state0, weight_hh_t, bias_hh, consts, reverse, y_out, train)
    T, B, _ = xproj.shape
    H = state0[0].shape[1]
    dtype = xproj.dtype
    n_state = len(state0)
    shapes = cell.cache_shapes(B, H)
    if train:
        # Everything backward needs, preallocated once for the whole sequence.
        step_cache = {k: xp.empty((T, *s), dtype=dtype) for k, s in shapes.items()}
        prev = [xp.empty((T, B, H), dtype=dtype) for _ in range(n_state)]
    else:
        step_cache = {k: xp.empty((1, *s), dtype=dtype) for k, s in shapes.items()}
        pingpong = [[xp.empty((B, H), dtype=dtype) for _ in range(n_state)] for _ in range(2)]
        prev = None
    final = [xp.empty((B, H), dtype=dtype) for _ in range(n_state)]
    # Inference with full-length sequences writes h' straight into the output (when that slice is
    # contiguous, as it is for one direction), saving a copy per step.
    h_into_y = not train and masks is None and y_out[0:1].flags.c_contiguous

    order = list(_time_order(T, reverse))
    if train and T:
        for k in range(n_state):
            prev[k][order[0]] = state0[k]
    cur = tuple(state0)  # never written to: the caller's arrays stay intact
    names = tuple(step_cache)
    for i, t in enumerate(order):
        if i == T - 1:
            out = final
        elif train:
            nxt = order[i + 1]
            out = [p[nxt] for p in prev]                         # next step's "prev" slot, no copy
        else:
            out = pingpong[i % 2]
            if h_into_y:
                out = [y_out[t], *out[1:]]
        cache_t = {k: step_cache[k][t if train else 0] for k in names}
        cell.step_forward(xp, xproj[t], cur, weight_hh_t, bias_hh, consts, cache_t, out)
        if masks is None:
            if not h_into_y or i == T - 1:
                y_out[t] = out[0]
        else:
            keep, keep_f = masks[0][t], masks[1][t]              # (B, 1)
            xp.multiply(out[0], keep_f, out=y_out[t])            # zero output past the length
            for k in range(n_state):
                xp.copyto(out[k], cur[k], where=~keep)           # state passes through padding
        cur = tuple(out)
    if T == 0:
        for k in range(n_state):
            final[k][...] = state0[k]
    cache = {"steps": step_cache, "prev": prev, "reverse": reverse} if train else None
    return tuple(final), cache


def backward_direction(xp, cell, consts, cache, weight_hh, dy, d_final, masks, separate_hidden_grad):
    """BPTT for one direction: a loop over steps in reverse processing order.

    dy: (T, B, H) gradient on this direction's outputs; d_final: tuple of (B, H) on the final state.
    Returns (dgx, dgh, d_state0): pre-activation gradients for the input side (T, B, G*H) and the
    hidden side (the same array except for the GRU), and the gradient on the initial state.
    """
    if cell.native and masks is None:
        return cell.sequence_backward(cache, weight_hh.T, dy, d_final)
    step_cache, prev = cache["steps"], cache["prev"]
    T, B, H = prev[0].shape
    G = cell.GATES
    dtype = prev[0].dtype
    dgx = xp.empty((T, B, G * H), dtype=dtype)
    dgh = xp.empty_like(dgx) if separate_hidden_grad else dgx
    if cell.native:                                              # the kernel reads W_hh^T (H, G*H) by rows
        weight = weight_hh.T
    else:                                                        # (G*H, H) for dg @ W_hh, once per call
        weight = c_layout(xp, weight_hh) if T > 1 else weight_hh
    names = tuple(step_cache)
    d = tuple(dk.copy() for dk in d_final)
    for t in reversed(_time_order(T, cache["reverse"])):
        dh = d[0] + dy[t]                                        # the output and the carried state
        if masks is None:
            d_cand = (dh, *d[1:])
        else:
            keep_f = masks[1][t]
            d_cand = (dh * keep_f, *(dk * keep_f for dk in d[1:]))
        cache_t = {k: step_cache[k][t] for k in names}
        prev_t = tuple(p[t] for p in prev)
        d_prev = cell.step_backward(xp, d_cand, prev_t, weight, consts, cache_t, dgx[t], dgh[t])
        if masks is not None:
            skip_f = 1.0 - masks[1][t]                           # padded steps pass the gradient through
            d_prev = tuple(dp + dk * skip_f for dp, dk in zip(d_prev, d))
        d = d_prev
    return dgx, dgh, d
