"""The time loops of ONNX LSTM, GRU and RNN: one direction at a time, no allocation per step.

The caller has projected every step's input already (``x = X W^T + b``, one GEMM) and hands each
loop ``x`` (T, N, G*H) in the order the direction reads it, so the loops only run forward. Each
step is one ``(N, H) @ (H, G*H)`` GEMM into a preallocated gate buffer, then gate math in place.
``h`` (and ``c``) (N, H) are updated in place. ``masks[t]`` is None while every sequence is
running, else (N, 1), False where a sequence has ended: its state is held (the caller zeroes Y
there). ``acts`` holds the direction's activations, in the op's slot order.

``native_loop`` is the exception: the engine's compiled kernels, for the default activations.
"""
from __future__ import annotations

import numpy as np

from model_core.cells.native_weights import NULL, aligned_empty, ptr, row_strides
from model_core.native import lib

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}                        # the ops' gate blocks


def activate(xp, fn, a) -> None:
    """``a = fn(a)`` in place; the spec's default activations without a temporary."""
    name = fn.key[0]
    if name == "sigmoid":
        # 1/2 tanh(x/2) + 1/2: one transcendental, no overflow for large negative x
        a *= 0.5
        xp.tanh(a, out=a)
        a *= 0.5
        a += 0.5
    elif name == "tanh":
        xp.tanh(a, out=a)
    elif name == "relu":
        xp.maximum(a, 0, out=a)
    else:
        a[...] = fn(a)


def clip(xp, a, bound) -> None:
    if bound is not None:
        xp.clip(a, -bound, bound, out=a)


def _commit(xp, state, new, mask) -> None:
    """state = new, except where ``mask`` says the sequence has ended."""
    if mask is None:
        state[...] = new
    else:
        xp.copyto(state, new, where=mask)


def lstm_loop(xp, cfg, acts, x, R_T, P, h, c, masks, ys) -> None:
    """LSTM, gates i, o, f, c. x (T, N, 4H); R_T (H, 4H); P (3H,) peepholes or None;
    h, c (N, H) updated in place; ys (T, N, H) or None, filled in place."""
    f_act, g_act, h_act = acts
    N, H = h.shape
    gates = xp.empty((N, 4 * H), h.dtype)                      # (N, 4H)
    i, o, f, g = (gates[:, k * H:(k + 1) * H] for k in range(4))
    c_new, h_new, tmp = (xp.empty((N, H), h.dtype) for _ in range(3))
    p_i, p_o, p_f = (None, None, None) if P is None else (P[:H], P[H:2 * H], P[2 * H:])
    for t in range(x.shape[0]):
        xp.matmul(h, R_T, out=gates)
        gates += x[t]
        if P is None:
            clip(xp, gates, cfg.clip)
            activate(xp, f_act, gates[:, :3 * H])              # i, o, f share f(): one call
        else:
            xp.multiply(p_i, c, out=tmp)
            i += tmp
            xp.multiply(p_f, c, out=tmp)
            f += tmp
            for gate in (i, f, g):
                clip(xp, gate, cfg.clip)
            activate(xp, f_act, i)
            activate(xp, f_act, f)
        if cfg.input_forget:
            xp.subtract(1, i, out=f)                           # the forget gate coupled to the input gate
        activate(xp, g_act, g)
        g *= i                                                 # i * g
        xp.multiply(f, c, out=c_new)
        c_new += g                                             # c' = f * c + i * g
        if P is not None:
            xp.multiply(p_o, c_new, out=tmp)                   # the output gate's peephole sees c'
            o += tmp
            clip(xp, o, cfg.clip)
            activate(xp, f_act, o)
        h_new[...] = c_new
        activate(xp, h_act, h_new)
        h_new *= o                                             # h' = o * h(c')
        _commit(xp, c, c_new, masks[t])
        _commit(xp, h, h_new, masks[t])
        if ys is not None:
            ys[t] = h


def lstm_loop_halved(xp, cfg, acts, x, R_T, P, h, c, masks, ys) -> None:
    """``lstm_loop`` for the default activations (sigmoid, tanh, tanh) without peepholes, with
    the i, o, f columns of x and R_T already scaled by 1/2: one tanh over all four gates, then
    i, o, f = t/2 + 1/2 is sigmoid of the unscaled pre-activation."""
    N, H = h.shape
    gates = xp.empty((N, 4 * H), h.dtype)                      # (N, 4H)
    iof = gates[:, :3 * H]
    i, o, f, g = (gates[:, k * H:(k + 1) * H] for k in range(4))
    c_new, h_new = xp.empty((N, H), h.dtype), xp.empty((N, H), h.dtype)
    for t in range(x.shape[0]):
        xp.matmul(h, R_T, out=gates)
        gates += x[t]
        if cfg.clip is not None:
            xp.clip(iof, -cfg.clip / 2, cfg.clip / 2, out=iof)     # the bound halves with the columns
            clip(xp, g, cfg.clip)
        xp.tanh(gates, out=gates)
        iof *= 0.5
        iof += 0.5
        if cfg.input_forget:
            xp.subtract(1, i, out=f)
        g *= i                                                 # i * g
        mask = masks[t]
        if mask is None:                                       # every sequence running: update in place
            c *= f
            c += g                                             # c' = f * c + i * g
            xp.tanh(c, out=h)
            h *= o                                             # h' = o * tanh(c')
        else:
            xp.multiply(f, c, out=c_new)
            c_new += g
            xp.tanh(c_new, out=h_new)
            h_new *= o
            xp.copyto(c, c_new, where=mask)
            xp.copyto(h, h_new, where=mask)
        if ys is not None:
            ys[t] = h


def gru_loop(xp, cfg, acts, x, R_T, rb_h, h, masks, ys) -> None:
    """GRU, gates z, r, h. x (T, N, 3H) holds every bias except, with linear_before_reset, R's
    bias for the candidate, ``rb_h`` (H,) or None. R_T (H, 3H); h (N, H) updated in place."""
    f_act, g_act = acts
    N, H = h.shape
    h_new = xp.empty((N, H), h.dtype)
    if cfg.linear_before_reset:
        hr = xp.empty((N, 3 * H), h.dtype)                     # h R^T: (N, 3H)
        zr, r, n = hr[:, :2 * H], hr[:, H:2 * H], hr[:, 2 * H:]
    else:
        zr, n, rh = xp.empty((N, 2 * H), h.dtype), xp.empty((N, H), h.dtype), xp.empty((N, H), h.dtype)
        r, R_zr, R_h = zr[:, H:], R_T[:, :2 * H], R_T[:, 2 * H:]   # (H, 2H), (H, H) views
    z = zr[:, :H]
    for t in range(x.shape[0]):
        x_t = x[t]                                             # (N, 3H)
        if cfg.linear_before_reset:
            xp.matmul(h, R_T, out=hr)
            if rb_h is not None:
                n += rb_h
        else:
            xp.matmul(h, R_zr, out=zr)
        zr += x_t[:, :2 * H]
        clip(xp, zr, cfg.clip)
        activate(xp, f_act, zr)
        if cfg.linear_before_reset:
            n *= r                                             # r * (h R_h^T + Rb_h)
        else:
            xp.multiply(r, h, out=rh)
            xp.matmul(rh, R_h, out=n)                          # (r * h) R_h^T
        n += x_t[:, 2 * H:]
        clip(xp, n, cfg.clip)
        activate(xp, g_act, n)
        xp.subtract(h, n, out=h_new)
        h_new *= z
        h_new += n                                             # h' = (1 - z) * n + z * h
        _commit(xp, h, h_new, masks[t])
        if ys is not None:
            ys[t] = h


def rnn_loop(xp, cfg, acts, x, R_T, h, masks, ys) -> None:
    """Simple RNN. x (T, N, H) with both biases; R_T (H, H); h (N, H) updated in place."""
    (f_act,) = acts
    h_new = xp.empty_like(h)
    for t in range(x.shape[0]):
        xp.matmul(h, R_T, out=h_new)
        h_new += x[t]
        clip(xp, h_new, cfg.clip)
        activate(xp, f_act, h_new)
        _commit(xp, h, h_new, masks[t])
        if ys is not None:
            ys[t] = h


def native_loop(op_type, x, weights, bias, rb_h, h, c, lengths, ys, reverse, weights_in=None, relu=False) -> None:
    """LSTM, GRU (linear_before_reset) or RNN through the native kernels, default activations (the
    RNN's Tanh, or Relu with ``relu``): one call.

    x (T, N, G*H) with its gate blocks in the engine's order (i, f, g, o / r, z, n), without the
    biases: ``bias`` (G*H,) or None holds them all except the GRU's ``rb_h`` (H,) or None, and the
    kernel adds it in its gate epilogue; or, with ``weights_in`` (W^T packed like R,
    ``native_weights.pack``), x is the raw input (T, N, I) and the kernel makes the projection in
    its register tile (no (T, N, 4H) array); ``weights``: R packed (``native_weights.packed_weights``);
    h, c (N, H) C-contiguous, updated in place (c None for the GRU); ``lengths`` (N,) int64 or None
    (full length): a row past its length keeps its state, and its Y rows are left for the caller
    to zero. Ranked longest first (``run_recurrent`` ranks a ragged batch), a step computes only the
    rows still running; else each row runs and drops what it made. ys (T, N, H) or None.
    ``reverse``: read x and write ys from the last step back (full-length batches; ragged ones
    arrive already gathered into processing order).
    """
    T, N, GH = x.shape
    H = h.shape[1]
    if not h.flags.c_contiguous or (c is not None and not c.flags.c_contiguous):
        raise ValueError("native_loop updates h and c in place and needs them C-contiguous")
    ragged = lengths is not None and N and int(np.min(lengths)) < T
    lengths = lengths if ragged else None                          # None: every row runs all T steps
    if ys is None:
        ys = aligned_empty((T, N, H))                              # the kernel reads h_t back from Y
    bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
    lens = None if lengths is None else np.ascontiguousarray(lengths, dtype=np.int64)
    work = None if op_type == "RNN" else aligned_empty(6 * N * H)     # the RNN's kernel needs none
    w = weights
    if x.strides[2] != 4:                                          # the raw input may come in any layout
        x = np.ascontiguousarray(x)
    xt, xb = row_strides(x)
    yt, yb = row_strides(ys)
    refused = 0                                                    # the fused entries: nonzero without R packed
    if op_type == "RNN":                    # R and W as panels (native_weights.pack); x raw with weights_in
        refused = lib.mc_rnn_forward(T, N, H, x.shape[2] if weights_in is not None else 0, int(reverse), int(relu),
                                     ptr(x), xt, xb, ptr(weights_in), ptr(bias), ptr(lens), w.ptr, 1, ptr(h), ptr(ys),
                                     yt, yb, ptr(h), NULL, NULL)
    elif op_type == "LSTM" and weights_in is not None:
        refused = lib.mc_lstm_forward_fused(T, N, H, x.shape[2], int(reverse), ptr(x), xt, xb, ptr(weights_in),
                                            ptr(bias), ptr(lens), w.ptr, w.wk, w.wg, w.wu, ptr(h), ptr(c), ptr(ys), yt,
                                            yb, ptr(h), ptr(c), NULL, NULL, NULL, NULL, ptr(work))
    elif op_type == "LSTM":
        lib.mc_lstm_forward(T, N, H, int(reverse), ptr(x), xt, xb, ptr(bias), ptr(lens), w.ptr, w.wk, w.wg, w.wu,
                            ptr(h), ptr(c), ptr(ys), yt, yb, ptr(h), ptr(c), NULL, NULL, NULL, NULL, ptr(work))
    else:
        b_hn = np.zeros(H, np.float32) if rb_h is None else np.ascontiguousarray(rb_h, dtype=np.float32)
        if weights_in is not None:
            refused = lib.mc_gru_forward_fused(T, N, H, x.shape[2], int(reverse), ptr(x), xt, xb, ptr(weights_in),
                                               ptr(bias), ptr(lens), w.ptr, w.wk, w.wg, w.wu, ptr(b_hn), ptr(h),
                                               ptr(ys), yt, yb, ptr(h), NULL, NULL, NULL, ptr(work))
        else:
            lib.mc_gru_forward(T, N, H, int(reverse), ptr(x), xt, xb, ptr(bias), ptr(lens), w.ptr, w.wk, w.wg, w.wu,
                               ptr(b_hn), ptr(h), ptr(ys), yt, yb, ptr(h), NULL, NULL, NULL, ptr(work))
    if refused:
        raise ValueError(f"the fused {op_type} kernel needs R packed")

