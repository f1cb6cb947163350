"""The time loops of ONNX LSTM, GRU and RNN, written once for all directions.

Every tensor carries a leading direction axis D (1, or 2 for bidirectional): the directions step
together and each step is one batched matmul. Inputs are already projected (``xw = X W^T + b`` for
all steps at once) and already reversed in time for the reverse direction, so the loops only run
forward. ``mask`` (T, N, 1) is False past a sequence's length: there the state is held, and the
caller zeroes Y. Activation slots are tuples of callables, one per direction, or a single callable
shared by all directions.
"""
from __future__ import annotations


def apply(xp, fns, x):
    """Apply per-direction activations to ``x`` (D, ...)."""
    if len(fns) == 1:
        return fns[0](x)
    return xp.stack([fn(x[d]) for d, fn in enumerate(fns)])


def _clipper(xp, clip):
    if clip is None:
        return lambda g: g
    return lambda g: xp.clip(g, -clip, clip)


def lstm_loop(xp, cfg, xw, R_T, P, h, c, mask, ys):
    """LSTM, gates i, o, f, c. xw (D, T, N, 4H); R_T (D, H, 4H); P (D, 1, 3H) or None;
    h, c (D, N, H); ys (D, T, N, H) or None, filled in place. Returns the final (h, c)."""
    f_act, g_act, h_act = cfg.activations
    clip = _clipper(xp, cfg.clip)
    H = h.shape[-1]
    if P is not None:
        p_i, p_o, p_f = P[..., :H], P[..., H:2 * H], P[..., 2 * H:]  # (D, 1, H) each
    for t in range(xw.shape[1]):
        gates = xw[:, t] + xp.matmul(h, R_T)  # (D, N, 4H)
        if P is None:
            # no peepholes: i, o, f share f() and are contiguous, so activate them in one call
            iof = apply(xp, f_act, clip(gates[..., :3 * H]))  # (D, N, 3H)
            i, o, f = iof[..., :H], iof[..., H:2 * H], iof[..., 2 * H:]
            if cfg.input_forget:
                f = 1 - i
            c_new = f * c + i * apply(xp, g_act, clip(gates[..., 3 * H:]))
        else:
            i = apply(xp, f_act, clip(gates[..., :H] + p_i * c))
            f = 1 - i if cfg.input_forget else apply(xp, f_act, clip(gates[..., 2 * H:3 * H] + p_f * c))
            c_new = f * c + i * apply(xp, g_act, clip(gates[..., 3 * H:]))
            # the output gate's peephole looks at the new cell state
            o = apply(xp, f_act, clip(gates[..., H:2 * H] + p_o * c_new))
        h_new = o * apply(xp, h_act, c_new)  # (D, N, H)
        if mask is not None:
            h_new, c_new = xp.where(mask[t], h_new, h), xp.where(mask[t], c_new, c)
        h, c = h_new, c_new
        if ys is not None:
            ys[:, t] = h
    return h, c


def gru_loop(xp, cfg, xw, R_T, rb_h, h, mask, ys):
    """GRU, gates z, r, h. xw (D, T, N, 3H) holds every bias except, with linear_before_reset,
    R's bias for the candidate, ``rb_h`` (D, 1, H). R_T (D, H, 3H); h (D, N, H). Returns h."""
    f_act, g_act = cfg.activations
    clip = _clipper(xp, cfg.clip)
    H = h.shape[-1]
    R_zr, R_h = R_T[..., :2 * H], R_T[..., 2 * H:]  # (D, H, 2H), (D, H, H)
    for t in range(xw.shape[1]):
        x_t = xw[:, t]  # (D, N, 3H)
        if cfg.linear_before_reset:
            hr = xp.matmul(h, R_T)  # (D, N, 3H)
            zr = apply(xp, f_act, clip(x_t[..., :2 * H] + hr[..., :2 * H]))
            z, r = zr[..., :H], zr[..., H:]
            candidate = apply(xp, g_act, clip(x_t[..., 2 * H:] + r * (hr[..., 2 * H:] + rb_h)))
        else:
            zr = apply(xp, f_act, clip(x_t[..., :2 * H] + xp.matmul(h, R_zr)))
            z, r = zr[..., :H], zr[..., H:]
            candidate = apply(xp, g_act, clip(x_t[..., 2 * H:] + xp.matmul(r * h, R_h)))
        h_new = candidate + z * (h - candidate)  # (1 - z) * candidate + z * h
        h = h_new if mask is None else xp.where(mask[t], h_new, h)
        if ys is not None:
            ys[:, t] = h
    return h


def rnn_loop(xp, cfg, xw, R_T, h, mask, ys):
    """Simple RNN. xw (D, T, N, H) with both biases; R_T (D, H, H); h (D, N, H). Returns h."""
    (f_act,) = cfg.activations
    clip = _clipper(xp, cfg.clip)
    for t in range(xw.shape[1]):
        h_new = apply(xp, f_act, clip(xw[:, t] + xp.matmul(h, R_T)))  # (D, N, H)
        h = h_new if mask is None else xp.where(mask[t], h_new, h)
        if ys is not None:
            ys[:, t] = h
    return h
