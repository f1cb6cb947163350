"""Elman RNN with the whole time loop in compiled code (``model_core/native``): forward and BPTT side by side.

Same math and caches as ``rnn_cell`` (h' = act(x W_ih^T + b + h W_hh^T), act tanh or relu; BPTT
reads h' alone). The kernel reads the weights as panels of 32 units (``native_weights.pack`` with
``panels``), so one row runs the LSTM's register tile; a whole sequence is one call, where the
Numba cell (``fused_rnn``) pays a BLAS call and a Python step per timestep (at B=1, H=256: ~10 us
a step, onnxruntime ~8). ``make(nonlinearity)`` returns the cell's functions with the
activation bound. Selected by ``model_core.cells.select`` for float32 NumPy layers when
``model_core.native.AVAILABLE``.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from model_core.cells.native_weights import (NULL, aligned_empty, backward_strides, c_array, fused_input,
                                             fuses_input, input_weights, length_one, ptr, recurrent_panels,
                                             row_strides, rows_contiguous, step_input_weights, train_cache)
from model_core.cells.rnn_cell import GATES, STATE_SIZE, cache_shapes, fold_bias, gate_constants
from model_core.native import STEP_KINDS, handle, lib

__all__ = ["GATES", "STATE_SIZE", "cache_shapes", "fold_bias", "gate_constants", "make", "step_weights"]


def _forward(T, B, H, I, reverse, relu, x, wi, bias, lens, w, packed, h0, y, hT, ptrs) -> None:
    """mc_rnn_forward over x (T, B, I) raw with wi, else (T, B, H) projected; y (T, B, H) with
    contiguous rows; ptrs: (act, prev_h) pointers, or NULLs for inference."""
    xt, xb = row_strides(x)
    yt, yb = row_strides(y)
    got = lib.mc_rnn_forward(T, B, H, I, int(reverse), int(relu), ptr(x), xt, xb, ptr(wi), ptr(bias), ptr(lens), ptr(w),
                             packed, ptr(h0), ptr(y), yt, yb, ptr(hT), *ptrs)
    if got == -2:
        raise MemoryError("the RNN kernel could not allocate its scratch buffer")


def step_weights(weight_ih_t, bias, weight_hh_t, bias_hh) -> tuple:
    """What ``step_forward_input`` reads of a layer's parameters, (W_ih, W_hh, packed, bias): the kept
    panels of read-only weights (packed = 1: the projection made in the register tile), else W_ih^T
    and W_hh^T as stored (0). bias: both folded (H,) or None; bias_hh: the other cells' signature."""
    return (*step_input_weights(weight_ih_t, weight_hh_t, GATES, panels=True), None if bias is None else c_array(bias))


def make(nonlinearity: str) -> dict[str, Callable]:
    """The native RNN's functions for ``"tanh"`` or ``"relu"``, by ``CellSteps``' field names."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    relu = nonlinearity == "relu"

    def sequence_forward(xproj, state0, weight_hh_t, bias_hh, consts, reverse, y_out, train):
        """One full-length direction: xproj (T, B, H) with both biases; state0 (h0,) (B, H);
        weight_hh_t (H, H); y_out (T, B, H) view. Returns ((h_T,), cache or None)."""
        T, B, H = xproj.shape
        w, packed = recurrent_panels(weight_hh_t, B, T)
        h0, hT = c_array(state0[0]), np.empty((B, H), np.float32)
        cache, ptrs = train_cache(cache_shapes, STATE_SIZE, T, B, H, reverse) if train else (None, (NULL, NULL))
        _forward(T, B, H, 0, reverse, relu, xproj, None, None, None, w, packed, h0, y_out, hT, ptrs)
        return (hT,), cache

    def sequence_forward_fused(x, weight_ih_t, bias, state0, weight_hh_t, bias_hh, consts, reverse, y_out, train):
        """``sequence_forward`` from the raw input x (T, B, I), the projection made in the tile (as
        ``native_lstm.sequence_forward_fused``); None where the caller should project first (one
        row, or W_hh^T read as stored). One step (T = 1) is ``step_forward_input``."""
        T, B, I = x.shape
        H = weight_hh_t.shape[0]
        if T == 1:                                             # the call step() makes: the same bits
            return length_one(step_forward_input, step_weights(weight_ih_t, bias, weight_hh_t, bias_hh), cache_shapes,
                              STATE_SIZE, x, state0, y_out, reverse, train)
        if not fuses_input(weight_ih_t, B):
            return None
        w, packed = recurrent_panels(weight_hh_t, B, T)
        if not packed:
            return None
        wi, x = input_weights(weight_ih_t, GATES, panels=True), fused_input(x)
        bias = None if bias is None else c_array(bias)
        h0, hT = c_array(state0[0]), np.empty((B, H), np.float32)
        cache, ptrs = train_cache(cache_shapes, STATE_SIZE, T, B, H, reverse) if train else (None, (NULL, NULL))
        _forward(T, B, H, I, reverse, relu, x, wi, bias, None, w, packed, h0, y_out, hT, ptrs)
        return (hT,), cache

    def sequence_backward(cache, weight_hh_t, dy, d_final):
        """BPTT over a full-length sequence: dy (T, B, H), d_final (dh_T,). Returns (dgx, dgh,
        (dh0,)), the pre-activation gradients (T, B, H), one array for both sides."""
        act = cache["steps"]["act"]
        T, B, H = act.shape
        dy = backward_strides(dy)
        dyt, dyb = row_strides(dy)
        weight_hh_t, dhT = c_array(weight_hh_t), c_array(d_final[0])   # named until the call returns
        dgx, dh0, work = np.empty((T, B, H), np.float32), np.empty((B, H), np.float32), aligned_empty((B, H))
        lib.mc_rnn_backward(T, B, H, int(cache["reverse"]), int(relu), ptr(weight_hh_t), ptr(dy), dyt, dyb, ptr(act),
                            ptr(dhT), ptr(dgx), ptr(dh0), ptr(work))
        return dgx, dgx, (dh0,)

    def step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, out):
        """One step (ragged batches, whose loop over time stays in ``nn.bptt``): xproj_t (B, H) with
        both biases; prev (h,); out (h',), never aliasing prev; cache_t {"act"} or None."""
        if not rows_contiguous(out[0]):                               # a state laid out another way
            tmp = (np.empty(out[0].shape, np.float32),)
            step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, tmp)
            out[0][...] = tmp[0]
            return
        xproj_t, h = c_array(xproj_t), c_array(prev[0])
        B, H = h.shape
        w, packed = recurrent_panels(weight_hh_t, B)
        act = None if cache_t is None else cache_t["act"]
        _forward(1, B, H, 0, False, relu, xproj_t[None], None, None, None, w, packed, h, out[0][None], None,
                 (ptr(act), NULL))

    def step_backward(xp, d_next, prev, weight_hh_t, consts, cache_t, dgx_t, dgh_t):
        """One step of BPTT: writes dgx_t (B, H) (dgh_t is the same array); returns (dh,).
        ``weight_hh_t`` (H, H): W_hh^T, as ``nn.bptt`` hands the native cells."""
        act, dh_next = cache_t["act"], c_array(d_next[0])
        B, H = act.shape
        weight_hh_t = c_array(weight_hh_t)
        dh, work = np.empty((B, H), np.float32), aligned_empty((B, H))
        lib.mc_rnn_backward(1, B, H, 0, int(relu), ptr(weight_hh_t), NULL, 0, 0, ptr(act), ptr(dh_next), ptr(dgx_t),
                            ptr(dh), ptr(work))
        return (dh,)

    def step_forward_input(x_t, weights, prev, out, cache=None):
        """One inference step from the raw input (``step()``, a length-1 forward): weights
        ``step_weights``; prev (h,); out (h',) (B, H); cache a length-1 ``train_cache`` or None."""
        if not out[0].flags.c_contiguous:
            tmp = (np.empty(out[0].shape, np.float32),)
            step_forward_input(x_t, weights, prev, tmp, cache)
            out[0][...] = tmp[0]
            return
        wi, wh, packed, bias = weights
        x_t, h = c_array(x_t), c_array(prev[0])
        B, I = x_t.shape
        kept = (cache["steps"]["act"], cache["prev"][0]) if cache else (None, None)
        if lib.mc_rnn_input_step(B, h.shape[1], I, relu, handle(x_t), handle(wi), handle(bias), handle(wh), packed,
                                 handle(h), handle(out[0]), *map(handle, kept)):
            raise MemoryError("the RNN step kernel could not allocate its scratch buffer")

    def step_entry(weights) -> tuple:
        """``native_lstm.step_entry``'s RNN, its activation in the kind."""
        wi, wh, packed, bias = weights
        return STEP_KINDS["rnn_relu" if relu else "rnn_tanh"], (wi, wh, packed, bias, None)

    return {"step_forward": step_forward, "step_backward": step_backward, "sequence_forward": sequence_forward,
            "sequence_backward": sequence_backward, "sequence_forward_fused": sequence_forward_fused,
            "step_forward_input": step_forward_input, "step_weights": step_weights, "step_entry": step_entry}
