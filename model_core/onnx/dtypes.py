"""ONNX element types: which ones we run, their NumPy dtypes and the names onnxruntime prints."""
from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, numpy_helper

from model_core.onnx.errors import OnnxLoadError

# Element types with a native NumPy (and CuPy) dtype; bfloat16, float8, int4, complex and string
# tensors are refused at load time rather than emulated.
NUMPY_DTYPES: dict[int, np.dtype] = {
    TensorProto.FLOAT: np.dtype(np.float32),
    TensorProto.DOUBLE: np.dtype(np.float64),
    TensorProto.FLOAT16: np.dtype(np.float16),
    TensorProto.INT8: np.dtype(np.int8),
    TensorProto.INT16: np.dtype(np.int16),
    TensorProto.INT32: np.dtype(np.int32),
    TensorProto.INT64: np.dtype(np.int64),
    TensorProto.UINT8: np.dtype(np.uint8),
    TensorProto.UINT16: np.dtype(np.uint16),
    TensorProto.UINT32: np.dtype(np.uint32),
    TensorProto.UINT64: np.dtype(np.uint64),
    TensorProto.BOOL: np.dtype(np.bool_),
}

# onnxruntime's spelling in NodeArg.type, e.g. 'tensor(float)'.
_ORT_NAMES = {
    TensorProto.FLOAT: "float", TensorProto.DOUBLE: "double", TensorProto.FLOAT16: "float16",
    TensorProto.BFLOAT16: "bfloat16", TensorProto.INT8: "int8", TensorProto.INT16: "int16",
    TensorProto.INT32: "int32", TensorProto.INT64: "int64", TensorProto.UINT8: "uint8",
    TensorProto.UINT16: "uint16", TensorProto.UINT32: "uint32", TensorProto.UINT64: "uint64",
    TensorProto.BOOL: "bool", TensorProto.STRING: "string", TensorProto.COMPLEX64: "complex64",
    TensorProto.COMPLEX128: "complex128",
}


def type_name(elem_type: int) -> str:
    """'tensor(float)' for TensorProto.FLOAT, as onnxruntime's NodeArg.type prints it."""
    name = _ORT_NAMES.get(elem_type) or TensorProto.DataType.Name(elem_type).lower()
    return f"tensor({name})"


def elem_type_label(elem_type: int) -> str:
    """'FLOAT', 'BFLOAT16', ... for error messages."""
    try:
        return TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type {elem_type}"


def numpy_dtype(elem_type: int) -> np.dtype:
    """The NumPy dtype for a supported element type; ``KeyError`` for the rest."""
    return NUMPY_DTYPES[elem_type]


def tensor_nbytes(tensor: TensorProto) -> int:
    """Bytes the tensor will occupy once decoded, computed from its dims alone (no decoding)."""
    itemsize = NUMPY_DTYPES[tensor.data_type].itemsize if tensor.data_type in NUMPY_DTYPES else 8
    return math.prod(max(int(d), 0) for d in tensor.dims) * itemsize


def tensor_to_numpy(tensor: TensorProto, max_bytes: int) -> np.ndarray:
    """Decode a TensorProto with inline data into a host array, refusing what we cannot hold.

    The size is checked from the dims before anything is decoded, so a tiny protobuf that claims a
    huge tensor cannot make us allocate it.
    """
    label = tensor.name or "<unnamed>"
    if tensor.data_type not in NUMPY_DTYPES:
        raise OnnxLoadError(f"tensor {label!r}: element type {elem_type_label(tensor.data_type)} is not supported")
    if any(int(d) < 0 for d in tensor.dims):
        raise OnnxLoadError(f"tensor {label!r}: negative dimension in {list(tensor.dims)}")
    if tensor.data_location == TensorProto.EXTERNAL:
        raise OnnxLoadError(f"tensor {label!r}: external data was not resolved")
    nbytes = tensor_nbytes(tensor)
    if nbytes > max_bytes:
        raise OnnxLoadError(f"tensor {label!r} needs {nbytes} bytes, over the limit of {max_bytes}")
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as exc:  # malformed payload: wrong length, bad encoding
        raise OnnxLoadError(f"tensor {label!r} could not be decoded: {exc}") from None
    return np.asarray(array, dtype=NUMPY_DTYPES[tensor.data_type])  # keeps 0-d tensors 0-d
