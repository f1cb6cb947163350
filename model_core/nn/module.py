"""The parameter container shared by every layer.

A module owns named parameter arrays on one device and nothing else: no per-call caches, no
hidden state. Forward passes return what backward needs (a ``cache``), so one module can serve
many threads and sessions at once.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from model_core.backend import get_xp, resolve_device, resolve_dtype, to_device, to_numpy


class Module:
    def __init__(self, device: str = "cpu", dtype="float32"):
        self.device = resolve_device(device)
        self.xp = get_xp(self.device)
        self.dtype = resolve_dtype(dtype)
        self._params: dict[str, object] = {}

    # -- parameters ---------------------------------------------------------------------------
    def _add_param(self, name: str, host_value: np.ndarray) -> None:
        self._params[name] = to_device(np.ascontiguousarray(host_value, dtype=self.dtype), self.device)

    def parameters(self) -> dict[str, object]:
        """Live parameter arrays by name; optimisers update them in place."""
        return self._params

    def freeze(self):
        """Make every parameter read-only (NumPy's ``writeable`` flag), and the memory a parameter views
        (the recurrent layers' W^T), so that no write can reach it: the kernels may then keep layouts
        derived from the weights. No-op on a GPU."""
        for v in self._params.values():
            if isinstance(v, np.ndarray):
                v.flags.writeable = False
                if isinstance(v.base, np.ndarray):
                    v.base.flags.writeable = False
        return self

    def zero_grads(self) -> dict[str, object]:
        """A dict of zero arrays shaped like the parameters, for ``+=`` accumulation."""
        return {k: self.xp.zeros_like(v) for k, v in self._params.items()}

    def num_parameters(self) -> int:
        return int(sum(v.size for v in self._params.values()))

    # -- (de)serialisation --------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters, keyed by PyTorch's names."""
        return {k: np.array(to_numpy(v), copy=True, order="C") for k, v in self._params.items()}

    def load_state_dict(self, state: Mapping[str, object], strict: bool = True) -> None:
        """Copy arrays (NumPy, CuPy, or anything with ``.numpy()``) into the parameters.

        Shapes must match exactly; with ``strict`` the key sets must match too.
        """
        missing = [k for k in self._params if k not in state]
        unexpected = [k for k in state if k not in self._params]
        if strict and (missing or unexpected):
            raise KeyError(
                f"{type(self).__name__}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}"
            )
        for name, value in state.items():
            if name not in self._params:
                continue
            if hasattr(value, "detach"):  # a torch tensor, accepted without importing torch
                value = value.detach().cpu().numpy()
            host = to_numpy(value)
            target = self._params[name]
            if tuple(host.shape) != tuple(target.shape):
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: '{name}' has shape {tuple(host.shape)}, "
                    f"expected {tuple(target.shape)}"
                )
            if not np.all(np.isfinite(host)):
                raise ValueError(f"{type(self).__name__}.load_state_dict: '{name}' contains NaN or inf")
            target[...] = self.xp.asarray(host, dtype=self.dtype)

    def to(self, device: str):
        """A copy of this module on ``device`` (explicit move; the original is untouched)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.device = resolve_device(device)
        clone.xp = get_xp(clone.device)
        clone._params = {k: to_device(to_numpy(v), clone.device, self.dtype) for k, v in self._params.items()}
        return clone

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"


def uniform_init(rng: np.random.Generator, shape, bound: float) -> np.ndarray:
    """U(-bound, bound), the range torch uses for recurrent and linear defaults."""
    return rng.uniform(-bound, bound, size=shape)
