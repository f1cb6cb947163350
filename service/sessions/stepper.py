"""Advance many sessions at once: one batched ``forward`` over their new inputs.

Each session brings its state and K_i new steps. They are padded to max K_i with ``lengths``, so
packed-sequence semantics give every session exactly its own result: outputs for its K_i steps
and its state after the last of them. Outputs are the head applied at every step, which for a
classifier is the running class logits.
"""
from __future__ import annotations

import weakref

import numpy as np

from model_core.backend import to_numpy
from model_core.state import slice_state, stack_states, state_from_bytes, state_to_bytes
from service.encoding import pad_batch


_specs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state_spec(model) -> tuple:
    """((shape, dtype), ...) of a B=1 state: worked out once per model, not on every step."""
    spec = _specs.get(model)
    if spec is None:
        spec = _specs[model] = tuple((p.shape, p.dtype) for p in model.init_state(1))
    return spec


def load_state(model, blob: bytes | None):
    """Session bytes -> a B=1 state on the model's device (zeros for a new session).

    ``model`` is any served model: ``init_state``, ``forward_steps``, ``config``, ``xp``
    (``SequenceModel``, or an ONNX graph behind its model card).
    """
    if blob is None:
        return model.init_state(1)
    spec = _state_spec(model)
    state = state_from_bytes(blob)
    for p, (shape, dtype) in zip(state, spec, strict=True):
        if p.shape != shape or p.dtype != dtype:
            raise ValueError(f"state has shape {p.shape} {p.dtype}, this model needs {shape} {dtype}")
    xp = model.xp
    return tuple(xp.asarray(p) for p in state)


def advance(model, states: list[bytes | None], inputs: list[np.ndarray]):
    """Run each session's new steps. Returns per session (logits (K_i, C) float32, new state bytes)."""
    x, lengths = pad_batch(model.config, inputs)
    state = stack_states([load_state(model, s) for s in states], xp=model.xp)
    logits, new_state = model.forward_steps(x, state, lengths=lengths)   # equal lengths skip masking
    logits = to_numpy(logits).astype(np.float32)                          # (K, B, C)
    return [(logits[:k, b], state_to_bytes(slice_state(new_state, b))) for b, k in enumerate(lengths.tolist())]


def logits_to_bytes(row: np.ndarray) -> bytes:
    return np.ascontiguousarray(row, dtype="<f4").tobytes()


def logits_from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").copy()
