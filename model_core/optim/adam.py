"""Adam with bias correction and L2 weight decay, the update rule of ``torch.optim.Adam``."""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from model_core.backend import device_of, get_xp, to_numpy

_BUFFERS = ("exp_avg", "exp_avg_sq")


class Adam:
    """Updates ``params`` (name -> live array, e.g. ``Module.parameters()``) in place.

    Per parameter, with g its gradient and t its own step count::

        g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    def __init__(self, params: Mapping[str, object], lr: float = 1e-3, betas=(0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"lr, eps, weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        self.params = params
        self.lr = lr
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = eps
        self.weight_decay = weight_decay
        first = next(iter(params.values()), None)
        self.xp = np if first is None else get_xp(device_of(first))
        self.state: dict[str, dict] = {}  # name -> {'step': int, 'exp_avg': array, 'exp_avg_sq': array}

    def step(self, grads: Mapping[str, object]) -> None:
        """Apply one update; parameters without an entry in ``grads`` are left alone (no step counted)."""
        unknown = [k for k in grads if k not in self.params]
        if unknown:
            raise KeyError(f"Adam.step: gradients for unknown parameters {unknown}")
        xp = self.xp
        beta1, beta2 = self.betas
        for name, g in grads.items():
            if g is None:
                continue
            p = self.params[name]
            st = self.state.get(name)
            if st is None:
                st = self.state[name] = {"step": 0, "exp_avg": xp.zeros_like(p), "exp_avg_sq": xp.zeros_like(p)}
            st["step"] += 1
            t = st["step"]
            if self.weight_decay:
                g = g + self.weight_decay * p  # a new array: the caller's gradient is not touched
            m, v = st["exp_avg"], st["exp_avg_sq"]
            m *= beta1
            m += (1.0 - beta1) * g
            v *= beta2
            v += (1.0 - beta2) * (g * g)
            # bias correction undoes the zero initialisation of m and v
            step_size = self.lr / (1.0 - beta1**t)
            denom = xp.sqrt(v) / math.sqrt(1.0 - beta2**t) + self.eps
            p -= step_size * (m / denom)

    def state_dict(self) -> dict:
        """Hyper-parameters, per-parameter step counts and host copies of the moments, keyed by name."""
        return {
            "lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay,
            "state": {k: {"step": int(v["step"]),
                          **{b: np.array(to_numpy(v[b]), copy=True) for b in _BUFFERS}}
                      for k, v in self.state.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        new = {}
        for name, st in state.get("state", {}).items():
            if name not in self.params:
                raise KeyError(f"Adam.load_state_dict: state for unknown parameter '{name}'")
            p = self.params[name]
            new[name] = {"step": int(st["step"])}
            for b in _BUFFERS:
                host = to_numpy(st[b])
                if tuple(host.shape) != tuple(p.shape):
                    raise ValueError(f"Adam.load_state_dict: {b} for '{name}' has shape "
                                     f"{tuple(host.shape)}, expected {tuple(p.shape)}")
                new[name][b] = self.xp.array(host, dtype=p.dtype, copy=True)
        # validate everything before changing anything
        self.state = new
        for key in ("lr", "eps", "weight_decay"):
            if key in state:
                setattr(self, key, float(state[key]))
        if "betas" in state:
            self.betas = (float(state["betas"][0]), float(state["betas"][1]))
