"""The v2 datatypes: JSON values and raw bytes to NumPy and back, strictly checked.

Raw bytes follow Triton's binary tensor data extension (and gRPC's ``raw_input_contents``):
little-endian, row-major; ``BOOL`` one byte per value; ``BYTES`` each element as a 4-byte
little-endian length then its bytes. In JSON, ``BOOL`` takes only ``true``/``false``, integer types
only integers (a boolean is not a number), ``FP*`` any number, ``BYTES`` strings.
"""
from __future__ import annotations

import struct

import numpy as np

from service.errors import PayloadTooLarge, ServiceError

NUMERIC = {
    "BOOL": np.dtype(np.bool_), "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPES = (*NUMERIC, "BYTES")
_LEN = struct.Struct("<I")


class TensorError(ServiceError):
    """A tensor that cannot be read; v2 answers it with 400 and the tensor's name."""

    status, code = 400, "invalid_tensor"


def check_datatype(name: str, datatype) -> str:
    if datatype not in DATATYPES:
        raise TensorError(f"tensor {name!r}: datatype {datatype!r} is not supported; use one of {', '.join(DATATYPES)}")
    return datatype


def element_count(name: str, shape, max_elements: int) -> int:
    """Elements in ``shape``, refusing more than ``max_elements`` (Python ints: no overflow, ever)."""
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                      for d in shape):
        raise TensorError(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    n = 1
    for d in shape:
        n *= d
        if n > max_elements:
            raise PayloadTooLarge(f"tensor {name!r}: shape {list(shape)} is over the limit of {max_elements} elements")
    return n


def _flatten(data, name: str) -> list:
    out, stack = [], [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
        else:
            stack.pop()
    return out


def from_json(name: str, datatype: str, shape, data, max_elements: int) -> np.ndarray:
    """A JSON tensor's ``data`` (flat or nested, row-major) -> an array of ``shape``."""
    check_datatype(name, datatype)
    n = element_count(name, shape, max_elements)
    if not isinstance(data, list):
        raise TensorError(f"tensor {name!r}: data must be a list of values")
    flat = data if not any(isinstance(v, list) for v in data) else _flatten(data, name)
    if len(flat) != n:
        raise TensorError(f"tensor {name!r}: shape {list(shape)} needs {n} values, data has {len(flat)}")
    kinds = set(map(type, flat))
    if datatype == "BYTES":
        if not kinds <= {str}:
            raise TensorError(f"tensor {name!r}: BYTES data must be strings")
        arr = np.empty(n, dtype=object)
        arr[:] = [s.encode() for s in flat]
        return arr.reshape(shape)
    dtype = NUMERIC[datatype]
    allowed = {bool} if datatype == "BOOL" else {int} if dtype.kind in "iu" else {int, float}
    if not kinds <= allowed:
        what = "true/false" if datatype == "BOOL" else "integers" if dtype.kind in "iu" else "numbers"
        raise TensorError(f"tensor {name!r}: {datatype} data must hold {what} only")
    if dtype.kind in "iu":
        if flat:
            lo, hi = min(flat), max(flat)
            info = np.iinfo(dtype)
            if lo < info.min or hi > info.max:
                raise TensorError(f"tensor {name!r}: values must lie in [{info.min}, {info.max}] for {datatype}")
    try:
        arr = np.asarray(flat, dtype=np.float64 if dtype.kind == "f" else dtype)
    except (OverflowError, ValueError):                   # e.g. an integer too large for FP64
        raise TensorError(f"tensor {name!r}: a value is out of range for {datatype}") from None
    if dtype.kind == "f":
        arr = _narrow(name, arr, dtype, datatype)
    return arr.reshape(shape)


def _narrow(name: str, arr: np.ndarray, dtype: np.dtype, datatype: str) -> np.ndarray:
    """FP64 -> FP32/FP16 with a range check: a finite value that would become infinite is refused."""
    finite = np.isfinite(arr)
    if dtype != np.float64 and finite.any() and np.abs(arr[finite]).max() > np.finfo(dtype).max:
        raise TensorError(f"tensor {name!r}: a value is out of range for {datatype}")
    return arr.astype(dtype)


def from_bytes(name: str, datatype: str, shape, raw, max_elements: int) -> np.ndarray:
    """Raw little-endian bytes (``bytes`` or ``memoryview``) -> an array of ``shape``."""
    check_datatype(name, datatype)
    n = element_count(name, shape, max_elements)
    if datatype == "BYTES":
        return deserialize_bytes(name, raw, n).reshape(shape)
    dtype = NUMERIC[datatype]
    if len(raw) != n * dtype.itemsize:
        raise TensorError(f"tensor {name!r}: shape {list(shape)} of {datatype} needs {n * dtype.itemsize} bytes, "
                          f"got {len(raw)}")
    if datatype == "BOOL":
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def deserialize_bytes(name: str, raw, n: int) -> np.ndarray:
    """``n`` length-prefixed elements filling ``raw`` exactly -> an object array of ``bytes``."""
    view, out, pos = memoryview(raw), np.empty(n, dtype=object), 0
    for i in range(n):
        if pos + 4 > len(view):
            raise TensorError(f"tensor {name!r}: BYTES data ends after {i} of {n} elements")
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + size > len(view):
            raise TensorError(f"tensor {name!r}: BYTES element {i} claims {size} bytes, past the end of the data")
        out[i] = bytes(view[pos:pos + size])
        pos += size
    if pos != len(view):
        raise TensorError(f"tensor {name!r}: {len(view) - pos} bytes left over after {n} BYTES elements")
    return out


def to_bytes(arr: np.ndarray, datatype: str) -> bytes:
    """An output array -> raw little-endian bytes (length-prefixed elements for BYTES)."""
    if datatype == "BYTES":
        return b"".join(_LEN.pack(len(b)) + b for b in (_as_bytes(v) for v in arr.reshape(-1)))
    return np.ascontiguousarray(arr, dtype=NUMERIC[datatype]).tobytes()


def to_json(arr: np.ndarray, datatype: str) -> list:
    """An output array -> a flat JSON list (BYTES as UTF-8 strings, as Triton writes them)."""
    if datatype == "BYTES":
        return [_as_bytes(v).decode("utf-8", errors="replace") for v in arr.reshape(-1)]
    return arr.reshape(-1).tolist()


def _as_bytes(v) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()
