"""One GRU step, forward and backward side by side, with PyTorch's equation and gate order r, z, n.

    r = σ(x W_ir + b_ir + h W_hr + b_hr)
    z = σ(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 − z) * n + z * h

``b_hr`` and ``b_hz`` fold into the input projection; ``b_hn`` cannot, since r multiplies it.
"""
from __future__ import annotations

from model_core.cells.matmul import product, recurrent_product

GATES = 3
STATE_SIZE = 1


def gate_constants(xp, H: int, dtype):
    return {}


def cache_shapes(B: int, H: int) -> dict[str, tuple[int, ...]]:
    """``gates`` holds activated r, z, n; ``hn`` holds h W_hn + b_hn (needed for dr)."""
    return {"gates": (B, GATES * H), "hn": (B, H)}


def fold_bias(bias_ih, bias_hh):
    folded = bias_ih.copy()
    H = bias_ih.shape[0] // GATES
    folded[:2 * H] += bias_hh[:2 * H]
    return folded


def step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, out):
    """xproj_t: (B, 3H); prev: (h,); weight_hh_t: (H, 3H); bias_hh: (3H,) or None; out: (h',)."""
    (h,), (h_next,) = prev, out
    H = h.shape[1]
    gates, hn = cache_t["gates"], cache_t["hn"]               # (B, 3H), (B, H)
    recurrent_product(xp, h, weight_hh_t, gates)              # the one recurrent product
    if bias_hh is not None:
        xp.add(gates[:, 2 * H:], bias_hh[2 * H:], out=hn)
    else:
        hn[...] = gates[:, 2 * H:]
    rz = gates[:, :2 * H]
    rz += xproj_t[:, :2 * H]
    rz *= 0.5                                                 # σ(x) = 0.5·tanh(0.5·x) + 0.5
    xp.tanh(rz, out=rz)
    rz *= 0.5
    rz += 0.5
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    xp.multiply(r, hn, out=n)
    n += xproj_t[:, 2 * H:]
    xp.tanh(n, out=n)
    xp.subtract(h, n, out=h_next)                             # h' = n + z * (h − n)
    h_next *= z
    h_next += n


def step_backward(xp, d_next, prev, weight_hh, consts, cache_t, dgx_t, dgh_t):
    """Writes input-side pre-activation grads to ``dgx_t`` and hidden-side ones to ``dgh_t``.

    They differ only in the n block: the input side sees dn_pre, the hidden side dn_pre * r.
    """
    (dh_next,), (h,) = d_next, prev
    gates, hn = cache_t["gates"], cache_t["hn"]
    H = h.shape[1]
    r, z, n = gates[:, :H], gates[:, H:2 * H], gates[:, 2 * H:]
    # backprop h' = (1 − z) * n + z * h
    dh = dh_next * z
    dn = dh_next - dh                                         # dh' * (1 − z)
    dz = dh_next * (h - n)
    # backprop n = tanh(...) and the r * hn product
    dn *= 1.0 - n * n                                         # dn_pre
    dr = dn * hn
    # backprop the sigmoids: s(1 − s)
    xp.multiply(dr, r * (1.0 - r), out=dgx_t[:, :H])
    xp.multiply(dz, z * (1.0 - z), out=dgx_t[:, H:2 * H])
    dgx_t[:, 2 * H:] = dn
    dgh_t[:, :2 * H] = dgx_t[:, :2 * H]
    xp.multiply(dn, r, out=dgh_t[:, 2 * H:])
    dh += product(xp, dgh_t, weight_hh)                       # (B, 3H) @ (3H, H)
    return (dh,)
