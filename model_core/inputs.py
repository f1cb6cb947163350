"""The one check of model inputs against a ``ModelConfig``: token ids are integers in
[0, input_size); feature vectors are numbers, ``input_size`` wide, and (for requests) finite.

Each function returns what is wrong, in words, or None. Callers wrap it in their own error with
their own field name: ``SequenceModel.encode`` and ``OnnxSequenceModel`` raise ``ValueError``, the
service's JSON (``service.encoding``) and v2 tensors (``service.openinference.tensors``) a 4xx.
Layout (time- or batch-major) and rank are the caller's: only it knows which axis is which.
"""
from __future__ import annotations

import numpy as np

from model_core.config import ModelConfig


def token_ids_problem(c: ModelConfig, ids) -> str | None:
    """``ids``: a NumPy or CuPy array of any shape."""
    if ids.dtype.kind not in "iu":
        return f"token ids must be an integer array, got {ids.dtype}"
    if ids.size:
        # a keystroke's few ids: Python's min and max of a list cost less than two array reductions
        few = ids.ravel().tolist() if ids.size <= 16 else None
        lo, hi = (min(few), max(few)) if few else (int(ids.min()), int(ids.max()))
        if lo < 0 or hi >= c.input_size:
            return f"token ids must lie in [0, {c.input_size}), got min {lo} max {hi}"
    return None


def features_problem(c: ModelConfig, x, finite: bool = True) -> str | None:
    """``x``: an array whose last axis is the feature vector. ``finite=False`` skips the scan for
    NaN and infinity (the engine's own callers, for whom it would cost a device sync per step)."""
    if x.dtype.kind not in "biuf":
        return f"features must be numbers, got {x.dtype}"
    if x.ndim < 1 or x.shape[-1] != c.input_size:
        return f"every step needs exactly {c.input_size} features, got {x.shape[-1] if x.ndim else 0}"
    if finite:
        with np.errstate(over="ignore", invalid="ignore"):
            if not np.isfinite(np.asarray(x, dtype=np.float32)).all():
                return "features must be finite numbers within float32's range"
    return None
