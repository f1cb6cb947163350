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

from typing import Any, TypedDict

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


class DirectionCache(TypedDict):
    """What ``backward_direction`` needs from one direction's training forward (the native
    kernels' ``sequence_forward`` returns the same)."""
    steps: dict[str, Any]        # the cell's per-step arrays (``cell.cache_shapes``), each (T, *shape)
    prev: list                   # prev[k][t]: state component k entering step t, (T, B, H)
    reverse: bool


def _emit(xp, out, cur, y_out, t, masks, copy_h: bool) -> None:
    """After step ``t``: its output into ``y_out[t]``; past a sequence's end the output is zero and
    the state passes through unchanged (packed-sequence semantics)."""
    if masks is None:
        if copy_h:
            y_out[t] = out[0]
        return
    keep, keep_f = masks[0][t], masks[1][t]                      # (B, 1)
    xp.multiply(out[0], keep_f, out=y_out[t])                    # zero output past the length
    for k in range(len(out)):
        xp.copyto(out[k], cur[k], where=~keep)                   # state passes through padding


def forward_direction_infer(xp, cell, consts, xproj, state0, weight_hh, bias_hh, masks, reverse, y_out) -> tuple:
    """Inference over one direction: every h_t into ``y_out``, and the final state returned.

    xproj: (T, B, G*H) input projection with biases folded in; state0: tuple of (B, H);
    weight_hh: (G*H, H); masks: None or (bool (T, B, 1), float (T, B, 1)); y_out: (T, B, H)
    view. Two ping-pong buffers carry the state; nothing per step is kept.
    """
    weight_hh_t = weight_hh.T                                    # (H, G*H), contiguous when stored F-order
    if cell.native and masks is None:                            # the whole loop in one compiled call
        return cell.sequence_forward(xproj, state0, weight_hh_t, bias_hh, consts, reverse, y_out, False)[0]
    T, B, _ = xproj.shape
    H, dtype, n_state = state0[0].shape[1], xproj.dtype, len(state0)
    # the native step keeps nothing for inference; the others want scratch buffers for their gates
    scratch = None if cell.native else {k: xp.empty(s, dtype=dtype) for k, s in cell.cache_shapes(B, H).items()}
    pingpong = [[xp.empty((B, H), dtype=dtype) for _ in range(n_state)] for _ in range(2)]
    final = [xp.empty((B, H), dtype=dtype) for _ in range(n_state)]
    # full-length sequences write h' straight into the output (when that slice is contiguous, as it
    # is for one direction), saving a copy per step
    h_into_y = masks is None and y_out[0:1].flags.c_contiguous
    cur = tuple(state0)                                          # never written to: the caller's arrays stay intact
    for i, t in enumerate(_time_order(T, reverse)):
        last = i == T - 1
        out = final if last else pingpong[i % 2]
        if h_into_y and not last:
            out = [y_out[t], *out[1:]]
        cell.step_forward(xp, xproj[t], cur, weight_hh_t, bias_hh, consts, scratch, out)
        _emit(xp, out, cur, y_out, t, masks, copy_h=not h_into_y or last)
        cur = tuple(out)
    if T == 0:
        for k in range(n_state):
            final[k][...] = state0[k]
    return tuple(final)


PROJECTION_CHUNK_BYTES = 4 << 20     # an input projection chunk that stays in cache until the kernel reads it


def forward_direction_fused(cell, consts, x, w_ih, bias, state0, weight_hh, bias_hh, reverse, y_out, train):
    """One full-length direction from the raw input x (T, B, I), the native kernel making the input
    projection in its register tile (``sequence_forward_fused``): for inference and for training,
    whose BPTT never reads the projection. Returns (final state, cache or None), or None where the
    kernel cannot (one row, or weights it reads unpacked): the caller projects first."""
    if cell.sequence_forward_fused is None:
        return None
    return cell.sequence_forward_fused(x, w_ih.T, bias, state0, weight_hh.T, bias_hh, consts, reverse, y_out, train)


def forward_direction_chunked(cell, consts, x, w_ih, bias, state0, weight_hh, bias_hh, reverse, y_out) -> tuple:
    """Native inference over one full-length direction, projecting the input a few steps at a time
    (or, where it can, inside the kernel: ``forward_direction_fused``).

    The whole ``(T, B, G*H)`` projection of a long batch is tens of MB: written once (a fresh array
    first-touches every page), then read back from DRAM by the kernel. Projected into one reused
    chunk of at most ``PROJECTION_CHUNK_BYTES`` just before the kernel runs those steps, it is read
    back from cache and never allocated per call. x: (T, B, I); w_ih: (G*H, I); bias: (G*H,) or None.
    """
    fused = forward_direction_fused(cell, consts, x, w_ih, bias, state0, weight_hh, bias_hh, reverse, y_out, False)
    if fused is not None:
        return fused[0]
    T, B, I = x.shape
    GH = w_ih.shape[0]
    chunk = max(1, min(T, PROJECTION_CHUNK_BYTES // max(1, B * GH * 4)))
    buf = np.empty((chunk, B, GH), np.float32)
    w_ih_t, weight_hh_t = w_ih.T, weight_hh.T
    starts = range(0, T, chunk)
    state = tuple(state0)
    for t0 in (reversed(starts) if reverse else starts):           # the reverse direction starts at the end
        t1 = min(t0 + chunk, T)
        xproj = buf[:t1 - t0]
        np.matmul(x[t0:t1].reshape(-1, I), w_ih_t, out=xproj.reshape(-1, GH))
        if bias is not None:
            xproj += bias
        state, _ = cell.sequence_forward(xproj, state, weight_hh_t, bias_hh, consts, reverse, y_out[t0:t1], False)
    return state


def forward_direction_train(xp, cell, consts, xproj, state0, weight_hh, bias_hh, masks, reverse,
                            y_out) -> tuple[tuple, DirectionCache]:
    """Training forward over one direction (arguments as ``forward_direction_infer``).

    Returns (final state, cache). Everything backward needs is preallocated once for the whole
    sequence, and each step writes its new state straight into the next step's ``prev`` slot.
    """
    weight_hh_t = weight_hh.T                                    # (H, G*H)
    if cell.native and masks is None:
        return cell.sequence_forward(xproj, state0, weight_hh_t, bias_hh, consts, reverse, y_out, True)
    T, B, _ = xproj.shape
    H, dtype, n_state = state0[0].shape[1], xproj.dtype, len(state0)
    steps = {k: xp.empty((T, *s), dtype=dtype) for k, s in cell.cache_shapes(B, H).items()}
    prev = [xp.empty((T, B, H), dtype=dtype) for _ in range(n_state)]
    final = [xp.empty((B, H), dtype=dtype) for _ in range(n_state)]
    order = list(_time_order(T, reverse))
    if T:
        for k in range(n_state):
            prev[k][order[0]] = state0[k]
    cur = tuple(state0)
    for i, t in enumerate(order):
        out = final if i == T - 1 else [p[order[i + 1]] for p in prev]   # next step's "prev" slot, no copy
        cell.step_forward(xp, xproj[t], cur, weight_hh_t, bias_hh, consts, {k: v[t] for k, v in steps.items()}, out)
        _emit(xp, out, cur, y_out, t, masks, copy_h=True)
        cur = tuple(out)
    if T == 0:
        for k in range(n_state):
            final[k][...] = state0[k]
    return tuple(final), DirectionCache(steps=steps, prev=prev, reverse=reverse)


def backward_direction(xp, cell, consts, cache: DirectionCache, weight_hh, dy, d_final, masks, separate_hidden_grad):
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
