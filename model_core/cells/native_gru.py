"""GRU with the whole time loop in compiled code (``model_core/native``): forward and BPTT side by side.

Same math and caches as ``gru_cell`` (whose docstring has the equations and why b_hn stays out
of the input projection). ``sequence_*`` run whole sequences in one call, ``step_*`` one step
(``step()`` and ragged batches). Selected by ``model_core.cells.select`` for float32 NumPy layers
when ``model_core.native.AVAILABLE``.
"""
from __future__ import annotations

import numpy as np

from model_core.cells.gru_cell import GATES, STATE_SIZE, cache_shapes, fold_bias
from model_core.cells.native_weights import (FUSED_MIN_BATCH, NULL, aligned_empty, backward_strides, c_array,
                                             fused_input, input_weights, length_one, projected, ptr,
                                             recurrent_weights, row_strides, rows_contiguous, step_input_weights,
                                             step_keeps_pack, train_cache)
from model_core.native import STEP_KINDS, handle, lib

__all__ = ["GATES", "STATE_SIZE", "cache_shapes", "fold_bias", "gate_constants", "sequence_backward",
           "sequence_forward", "sequence_forward_fused", "step_backward", "step_entry", "step_forward", "step_forward_input",
           "step_weights"]


def gate_constants(xp, H: int, dtype):
    """A zero b_hn for layers built with ``bias=False``, so the kernel has one signature."""
    return {"zero_bias": xp.zeros((H,), dtype=dtype)}


def _b_hn(bias_hh, consts, H):
    return consts["zero_bias"] if bias_hh is None else c_array(bias_hh[2 * H:])   # (H,)


def sequence_forward(xproj, state0, weight_hh_t, bias_hh, consts, reverse, y_out, train):
    """One direction over a full-length sequence: xproj (T, B, 3H); state0 (h0,) (B, H);
    weight_hh_t (H, 3H); bias_hh (3H,) or None; y_out (T, B, H) view. Returns ((h_T,), cache)."""
    T, B, G3 = xproj.shape
    H = G3 // 3
    h0 = c_array(state0[0])
    w = recurrent_weights(weight_hh_t, B, T)
    hT = np.empty((B, H), np.float32)
    cache, ptrs = train_cache(cache_shapes, STATE_SIZE, T, B, H, reverse) if train else (None, (NULL,) * 3)
    xt, xb = row_strides(xproj)
    yt, yb = row_strides(y_out)
    b_hn, work = _b_hn(bias_hh, consts, H), aligned_empty(3 * B * H)     # work: (B, 3H) unpacked
    lib.mc_gru_forward(T, B, H, int(reverse), ptr(xproj), xt, xb, NULL, NULL, w.ptr, w.wk, w.wg, w.wu,
                       ptr(b_hn), ptr(h0), ptr(y_out), yt, yb, ptr(hT), *ptrs, ptr(work))
    return (hT,), cache


def sequence_forward_fused(x, weight_ih_t, bias, state0, weight_hh_t, bias_hh, consts, reverse, y_out, train):
    """``sequence_forward`` from the raw input x (T, B, I), the input projection made in the
    kernel's tile (as ``native_lstm.sequence_forward_fused``): bias (3H,) folded as ``fold_bias``
    folds it, b_hn from bias_hh. Returns ((h_T,), cache), or None when this batch reads W_hh row
    by row. One step (T = 1) is ``step_forward_input``, whatever the batch and layout."""
    T, B, I = x.shape
    H = weight_hh_t.shape[0]
    if T == 1:                                             # the call step() makes: the same bits
        return length_one(step_forward_input, step_weights(weight_ih_t, bias, weight_hh_t, bias_hh), cache_shapes,
                          STATE_SIZE, x, state0, y_out, reverse, train)
    if 0 < B < FUSED_MIN_BATCH:                            # one row: projected first, with the fused tile's bits
        return sequence_forward(projected(x, weight_ih_t, bias, GATES), state0, weight_hh_t, bias_hh, consts, reverse,
                                y_out, train)
    w = recurrent_weights(weight_hh_t, B, T)
    if not w.packed:
        return None
    wi, x = input_weights(weight_ih_t, GATES), fused_input(x)
    bias = None if bias is None else c_array(bias)
    h0 = c_array(state0[0])
    hT, work = np.empty((B, H), np.float32), aligned_empty(3 * B * H)
    cache, ptrs = train_cache(cache_shapes, STATE_SIZE, T, B, H, reverse) if train else (None, (NULL,) * 3)
    xt, xb = row_strides(x)
    yt, yb = row_strides(y_out)
    if lib.mc_gru_forward_fused(T, B, H, I, int(reverse), ptr(x), xt, xb, ptr(wi), ptr(bias), NULL, w.ptr, w.wk, w.wg,
                                w.wu, ptr(_b_hn(bias_hh, consts, H)), ptr(h0), ptr(y_out), yt, yb, ptr(hT), *ptrs,
                                ptr(work)):
        return None
    return (hT,), cache


def sequence_backward(cache, weight_hh_t, dy, d_final):
    """BPTT over a full-length sequence: dy (T, B, H), d_final (dh_T,). Returns (dgx, dgh, (dh0,)):
    input-side and hidden-side pre-activation gradients, each (T, B, 3H)."""
    gates, hn = cache["steps"]["gates"], cache["steps"]["hn"]
    weight_hh_t = c_array(weight_hh_t)                                  # (H, 3H)
    T, B, G3 = gates.shape
    H = G3 // 3
    dy = backward_strides(dy)
    dyt, dyb = row_strides(dy)
    dgx, dgh = np.empty((T, B, 3 * H), np.float32), np.empty((T, B, 3 * H), np.float32)
    dh0, work = np.empty((B, H), np.float32), aligned_empty((B, H))
    dhT = c_array(d_final[0])                            # every array passed stays named until the call returns
    lib.mc_gru_backward(T, B, H, int(cache["reverse"]), ptr(weight_hh_t), ptr(dy), dyt, dyb, ptr(gates), ptr(hn),
                        ptr(cache["prev"][0]), ptr(dhT), ptr(dgx), ptr(dgh), ptr(dh0), ptr(work))
    return dgx, dgh, (dh0,)


def step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, out):
    """One step: xproj_t (B, 3H); prev (h,); out (h',) (B, H), never aliasing prev (written with
    contiguous rows; other layouts go through a copy); cache_t {"gates", "hn"} is written when given
    (None: inference, through the step entry point with array handles when out is C-contiguous, as in
    ``native_lstm``)."""
    if (cache_t is None and out[0].flags.c_contiguous                                # tested first: per token
            and not step_keeps_pack(weight_hh_t, len(out[0]))):                 # else: the kept packed copy below
        xproj_t, h = c_array(xproj_t), c_array(prev[0])
        b_hn = None if bias_hh is None else c_array(bias_hh[2 * h.shape[1]:])
        if lib.mc_gru_step(xproj_t.shape[0], h.shape[1], handle(xproj_t), handle(c_array(weight_hh_t)), handle(b_hn),
                           handle(h), handle(out[0])):
            raise MemoryError("the GRU step kernel could not allocate its scratch buffer")
        return
    if not rows_contiguous(out[0]):                                   # a state laid out another way
        tmp = (np.empty(out[0].shape, np.float32),)
        step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, tmp)
        out[0][...] = tmp[0]
        return
    xproj_t = c_array(xproj_t)
    h = c_array(prev[0])
    B, G3 = xproj_t.shape
    H = G3 // 3
    w = recurrent_weights(weight_hh_t, B)
    b_hn = _b_hn(bias_hh, consts, H)
    gates = (NULL, NULL) if cache_t is None else (ptr(cache_t["gates"]), ptr(cache_t["hn"]))
    lib.mc_gru_forward(1, B, H, 0, ptr(xproj_t), 0, G3, NULL, NULL, w.ptr, w.wk, w.wg, w.wu, ptr(b_hn), ptr(h), ptr(out[0]),
                       0, out[0].strides[0] // 4, NULL, *gates, NULL, NULL)


def step_weights(weight_ih_t, bias, weight_hh_t, bias_hh) -> tuple:
    """``native_lstm.step_weights``'s GRU: (W_ih, W_hh, packed, bias, b_hn), bias folded as
    ``fold_bias`` folds it (3H,) or None, b_hn from bias_hh."""
    H = weight_hh_t.shape[0]
    return (*step_input_weights(weight_ih_t, weight_hh_t, GATES), None if bias is None else c_array(bias),
            None if bias_hh is None else c_array(bias_hh[2 * H:]))


def step_entry(weights) -> tuple:
    """``native_lstm.step_entry``'s GRU: its b_hn too."""
    wi, wh, packed, bias, b_hn = weights
    return STEP_KINDS["gru"], (wi, wh, packed, bias, b_hn)


def step_forward_input(x_t, weights, prev, out, cache=None):
    """``native_lstm.step_forward_input``'s GRU: weights ``step_weights``; prev (h,); out (h',)
    (B, H); cache a length-1 ``train_cache`` or None."""
    if not out[0].flags.c_contiguous:
        tmp = (np.empty(out[0].shape, np.float32),)
        step_forward_input(x_t, weights, prev, tmp, cache)
        out[0][...] = tmp[0]
        return
    wi, wh, packed, bias, b_hn = weights
    x_t, h = c_array(x_t), c_array(prev[0])
    B, I = x_t.shape
    kept = (cache["steps"]["gates"], cache["steps"]["hn"], cache["prev"][0]) if cache else (None,) * 3
    if lib.mc_gru_input_step(B, h.shape[1], I, handle(x_t), handle(wi), handle(bias), handle(b_hn), handle(wh), packed,
                             handle(h), handle(out[0]), *map(handle, kept)):
        raise MemoryError("the GRU step kernel could not allocate its scratch buffer")


def step_backward(xp, d_next, prev, weight_hh_t, consts, cache_t, dgx_t, dgh_t):
    """One step of BPTT: writes dgx_t and dgh_t (B, 3H); returns (dh,). ``weight_hh_t`` (H, 3H)."""
    B, G3 = dgx_t.shape
    H = G3 // 3
    weight_hh_t = c_array(weight_hh_t)
    dh = np.empty((B, H), np.float32)
    work = aligned_empty((B, H))
    h, dh_next = c_array(prev[0]), c_array(d_next[0])
    lib.mc_gru_backward(1, B, H, 0, ptr(weight_hh_t), NULL, 0, 0, ptr(cache_t["gates"]), ptr(cache_t["hn"]),
                        ptr(h), ptr(dh_next), ptr(dgx_t), ptr(dgh_t), ptr(dh), ptr(work))
    return (dh,)
