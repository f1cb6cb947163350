"""Functional losses: each returns ``(loss, dpred)``, the mean loss as a Python float and its gradient.

With ``mask=None`` the mean runs over every element, matching torch's ``reduction='mean'``. With a
0/1 ``mask`` the masked-out elements drop out of both the sum and the count, so padded steps of a
batch of ragged sequences cost nothing and do not dilute the mean. A mask with no ones gives a
loss of 0.0 and a zero gradient (torch would return nan), so an all-padding chunk is harmless.
"""
from __future__ import annotations

import numpy as np

from model_core.backend import get_xp

__all__ = ["log_softmax", "softmax", "sigmoid", "activate", "cross_entropy", "bce_with_logits", "mse"]


def _xp(a):
    """numpy for host arrays, cupy for device arrays (imported lazily, only when one shows up)."""
    return get_xp("gpu") if hasattr(a, "__cuda_array_interface__") else np


def log_softmax(x, axis: int = -1):
    """Stable log-softmax: shift by the max so exp never overflows."""
    xp = _xp(x)
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


def softmax(x, axis: int = -1):
    """Stable softmax."""
    xp = _xp(x)
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(x):
    return 1.0 / (1.0 + _xp(x).exp(-x))


def activate(logits, output: str):
    """The head's scores read as ``ModelConfig.output`` says, the inverse link of its loss below:
    ``logits`` -> softmax probabilities (cross_entropy), ``binary`` -> sigmoid probabilities
    (bce_with_logits), ``regression`` -> the values themselves (mse)."""
    if output == "logits":
        return softmax(logits)
    if output == "binary":
        return sigmoid(logits)
    if output == "regression":
        return logits
    raise ValueError(f"unknown output kind {output!r}")


def _weights(xp, mask, shape, dtype):
    """Per-element weights broadcast to ``shape`` (None when unmasked) and the count to average over."""
    if mask is None:
        return None, max(int(np.prod(shape)), 1)
    w = xp.broadcast_to(xp.asarray(mask, dtype=dtype), shape)
    count = float(w.sum())
    return w, count if count > 0 else 1.0  # all masked: loss and gradient are both 0


def cross_entropy(logits, targets, mask=None):
    """logits (..., C), integer targets (...), mask (...) of 0/1 -> (loss, dlogits (..., C)).

    Masked-out targets may hold any value (e.g. a padding id of -100); they are never read.
    """
    xp = _xp(logits)
    C = logits.shape[-1]
    targets = xp.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal logits shape {tuple(logits.shape[:-1])}")
    if targets.dtype.kind not in "iu":
        raise ValueError(f"targets must be integers, got dtype {targets.dtype}")
    w, count = _weights(xp, mask, targets.shape, logits.dtype)
    z = logits.reshape(-1, C)  # (N, C)
    t = targets.ravel()  # (N,)
    if w is not None:
        w = w.ravel()  # (N,)
        t = xp.where(w != 0, t, 0)  # masked targets are never read
    if t.size and bool(((t < 0) | (t >= C)).any()):
        raise ValueError(f"cross_entropy targets must lie in [0, {C}); got min {int(t.min())}, max {int(t.max())}")

    rows = xp.arange(t.shape[0])
    logp = log_softmax(z, axis=-1)  # (N, C)
    nll = -logp[rows, t]  # (N,)
    if w is not None:
        nll = nll * w
    loss = float(nll.sum()) / count

    # d(-log softmax_t)/dz = softmax(z) - onehot(t), scaled by the mask and the mean
    dz = xp.exp(logp)  # (N, C)
    dz[rows, t] -= 1.0
    if w is not None:
        dz *= w[:, None]
    dz /= count
    return loss, dz.reshape(logits.shape)


def bce_with_logits(logits, targets, mask=None):
    """logits (...), targets (...) in [0, 1], mask broadcastable to (...) -> (loss, dlogits (...)).

    Uses max(x, 0) - x*y + log1p(exp(-|x|)), which never exponentiates a large positive number.
    """
    xp = _xp(logits)
    if targets.shape != logits.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal logits shape {tuple(logits.shape)}")
    w, count = _weights(xp, mask, logits.shape, logits.dtype)
    e = xp.exp(-xp.abs(logits))  # in (0, 1]: safe for any logit
    per = xp.maximum(logits, 0) - logits * targets + xp.log1p(e)
    # stable sigmoid from the same e: 1/(1+e) for x >= 0, e/(1+e) for x < 0
    sig = xp.where(logits >= 0, 1.0, e) / (1.0 + e)
    dx = (sig - targets).astype(logits.dtype, copy=False)
    if w is not None:
        per = per * w
        dx *= w
    dx /= count
    return float(per.sum()) / count, dx


def mse(pred, target, mask=None):
    """pred (...), target (...), mask broadcastable to (...) -> (loss, dpred (...))."""
    xp = _xp(pred)
    if target.shape != pred.shape:
        raise ValueError(f"target shape {tuple(target.shape)} must equal pred shape {tuple(pred.shape)}")
    w, count = _weights(xp, mask, pred.shape, pred.dtype)
    diff = pred - target  # (...)
    if w is not None:
        diff = diff * w  # w is 0/1, so w*diff^2 == (w*diff)^2
    loss = float((diff * diff).sum()) / count
    return loss, (2.0 / count) * diff
