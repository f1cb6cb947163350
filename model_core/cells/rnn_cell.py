"""One Elman RNN step, forward and backward side by side (TMVA's TBasicRNNLayer cell).

    h' = act(x W_ih + b_ih + h W_hh + b_hh),  act = tanh or relu
"""
from __future__ import annotations

from model_core.cells.matmul import product, recurrent_product

GATES = 1
STATE_SIZE = 1


def gate_constants(xp, H: int, dtype):
    return {}


def cache_shapes(B: int, H: int) -> dict[str, tuple[int, ...]]:
    """The activated output is all the derivative needs: 1 − h'² (tanh) or [h' > 0] (relu)."""
    return {"act": (B, H)}


def fold_bias(bias_ih, bias_hh):
    return bias_ih + bias_hh


def make(nonlinearity: str):
    """The step functions for ``"tanh"`` or ``"relu"``, by ``CellSteps``' field names."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    relu = nonlinearity == "relu"

    def step_forward(xp, xproj_t, prev, weight_hh_t, bias_hh, consts, cache_t, out):
        (h,), (h_next,) = prev, out
        act = cache_t["act"]                                  # (B, H)
        recurrent_product(xp, h, weight_hh_t, act)
        act += xproj_t
        if relu:
            xp.maximum(act, 0, out=act)
        else:
            xp.tanh(act, out=act)
        h_next[...] = act

    def step_backward(xp, d_next, prev, weight_hh, consts, cache_t, dgx_t, dgh_t):
        (dh_next,), act = d_next, cache_t["act"]
        # backprop through the activation, using its cached output
        if relu:
            xp.multiply(dh_next, act > 0, out=dgx_t)
        else:
            xp.multiply(dh_next, 1.0 - act * act, out=dgx_t)
        return (product(xp, dgx_t, weight_hh),)               # (B, H) @ (H, H)

    return {"step_forward": step_forward, "step_backward": step_backward}
