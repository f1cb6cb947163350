"""Token embedding: a lookup table whose backward is a scatter-add into the looked-up rows."""
from __future__ import annotations

import numpy as np

from model_core.nn.module import Module


class Embedding(Module):
    """``weight`` (num_embeddings, embedding_dim), initialised N(0, 1) as in ``torch.nn.Embedding``.

    ``padding_idx`` (negative values count from the end, as in torch) names a row that starts at
    zero and never receives a gradient, so padded positions stay inert.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 device: str = "cpu", dtype="float32", seed: int | None = None):
        super().__init__(device, dtype)
        if num_embeddings < 1 or embedding_dim < 1:
            raise ValueError(f"num_embeddings and embedding_dim must be >= 1, got {num_embeddings}, {embedding_dim}")
        if padding_idx is not None:
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"padding_idx must be within [-{num_embeddings}, {num_embeddings}), got {padding_idx}")
            padding_idx %= num_embeddings
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.padding_idx = padding_idx

        weight = np.random.default_rng(seed).standard_normal((num_embeddings, embedding_dim))  # (V, E)
        if padding_idx is not None:
            weight[padding_idx] = 0.0
        self._add_param("weight", weight)

    def _check_ids(self, ids):
        """ids on this module's device, after checking they are integers in [0, num_embeddings)."""
        xp = self.xp
        ids = xp.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"Embedding ids must be integers, got dtype {ids.dtype}")
        if ids.size:
            bad = (ids < 0) | (ids >= self.num_embeddings)
            if bool(bad.any()):  # one host sync per call; a silent wrap-around would be worse
                first = int(ids.ravel()[int(xp.argmax(bad.ravel()))])
                raise ValueError(f"Embedding id {first} is out of range [0, {self.num_embeddings})")
        return ids

    def forward(self, ids):
        """ids (...) integers -> out (..., E)."""
        return self.lookup(self._check_ids(ids))

    def lookup(self, ids):
        """``forward`` for ids already checked to lie in [0, num_embeddings), as ``SequenceModel.encode``
        checks them (``model_core.inputs``): the streaming step would otherwise check twice per token."""
        return self._params["weight"][ids]  # (..., E)

    __call__ = forward

    def backward(self, ids, dout) -> dict[str, object]:
        """ids (...), dout (..., E) -> {'weight': dW (V, E)}; repeated ids add up."""
        xp = self.xp
        ids = self._check_ids(ids)
        dW = xp.zeros_like(self._params["weight"])  # (V, E)
        # scatter-add: unlike dW[ids] += dout, add.at sums every occurrence of a repeated id
        xp.add.at(dW, ids.ravel(), dout.reshape(-1, self.embedding_dim))  # (N,), (N, E)
        if self.padding_idx is not None:
            dW[self.padding_idx] = 0.0  # padding row is frozen
        return {"weight": dW}

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
