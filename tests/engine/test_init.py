"""Seeded initialisation follows torch's default ranges and is reproducible."""
from __future__ import annotations

import math

import numpy as np
import pytest

from model_core.nn import GRU, LSTM, RNN, Embedding, Linear


@pytest.mark.parametrize("cls,gates", [(RNN, 1), (LSTM, 4), (GRU, 3)])
def test_recurrent_init_is_uniform_in_torch_range_and_seeded(cls, gates):
    H = 64
    layer = cls(10, H, num_layers=2, bidirectional=True, seed=7)
    bound = 1 / math.sqrt(H)
    for name, w in layer.parameters().items():
        assert np.abs(w).max() <= bound, name
        assert np.abs(w).max() > 0.9 * bound, name          # spans the range, not a narrower one
        assert w.shape[0] == gates * H
    again = cls(10, H, num_layers=2, bidirectional=True, seed=7).state_dict()
    for k, v in layer.state_dict().items():
        np.testing.assert_array_equal(v, again[k])
    other = cls(10, H, num_layers=2, bidirectional=True, seed=8).state_dict()
    assert not np.array_equal(other["weight_hh_l0"], layer.state_dict()["weight_hh_l0"])


def test_parameter_names_and_shapes_follow_torch():
    lstm = LSTM(5, 7, num_layers=2, bidirectional=True, bias=True)
    expected = {}
    for k in range(2):
        for sfx in ("", "_reverse"):
            in_size = 5 if k == 0 else 14
            expected.update({f"weight_ih_l{k}{sfx}": (28, in_size), f"weight_hh_l{k}{sfx}": (28, 7),
                             f"bias_ih_l{k}{sfx}": (28,), f"bias_hh_l{k}{sfx}": (28,)})
    assert {k: v.shape for k, v in lstm.parameters().items()} == expected
    assert list(lstm.parameters()) == list(expected)        # torch's order
    assert "bias_ih_l0" not in GRU(3, 4, bias=False).parameters()


def test_linear_and_embedding_init_ranges():
    lin = Linear(100, 10, seed=0)
    assert np.abs(lin.parameters()["weight"]).max() <= 0.1 and np.abs(lin.parameters()["bias"]).max() <= 0.1
    emb = Embedding(1000, 16, seed=0).parameters()["weight"]
    assert abs(float(emb.mean())) < 0.05 and abs(float(emb.std()) - 1) < 0.05   # N(0, 1)
