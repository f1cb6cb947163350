"""Gradient clipping by global L2 norm: the one place gradients get rescaled."""
from __future__ import annotations

import math


def clip_grad_norm_(grads: dict, max_norm: float) -> float:
    """Scale every gradient in place so their joint L2 norm is at most ``max_norm``.

    Same formula as ``torch.nn.utils.clip_grad_norm_``: coef = max_norm / (total + 1e-6), clamped
    to 1. Returns the total norm *before* clipping, as a Python float. A nan/inf norm is returned
    with the gradients left as they are (torch would fill them with nan), so the caller can skip
    the step.
    """
    arrays = [g for g in grads.values() if g is not None and g.size]
    if not arrays:
        return 0.0
    # sum of squares stays on the device; one host sync for the whole model
    sq = sum((g * g).sum() for g in arrays)
    total = math.sqrt(float(sq))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 and math.isfinite(total):
        for g in arrays:
            g *= coef
    return total
