"""Array-module dispatch: NumPy on the CPU, CuPy on the GPU, chosen once per object.

Everything in the engine takes ``xp`` from here and never imports CuPy itself, so importing
``model_core`` works on machines without CuPy. Host/device crossings are explicit
(``to_numpy`` / ``to_device``); nothing moves behind the caller's back.
"""
from __future__ import annotations

import functools
from types import ModuleType

import numpy as np

DEVICES = ("cpu", "gpu", "auto")


class DeviceError(RuntimeError):
    """A device was requested that this machine cannot provide."""


@functools.lru_cache(maxsize=1)
def _cupy() -> ModuleType | None:
    try:
        import cupy  # optional dependency, imported lazily on purpose
    except Exception:  # ImportError, or a CUDA library that fails to load
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


def gpu_available() -> bool:
    """True when CuPy imports and at least one CUDA device is visible."""
    return _cupy() is not None


def resolve_device(device: str = "cpu") -> str:
    """Map ``"cpu" | "gpu" | "auto"`` to a concrete ``"cpu"`` or ``"gpu"``."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        return "gpu" if gpu_available() else "cpu"
    if device == "gpu" and not gpu_available():
        raise DeviceError(
            "device='gpu' was requested but no GPU is usable: install the 'gpu' extra "
            "(cupy-cuda12x) and make sure a CUDA device is visible, or use device='cpu'/'auto'"
        )
    return device


def get_xp(device: str = "cpu") -> ModuleType:
    """The array module for a device: ``numpy`` or ``cupy``."""
    return _cupy() if resolve_device(device) == "gpu" else np


def device_of(array) -> str:
    """``"gpu"`` for a CuPy array, ``"cpu"`` for anything else (NumPy arrays, lists, scalars)."""
    return "gpu" if hasattr(array, "__cuda_array_interface__") else "cpu"


def to_numpy(array) -> np.ndarray:
    """Copy to host memory (no-op for NumPy arrays)."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "get"):  # cupy.ndarray
        return array.get()
    return np.asarray(array)


def to_device(array, device: str, dtype=None):
    """Place ``array`` on ``device`` ("cpu" or "gpu"), optionally casting."""
    xp = get_xp(device)
    if xp is np:
        return np.array(to_numpy(array), dtype=dtype, copy=True)
    return xp.asarray(array, dtype=dtype)


def resolve_dtype(dtype) -> np.dtype:
    """float32 or float64 only: the engine's kernels are written for these."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt
