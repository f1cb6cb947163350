"""LSTM with the whole time loop in compiled code (``model_core/native``): forward and BPTT side by side.

Same math and caches as ``lstm_cell`` (whose docstring has the equations): the kernel runs every
step's recurrent product from a register tile, the gates and the state update, so a sequence is
one call. ``sequence_forward`` / ``sequence_backward`` run whole sequences; ``step_forward`` /
``step_backward`` are the same kernels for one step (``step()``, and ragged batches, whose loop
over time stays in ``nn.bptt``). Selected by ``model_core.cells.select`` for float32 NumPy
layers when ``model_core.native.AVAILABLE``.
"""
from __future__ import annotations

import numpy as np

from model_core.cells.lstm_cell import GATES, STATE_SIZE, cache_shapes, fold_bias, gate_constants
from model_core.cells.native_weights import (FUSED_MIN_BATCH, NULL, aligned_empty, backward_strides, c_array,
                                             fused_input, input_weights, length_one, projected, ptr,
                                             recurrent_weights, row_strides, rows_contiguous, step_input_weights,
                                             step_keeps_pack, train_cache)
from model_core.native import STEP_KINDS, handle, lib

__all__ = ["GATES", "STATE_SIZE", "cache_shapes", "fold_bias", "gate_constants", "sequence_backward",
           "sequence_forward", "sequence_forward_fused", "step_backward", "step_entry", "step_forward", "step_forward_input",
           "step_weights"]


def sequence_forward(xproj, state0, weight_hh_t, bias_hh, consts, reverse, y_out, train):
    """One direction over a full-length sequence.

    xproj: (T, B, 4H) with both biases; state0: (h0, c0), each (B, H); weight_hh_t: (H, 4H)
    C-contiguous; y_out: (T, B, H) view (rows may be strided) that receives every h_t.
    Returns ((h_T, c_T), cache); the cache (``native_weights.train_cache``) only when ``train``.
    """
    T, B, G4 = xproj.shape
    H = G4 // 4
    h0, c0 = (c_array(s) for s in state0)
    w = recurrent_weights(weight_hh_t, B, T)
    hT, cT = np.empty((B, H), np.float32), np.empty((B, H), np.float32)
    work = aligned_empty(6 * B * H)                                       # c ping-pong; (B, 4H) unpacked
    cache, ptrs = train_cache(cache_shapes, STATE_SIZE, T, B, H, reverse) if train else (None, (NULL,) * 4)
    xt, xb = row_strides(xproj)
    yt, yb = row_strides(y_out)
    lib.mc_lstm_forward(T, B, H, int(reverse), ptr(xproj), xt, xb, NULL, NULL, w.ptr, w.wk, w.wg, w.wu, ptr(h0), ptr(c0),
                        ptr(y_out), yt, yb, ptr(hT), ptr(cT), *ptrs, ptr(work))
    return (hT, cT), cache


def sequence_forward_fused(x, weight_ih_t, bias, state0, weight_hh_t, bias_hh, consts, reverse, y_out, train):
    """``sequence_forward`` from the raw input x (T, B, I): the kernel makes the input projection in
    its register tile (W_ih^T packed like W_hh^T), so no (T, B, 4H) projection is written and read
    back (BPTT never reads it). bias: both biases folded (4H,) or None (bias_hh and consts: the
    GRU's signature). Returns ((h_T, c_T), cache), or None when this batch reads W_hh row by row
    (small batches: the fused tile needs the packed layout; the caller projects as before). One
    step (T = 1) is ``step_forward_input``, whatever the batch and layout."""
    T, B, I = x.shape
    H = weight_hh_t.shape[0]
    if T == 1:                                             # the call step() makes: the same bits
        return length_one(step_forward_input, step_weights(weight_ih_t, bias, weight_hh_t, bias_hh), cache_shapes,
                          STATE_SIZE, x, state0, y_out, reverse, train)
    if 0 < B < FUSED_MIN_BATCH:                            # one row: projected first, with the fused tile's bits
        return sequence_forward(projected(x, weight_ih_t, bias, GATES), state0, weight_hh_t, bias_hh, consts, reverse,
                                y_out, train)
    w = recurrent_weights(weight_hh_t, B, T)
    if not w.packed:                                       # the fused tile needs the packed layout
        return None
    wi, x = input_weights(weight_ih_t, GATES), fused_input(x)
    bias = None if bias is None else c_array(bias)
    h0, c0 = (c_array(s) for s in state0)
    hT, cT = np.empty((B, H), np.float32), np.empty((B, H), np.float32)
    work = aligned_empty(6 * B * H)
    cache, ptrs = train_cache(cache_shapes, STATE_SIZE, T, B, H, reverse) if train else (None, (NULL,) * 4)
    xt, xb = row_strides(x)
    yt, yb = row_strides(y_out)
    if lib.mc_lstm_forward_fused(T, B, H, I, int(reverse), ptr(x), xt, xb, ptr(wi), ptr(bias), NULL, w.ptr, w.wk, w.wg,
                                 w.wu, ptr(h0), ptr(c0), ptr(y_out), yt, yb, ptr(hT), ptr(cT), *ptrs, ptr(work)):
        return None
    return (hT, cT), cache


def sequence_backward(cache, weight_hh_t, dy, d_final):
    """BPTT over a full-length sequence: dy (T, B, H) (rows may be strided), d_final (dh_T, dc_T).

    Returns (dgx, dgh, (dh0, dc0)): the pre-activation gradients (T, B, 4H) (one array: the
    biases are folded) and the gradient on the initial state.
    """
    gates, tanh_c = cache["steps"]["gates"], cache["steps"]["tanh_c"]
    weight_hh_t = c_array(weight_hh_t)                                  # (H, 4H); the layer's storage already is
    T, B, G4 = gates.shape
    H = G4 // 4
    dy = backward_strides(dy)
    dyt, dyb = row_strides(dy)
    dhT, dcT = (c_array(d) for d in d_final)
    dgx = np.empty((T, B, 4 * H), np.float32)
    dh0, dc0 = np.empty((B, H), np.float32), np.empty((B, H), np.float32)
    work = aligned_empty((2, B, H))
    lib.mc_lstm_backward(T, B, H, int(cache["reverse"]), ptr(weight_hh_t), ptr(dy), dyt, dyb, ptr(gates),
                         ptr(tanh_c), ptr(cache["prev"][1]), ptr(dhT), ptr(dcT), ptr(dgx), ptr(dh0), ptr(dc0),
                         ptr(work))
    return dgx, dgx, (dh0, dc0)


def step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, out):
    """One step: xproj_t (B, 4H); prev (h, c); out (h', c'), each (B, H), never aliasing prev (the
    kernel writes h' with contiguous rows and c' C-contiguous; other layouts go through a copy);
    cache_t {"gates", "tanh_c"} is written when given (None: inference, nothing kept).

    Inference into C-contiguous outputs (``step()``: a streaming session pays this per token) goes
    through the step entry point with array handles: no pointer conversions, scratch and packing in C."""
    h_next, c_next = out
    if (cache_t is None and h_next.flags.c_contiguous and c_next.flags.c_contiguous       # tested first: per token
            and not step_keeps_pack(weight_hh_t, len(h_next))):                # else: the kept packed copy below
        xproj_t, h, c = c_array(xproj_t), c_array(prev[0]), c_array(prev[1])
        if lib.mc_lstm_step(xproj_t.shape[0], h.shape[1], handle(xproj_t), handle(c_array(weight_hh_t)), handle(h),
                            handle(c), handle(h_next), handle(c_next)):
            raise MemoryError("the LSTM step kernel could not allocate its scratch buffer")
        return
    if not (rows_contiguous(h_next) and c_next.flags.c_contiguous):     # a state laid out another way
        tmp = (np.empty(h_next.shape, np.float32), np.empty(c_next.shape, np.float32))
        step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, tmp)
        h_next[...], c_next[...] = tmp
        return
    xproj_t = c_array(xproj_t)
    h, c = (c_array(s) for s in prev)
    B, G4 = xproj_t.shape
    H = G4 // 4
    w = recurrent_weights(weight_hh_t, B)
    gates = (NULL, NULL) if cache_t is None else (ptr(cache_t["gates"]), ptr(cache_t["tanh_c"]))
    lib.mc_lstm_forward(1, B, H, 0, ptr(xproj_t), 0, G4, NULL, NULL, w.ptr, w.wk, w.wg, w.wu, ptr(h), ptr(c),
                        ptr(h_next), 0, h_next.strides[0] // 4, NULL, ptr(c_next), *gates, NULL, NULL, NULL)


def step_weights(weight_ih_t, bias, weight_hh_t, bias_hh) -> tuple:
    """What ``step_forward_input`` reads of a layer's parameters, found once per call or, for a
    frozen layer, once for good (``RecurrentBase`` keeps it): (W_ih, W_hh, packed, bias), the kept
    packed copies of read-only weights (``step_input_weights``); bias both biases folded (4H,) or
    None (bias_hh: the GRU's signature)."""
    return (*step_input_weights(weight_ih_t, weight_hh_t, GATES), None if bias is None else c_array(bias))


def step_entry(weights) -> tuple:
    """What the compiled step entry point (``model_core.native.step_entry``) reads of a
    ``step_weights`` value: (kind, (W_ih, W_hh, packed, bias, b_hn)), the arrays it passes the kernel."""
    wi, wh, packed, bias = weights
    return STEP_KINDS["lstm"], (wi, wh, packed, bias, None)


def step_forward_input(x_t, weights, prev, out, cache=None):
    """One step from the raw input x_t (B, I), the projection made in the kernel: ``step()``, and a
    length-1 sequence (``sequence_forward_fused``), which make this same call so that they agree bit
    for bit. weights: ``step_weights``; prev (h, c); out (h', c'), each (B, H), never aliasing prev
    (another layout than C-contiguous goes through a copy); cache: a length-1 ``train_cache``,
    written when given (training)."""
    if not (out[0].flags.c_contiguous and out[1].flags.c_contiguous):
        tmp = (np.empty(out[0].shape, np.float32), np.empty(out[1].shape, np.float32))
        step_forward_input(x_t, weights, prev, tmp, cache)
        out[0][...], out[1][...] = tmp
        return
    wi, wh, packed, bias = weights
    x_t, h, c = c_array(x_t), c_array(prev[0]), c_array(prev[1])
    B, I = x_t.shape
    kept = (cache["steps"]["gates"], cache["steps"]["tanh_c"], *cache["prev"]) if cache else (None,) * 4
    if lib.mc_lstm_input_step(B, h.shape[1], I, handle(x_t), handle(wi), handle(bias), handle(wh), packed, handle(h),
                              handle(c), handle(out[0]), handle(out[1]), *map(handle, kept)):
        raise MemoryError("the LSTM step kernel could not allocate its scratch buffer")


def step_backward(xp, d_next, prev, weight_hh_t, consts, cache_t, dgx_t, dgh_t):
    """One step of BPTT: d_next (dh', dc'); writes dgx_t (B, 4H) (``dgh_t`` is the same array)
    and returns (dh, dc). ``weight_hh_t`` is (H, 4H), C-contiguous."""
    B, G4 = dgx_t.shape
    H = G4 // 4
    weight_hh_t = c_array(weight_hh_t)
    dh_next, dc_next = (c_array(d) for d in d_next)
    c = c_array(prev[1])
    dh, dc = np.empty((B, H), np.float32), np.empty((B, H), np.float32)
    work = aligned_empty((2, B, H))
    lib.mc_lstm_backward(1, B, H, 0, ptr(weight_hh_t), NULL, 0, 0, ptr(cache_t["gates"]),
                         ptr(cache_t["tanh_c"]), ptr(c), ptr(dh_next), ptr(dc_next), ptr(dgx_t), ptr(dh), ptr(dc),
                         ptr(work))
    return dh, dc
