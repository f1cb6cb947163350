"""Single-step cells: each file holds one cell's step forward and step backward side by side."""
from model_core.cells import gru_cell, lstm_cell, rnn_cell

__all__ = ["gru_cell", "lstm_cell", "rnn_cell"]
