"""Single-step cells: each file holds one cell's step forward and step backward side by side.

``lstm_cell``, ``gru_cell`` and ``rnn_cell`` are the reference steps, written once for NumPy and
CuPy. ``native_lstm``, ``native_gru`` and ``native_rnn`` run the whole time loop in the compiled
kernels of ``model_core.native`` (when ``model_core.native.AVAILABLE``); ``fused_lstm``,
``fused_gru`` and ``fused_rnn`` do the step's elementwise part with Numba (when
``model_core.jit.AVAILABLE``).
``select`` is the one place that picks between them: native, else Numba, else the reference.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from model_core import jit, native
from model_core.cells import gru_cell, lstm_cell, rnn_cell

__all__ = ["CellSteps", "gru_cell", "lstm_cell", "rnn_cell", "select", "uses_jit", "uses_native"]

_REFERENCE = {"lstm": lstm_cell, "gru": gru_cell, "rnn": rnn_cell}


@dataclass(frozen=True)
class CellSteps:
    """The cell a layer runs, as ``select`` chose it (the names are the cell modules' own).

    GATES, STATE_SIZE: 4 and 2 for the LSTM, 3 and 1 for the GRU, 1 and 1 for the RNN.
    gate_constants, cache_shapes, fold_bias, step_forward, step_backward: the cell module's functions.
    fused:  a compiled path was chosen (the native kernels, or Numba's gate kernels).
    native: the native kernels, which also run whole sequences (``sequence_forward`` /
            ``sequence_backward``, None otherwise).
    sequence_forward_fused: inference over a sequence from the raw input, the input projection
            made inside the kernel (the native cells; None otherwise).
    step_forward_input: an inference step from the raw input, the projection made inside the
            kernel (the native cells; None otherwise): ``step()`` and length-1 sequences.
    step_weights: what ``step_forward_input`` reads of a layer's parameters, as one value that a
            frozen layer makes once and keeps (None where step_forward_input is None).
    step_entry: what the compiled step entry point (``model_core.native.step_entry``) reads of a
            ``step_weights`` value, (kind, arrays) (the native cells; None otherwise).
    """
    GATES: int
    STATE_SIZE: int
    gate_constants: Callable
    cache_shapes: Callable
    fold_bias: Callable
    step_forward: Callable
    step_backward: Callable
    fused: bool
    native: bool
    sequence_forward: Callable | None
    sequence_backward: Callable | None
    sequence_forward_fused: Callable | None = None
    step_forward_input: Callable | None = None
    step_weights: Callable | None = None
    step_entry: Callable | None = None


def uses_jit(xp, dtype) -> bool:
    """The compiled cells are written for float32 NumPy arrays; float64 and CuPy use the reference."""
    return jit.AVAILABLE and xp is np and np.dtype(dtype) == np.float32


def uses_native(kind: str, xp, dtype) -> bool:
    """The native kernels: every cell, float32 NumPy arrays."""
    return native.AVAILABLE and kind in _REFERENCE and xp is np and np.dtype(dtype) == np.float32


def _native(kind: str) -> ModuleType:
    if kind == "lstm":
        from model_core.cells import native_lstm as mod  # loads the native library
    elif kind == "gru":
        from model_core.cells import native_gru as mod
    else:
        from model_core.cells import native_rnn as mod
    return mod


def _fused(kind: str) -> ModuleType:
    if kind == "lstm":
        from model_core.cells import fused_lstm as mod  # imports Numba
    elif kind == "gru":
        from model_core.cells import fused_gru as mod
    else:
        from model_core.cells import fused_rnn as mod
    return mod


def select(kind: str, xp, dtype, nonlinearity: str = "tanh", reference: bool = False,
           allow_native: bool = True) -> CellSteps:
    """The cell a layer runs: ``kind`` is "lstm", "gru" or "rnn" (with ``nonlinearity``).

    ``reference=True`` forces the NumPy/CuPy step and ``allow_native=False`` skips the native kernels
    (tests compare the paths).
    """
    if kind not in _REFERENCE:
        raise ValueError(f"cell kind must be one of {tuple(_REFERENCE)}, got {kind!r}")
    use_native = not reference and allow_native and uses_native(kind, xp, dtype)
    fused = not reference and (use_native or uses_jit(xp, dtype))
    mod = _native(kind) if use_native else _fused(kind) if fused else _REFERENCE[kind]
    fns = mod.make(nonlinearity) if kind == "rnn" else vars(mod)    # the RNN's, with its activation bound
    return CellSteps(GATES=mod.GATES, STATE_SIZE=mod.STATE_SIZE, gate_constants=mod.gate_constants,
                     cache_shapes=mod.cache_shapes, fold_bias=mod.fold_bias,
                     step_forward=fns["step_forward"], step_backward=fns["step_backward"], fused=fused,
                     native=use_native, sequence_forward=fns.get("sequence_forward"),
                     sequence_backward=fns.get("sequence_backward"),
                     sequence_forward_fused=fns.get("sequence_forward_fused"),
                     step_forward_input=fns.get("step_forward_input"), step_weights=fns.get("step_weights"),
                     step_entry=fns.get("step_entry"))
