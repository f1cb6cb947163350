"""Elman RNN, ``torch.nn.RNN``-compatible."""
from __future__ import annotations

from types import SimpleNamespace

from model_core.cells import rnn_cell
from model_core.nn.recurrent import RecurrentBase


class RNN(RecurrentBase):
    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 device: str = "cpu", dtype="float32", seed: int | None = None):
        step_forward, step_backward = rnn_cell.make(nonlinearity)   # validates nonlinearity
        self.nonlinearity = nonlinearity
        self.mode = f"RNN_{nonlinearity.upper()}"
        self._cell = SimpleNamespace(
            GATES=rnn_cell.GATES, STATE_SIZE=rnn_cell.STATE_SIZE, gate_constants=rnn_cell.gate_constants,
            cache_shapes=rnn_cell.cache_shapes, fold_bias=rnn_cell.fold_bias,
            step_forward=step_forward, step_backward=step_backward)
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         device, dtype, seed)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", nonlinearity={self.nonlinearity!r}"
