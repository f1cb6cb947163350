"""Our PyTorch-ordered recurrent parameters as the W, R and B inputs of ONNX's LSTM, GRU and RNN ops.

PyTorch stacks the gates as LSTM (i, f, g, o) and GRU (r, z, n); ONNX stacks them as LSTM (i, o, f, c)
and GRU (z, r, h). ONNX's B is ``[Wb, Rb]`` concatenated, and its GRU with ``linear_before_reset=1``
keeps ``Rbh`` inside ``r * (...)``, which is PyTorch's equation, so no bias folding is needed.
"""
from __future__ import annotations

import numpy as np

from model_core.backend import to_numpy

# For each ONNX gate block, the index of the PyTorch gate block that feeds it.
GATE_ORDER = {"lstm": (0, 3, 1, 2), "gru": (1, 0, 2), "rnn": (0,)}


def reorder_gates(a: np.ndarray, cell: str) -> np.ndarray:
    """(G*H, ...) in PyTorch's gate order -> the same array in ONNX's gate order."""
    blocks = np.split(a, len(GATE_ORDER[cell]), axis=0)
    return np.concatenate([blocks[i] for i in GATE_ORDER[cell]], axis=0)


def layer_weights(rnn, cell: str, layer: int, dtype=np.float32) -> dict[str, np.ndarray | None]:
    """ONNX inputs for one layer, both directions stacked on axis 0.

    Returns W (D, G*H, I), R (D, G*H, H) and B (D, 2*G*H), or B None for a layer without biases.
    """
    params = {k: to_numpy(v) for k, v in rnn.parameters().items()}
    W, R, B = [], [], []
    for suffix in ("", "_reverse")[: rnn.num_directions]:
        def get(kind):
            return reorder_gates(params[f"{kind}_l{layer}{suffix}"].astype(dtype), cell)

        W.append(get("weight_ih"))                                            # (G*H, I)
        R.append(get("weight_hh"))                                            # (G*H, H)
        if rnn.bias:
            B.append(np.concatenate([get("bias_ih"), get("bias_hh")]))       # (2*G*H,)
    return {"W": np.stack(W), "R": np.stack(R), "B": np.stack(B) if B else None}
