"""GRU, ``torch.nn.GRU``-compatible (gates r, z, n; PyTorch's equation with ``b_hn`` inside r*(...))."""
from __future__ import annotations

from model_core.nn.recurrent_base import RecurrentBase


class GRU(RecurrentBase):
    mode = "GRU"
    _kind = "gru"
