"""Single-step cells: each file holds one cell's step forward and step backward side by side.

``lstm_cell``, ``gru_cell`` and ``rnn_cell`` are the reference steps, written once for NumPy and
CuPy. ``fused_lstm``, ``fused_gru`` and ``fused_rnn`` do the same math with the elementwise part
compiled by Numba; they exist only when ``model_core.jit.AVAILABLE``. ``select`` is the one place
that picks between them.
"""
from __future__ import annotations

from types import ModuleType, SimpleNamespace

import numpy as np

from model_core import jit
from model_core.cells import gru_cell, lstm_cell, rnn_cell

__all__ = ["gru_cell", "lstm_cell", "rnn_cell", "select", "uses_jit"]

_REFERENCE = {"lstm": lstm_cell, "gru": gru_cell, "rnn": rnn_cell}


def uses_jit(xp, dtype) -> bool:
    """The compiled cells are written for float32 NumPy arrays; float64 and CuPy use the reference."""
    return jit.AVAILABLE and xp is np and np.dtype(dtype) == np.float32


def _fused(kind: str) -> ModuleType:
    if kind == "lstm":
        from model_core.cells import fused_lstm as mod  # noqa: PLC0415 - imports Numba
    elif kind == "gru":
        from model_core.cells import fused_gru as mod  # noqa: PLC0415
    else:
        from model_core.cells import fused_rnn as mod  # noqa: PLC0415
    return mod


def select(kind: str, xp, dtype, nonlinearity: str = "tanh", reference: bool = False) -> SimpleNamespace:
    """The cell a layer runs: ``kind`` is "lstm", "gru" or "rnn" (with ``nonlinearity``).

    Returns a namespace with GATES, STATE_SIZE, gate_constants, cache_shapes, fold_bias,
    step_forward, step_backward and ``fused`` (whether the compiled path was chosen).
    ``reference=True`` forces the NumPy/CuPy step (tests compare the two).
    """
    if kind not in _REFERENCE:
        raise ValueError(f"cell kind must be one of {tuple(_REFERENCE)}, got {kind!r}")
    fused = not reference and uses_jit(xp, dtype)
    mod = _fused(kind) if fused else _REFERENCE[kind]
    if kind == "rnn":
        step_forward, step_backward = mod.make(nonlinearity)
    else:
        step_forward, step_backward = mod.step_forward, mod.step_backward
    return SimpleNamespace(GATES=mod.GATES, STATE_SIZE=mod.STATE_SIZE, gate_constants=mod.gate_constants,
                           cache_shapes=mod.cache_shapes, fold_bias=mod.fold_bias,
                           step_forward=step_forward, step_backward=step_backward, fused=fused)
