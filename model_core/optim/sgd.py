"""Stochastic gradient descent with momentum and Nesterov, the update rule of ``torch.optim.SGD``."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from model_core.backend import device_of, get_xp, to_numpy


class SGD:
    """Updates ``params`` (name -> live array, e.g. ``Module.parameters()``) in place.

    Per parameter, with g its gradient::

        g = g + weight_decay * p
        buf = g (first step), else momentum * buf + g
        g = g + momentum * buf (nesterov), else buf
        p -= lr * g
    """

    def __init__(self, params: Mapping[str, object], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"lr, momentum, weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        if nesterov and momentum <= 0.0:
            raise ValueError("nesterov momentum requires momentum > 0")
        self.params = params
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        first = next(iter(params.values()), None)
        self.xp = np if first is None else get_xp(device_of(first))
        self.state: dict[str, dict] = {}  # name -> {'momentum_buffer': array}

    def step(self, grads: Mapping[str, object]) -> None:
        """Apply one update; parameters without an entry in ``grads`` are left alone."""
        unknown = [k for k in grads if k not in self.params]
        if unknown:
            raise KeyError(f"SGD.step: gradients for unknown parameters {unknown}")
        for name, g in grads.items():
            if g is None:
                continue
            p = self.params[name]
            if self.weight_decay:
                g = g + self.weight_decay * p  # a new array: the caller's gradient is not touched
            if self.momentum:
                st = self.state.setdefault(name, {})
                buf = st.get("momentum_buffer")
                if buf is None:
                    buf = st["momentum_buffer"] = self.xp.array(g, dtype=p.dtype, copy=True)
                else:
                    buf *= self.momentum
                    buf += g
                g = g + self.momentum * buf if self.nesterov else buf
            p -= self.lr * g

    def state_dict(self) -> dict:
        """Hyper-parameters and host copies of the momentum buffers, keyed by parameter name."""
        return {
            "lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
            "nesterov": self.nesterov,
            "state": {k: {"momentum_buffer": np.array(to_numpy(v["momentum_buffer"]), copy=True)}
                      for k, v in self.state.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        bufs = {}
        for name, st in state.get("state", {}).items():
            if name not in self.params:
                raise KeyError(f"SGD.load_state_dict: state for unknown parameter '{name}'")
            buf = to_numpy(st["momentum_buffer"])
            p = self.params[name]
            if tuple(buf.shape) != tuple(p.shape):
                raise ValueError(f"SGD.load_state_dict: momentum_buffer for '{name}' has shape "
                                 f"{tuple(buf.shape)}, expected {tuple(p.shape)}")
            bufs[name] = {"momentum_buffer": self.xp.array(buf, dtype=p.dtype, copy=True)}
        # validate everything before changing anything
        self.state = bufs
        for key in ("lr", "momentum", "weight_decay"):
            if key in state:
                setattr(self, key, float(state[key]))
        if "nesterov" in state:
            self.nesterov = bool(state["nesterov"])
