"""The loop over time for one layer and one direction, forward and backward (BPTT) side by side.

Cells supply the per-step math (``model_core.cells``); this file owns buffers, direction,
variable lengths and the weight-gradient products. Everything is indexed by time ``t``:
``prev[k][t]`` is state component ``k`` entering the step at time ``t``, whichever way the
direction runs. Padded steps (``t >= length``) leave the state untouched and output zero, which
is PyTorch's packed-sequence semantics (the reverse direction therefore starts at each
sequence's last valid step).
"""
from __future__ import annotations


def _time_order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def forward_direction(xp, cell, consts, xproj, state0, weight_hh, bias_hh, masks, reverse, y_out, train):
    """Run one direction over a sequence.

    xproj: (T, B, G*H) input projection with biases folded in; state0: tuple of (B, H);
    masks: None or (bool (T, B, 1), float (T, B, 1)); y_out: (T, B, H) view that receives h_t.
    Returns (final_state, cache); cache is None unless ``train``.
    """
    T, B, _ = xproj.shape
    H = state0[0].shape[1]
    dtype = xproj.dtype
    n_state = len(state0)
    steps = _time_order(T, reverse)
    shapes = cell.cache_shapes(B, H)
    if train:
        # Everything backward needs, preallocated once for the whole sequence.
        step_cache = {k: xp.empty((T, *s), dtype=dtype) for k, s in shapes.items()}
        prev = [xp.empty((T, B, H), dtype=dtype) for _ in range(n_state)]
    else:
        step_cache = {k: xp.empty((1, *s), dtype=dtype) for k, s in shapes.items()}
        pingpong = [[xp.empty((B, H), dtype=dtype) for _ in range(n_state)] for _ in range(2)]
    final = [xp.empty((B, H), dtype=dtype) for _ in range(n_state)]

    order = list(steps)
    if train and T:
        for k in range(n_state):
            prev[k][order[0]] = state0[k]
    cur = tuple(state0)  # never written to: the caller's arrays stay intact
    for i, t in enumerate(order):
        if i == T - 1:
            out = final
        elif train:
            out = [p[order[i + 1]] for p in prev]                # next step's "prev" slot, no copy
        else:
            out = pingpong[i % 2]
        cache_t = {k: v[t if train else 0] for k, v in step_cache.items()}
        cell.step_forward(xp, xproj[t], cur, weight_hh, bias_hh, consts, cache_t, out)
        if masks is None:
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
    step_cache, prev = cache["steps"], cache["prev"]
    T, B, H = prev[0].shape
    G = cell.GATES
    dtype = prev[0].dtype
    dgx = xp.empty((T, B, G * H), dtype=dtype)
    dgh = xp.empty_like(dgx) if separate_hidden_grad else dgx
    d = tuple(dk.copy() for dk in d_final)
    for t in reversed(_time_order(T, cache["reverse"])):
        dh = d[0] + dy[t]                                        # the output and the carried state
        if masks is None:
            d_cand = (dh, *d[1:])
        else:
            keep_f = masks[1][t]
            d_cand = (dh * keep_f, *(dk * keep_f for dk in d[1:]))
        cache_t = {k: v[t] for k, v in step_cache.items()}
        prev_t = tuple(p[t] for p in prev)
        d_prev = cell.step_backward(xp, d_cand, prev_t, weight_hh, consts, cache_t, dgx[t], dgh[t])
        if masks is not None:
            skip_f = 1.0 - masks[1][t]                           # padded steps pass the gradient through
            d_prev = tuple(dp + dk * skip_f for dp, dk in zip(d_prev, d))
        d = d_prev
    return dgx, dgh, d
