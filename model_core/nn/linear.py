"""Affine map y = x W^T + b over any leading dims, with its backward beside it."""
from __future__ import annotations

import math

import numpy as np

from model_core.nn.module import Module, uniform_init


class Linear(Module):
    """``weight`` (out_features, in_features), ``bias`` (out_features,), both U(-1/sqrt(in), 1/sqrt(in)).

    That is the range ``torch.nn.Linear`` ends up with (kaiming_uniform with a=sqrt(5)).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: str = "cpu", dtype="float32", seed: int | None = None):
        super().__init__(device, dtype)
        if in_features < 1 or out_features < 1:
            raise ValueError(f"in_features and out_features must be >= 1, got {in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.has_bias = bias

        rng = np.random.default_rng(seed)
        bound = 1.0 / math.sqrt(in_features)
        self._add_param("weight", uniform_init(rng, (out_features, in_features), bound))  # (O, I)
        if bias:
            self._add_param("bias", uniform_init(rng, (out_features,), bound))  # (O,)

    def forward(self, x):
        """x (..., I) -> y (..., O)."""
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"Linear expects input (..., {self.in_features}), got shape {tuple(x.shape)}")
        y = x @ self._params["weight"].T  # (..., O)
        if self.has_bias:
            y += self._params["bias"]
        return y

    __call__ = forward

    def backward(self, x, dy):
        """x (..., I), dy (..., O) -> (dx (..., I), {'weight': dW (O, I), 'bias': db (O,)}).

        Leading dims are flattened so each gradient is a single matmul (or sum) over all rows.
        """
        W = self._params["weight"]  # (O, I)
        x2 = x.reshape(-1, self.in_features)  # (N, I)
        dy2 = dy.reshape(-1, self.out_features)  # (N, O)
        dx = dy @ W  # (..., I)
        grads = {"weight": dy2.T @ x2}  # (O, I)
        if self.has_bias:
            grads["bias"] = dy2.sum(axis=0)  # (O,)
        return dx, grads

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.has_bias}"
