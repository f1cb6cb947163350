"""Recurrent state as a value: slice, stack and serialise per-session states.

A state is a tuple of arrays: ``(h,)`` (RNN/GRU) or ``(h, c)`` (LSTM), each part shaped (L*D, B, H). Sessions hold
B=1 slices; the batcher stacks many of them along the batch axis and slices the result back.

Binary form (little-endian), versioned so stored sessions survive upgrades:

    magic   8 bytes  b"RNNSTATE"
    version u16      1
    dtype   u8       1 = float32, 2 = float64
    parts   u8       1 (h) or 2 (h, c)
    shape   3 × u32  (L*D, B, H), shared by all parts
    crc32   u32      of the payload
    payload parts × prod(shape) values
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

from model_core.backend import to_numpy

MAGIC = b"RNNSTATE"
VERSION = 1
_HEADER = struct.Struct("<8sHBB3II")
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8")}
_CODES = {np.dtype("float32"): 1, np.dtype("float64"): 2}
MAX_STATE_BYTES = 64 * 1024 * 1024


class StateFormatError(ValueError):
    """Bytes that are not a valid serialised state."""


def batch_size(state: tuple) -> int:
    return int(state[0].shape[1])


def slice_state(state: tuple, index) -> tuple:
    """Select sessions along the batch axis (an int keeps the axis, as a batch of one)."""
    if isinstance(index, int | np.integer):
        index = slice(int(index), int(index) + 1)
    return tuple(p[:, index] for p in state)


def stack_states(states: list[tuple], xp=np) -> tuple:
    """Concatenate per-session states along the batch axis."""
    if not states:
        raise ValueError("stack_states needs at least one state")
    return tuple(xp.concatenate(ps, axis=1) for ps in zip(*states, strict=True))


def state_to_bytes(state: tuple) -> bytes:
    if not isinstance(state, tuple):
        raise TypeError(f"a state is a tuple of arrays, got {type(state).__name__}")
    host = [np.ascontiguousarray(to_numpy(p)) for p in state]
    dtype = host[0].dtype
    if dtype not in _CODES:
        raise ValueError(f"state dtype must be float32 or float64, got {dtype}")
    shape = host[0].shape
    if any(p.shape != shape or p.dtype != dtype for p in host) or len(shape) != 3:
        raise ValueError("state parts must share one 3-D shape and dtype")
    payload = b"".join(p.astype(_DTYPES[_CODES[dtype]], copy=False).tobytes() for p in host)
    header = _HEADER.pack(MAGIC, VERSION, _CODES[dtype], len(host), *shape, zlib.crc32(payload))
    return header + payload


def state_from_bytes(data: bytes) -> tuple:
    """Parse bytes written by ``state_to_bytes`` into a tuple of NumPy arrays; raises
    ``StateFormatError`` naming the problem."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise StateFormatError("state must be bytes")
    data = bytes(data)
    if len(data) > MAX_STATE_BYTES:
        raise StateFormatError(f"state is {len(data)} bytes, over the {MAX_STATE_BYTES}-byte limit")
    if len(data) < _HEADER.size:
        raise StateFormatError(f"state is truncated: {len(data)} bytes, the header alone is {_HEADER.size}")
    magic, version, code, n, d0, d1, d2, crc = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise StateFormatError("not a serialised state (bad magic bytes)")
    if version != VERSION:
        raise StateFormatError(f"unsupported state format version {version}; this build reads version {VERSION}")
    if code not in _DTYPES or n not in (1, 2):
        raise StateFormatError(f"corrupt state header (dtype code {code}, parts {n})")
    dtype, shape = _DTYPES[code], (d0, d1, d2)
    expected = n * d0 * d1 * d2 * dtype.itemsize
    payload = data[_HEADER.size:]
    if len(payload) != expected:
        raise StateFormatError(f"state payload is {len(payload)} bytes, expected {expected} for {n} × {shape} {dtype.name}")
    if zlib.crc32(payload) != crc:
        raise StateFormatError("state payload is corrupt (checksum mismatch)")
    arrays = np.frombuffer(payload, dtype=dtype).reshape((n, *shape)).astype(dtype.newbyteorder("="))
    if not np.isfinite(arrays).all():      # a valid checksum over NaN would poison every later step
        raise StateFormatError("state holds NaN or infinite values")
    return tuple(arrays[k].copy() for k in range(n))
