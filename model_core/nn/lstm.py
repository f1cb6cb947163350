"""LSTM, ``torch.nn.LSTM``-compatible (gates i, f, g, o; state ``(h, c)``)."""
from __future__ import annotations

from model_core.nn.recurrent_base import RecurrentBase


class LSTM(RecurrentBase):
    mode = "LSTM"
    _kind = "lstm"
