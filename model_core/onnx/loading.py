"""Reading an ONNX model safely: size limits, external data confined to the model's folder, and
nothing but protobuf parsing (no pickle, no code)."""
from __future__ import annotations

import math
import os
from pathlib import Path

from onnx import ModelProto, TensorProto

from model_core.checkpoint import MAX_PARAMETERS
from model_core.onnx.dtypes import NUMPY_DTYPES, elem_type_label, tensor_nbytes
from model_core.onnx.errors import OnnxLoadError

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB: the file, every tensor, and all external data together
MIN_IR_VERSION = 3  # opset imports exist from IR version 3 on


def read_model(path_or_bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> ModelProto:
    """Parse a model from a path, bytes or a ModelProto; resolve external data; run the checker."""
    base_dir = None
    if isinstance(path_or_bytes, ModelProto):
        model = ModelProto()
        model.CopyFrom(path_or_bytes)
    else:
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            data = bytes(path_or_bytes)
        elif isinstance(path_or_bytes, (str, os.PathLike)):
            path = Path(path_or_bytes)
            data = _read_file(path, max_bytes)
            base_dir = path.resolve().parent
        else:
            raise TypeError(f"expected a path, bytes or an onnx.ModelProto, got {type(path_or_bytes).__name__}")
        if len(data) > max_bytes:
            raise OnnxLoadError(f"the model is {len(data)} bytes, over the limit of {max_bytes}")
        model = _parse(data)
    _check_header(model)
    _resolve_external_data(model, base_dir, max_bytes)
    _check_tensor_sizes(model, max_bytes)
    # No onnx.checker here: it rejects models onnxruntime runs (e.g. value infos without shapes).
    # The graph builder checks what running needs: op versions, arities, attribute types, topology.
    return model


def _read_file(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise OnnxLoadError(f"{path.name} is not a regular file")
        if size > max_bytes:
            raise OnnxLoadError(f"{path.name} is {size} bytes, over the limit of {max_bytes}")
        with path.open("rb") as f:
            return f.read(max_bytes + 1)
    except OSError as exc:
        raise OnnxLoadError(f"cannot read {path.name}: {exc.strerror or exc}") from None


def _parse(data: bytes) -> ModelProto:
    model = ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, or a RuntimeError from the C++ parser
        raise OnnxLoadError(f"not an ONNX model: the protobuf does not parse ({exc})") from None
    return model


def _check_header(model: ModelProto) -> None:
    # protobuf accepts many byte strings (even empty ones) as a valid, empty message
    if model.ir_version < MIN_IR_VERSION or not model.HasField("graph") or not model.opset_import:
        raise OnnxLoadError("not an ONNX model: no IR version, graph or opset import "
                            f"(ir_version={model.ir_version})")


def _all_tensors(model: ModelProto):
    """Initializers and tensor-valued attributes of the main graph (subgraphs are refused later)."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _resolve_external_data(model: ModelProto, base_dir: Path | None, max_bytes: int) -> None:
    """Inline external tensor data, reading only regular files inside the model's own folder."""
    total = 0
    for tensor in _all_tensors(model):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        label = tensor.name or "<unnamed>"
        if base_dir is None:
            raise OnnxLoadError(f"tensor {label!r} uses external data, which is only read for a model "
                                "loaded from a path")
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = _inside(base_dir, location, label)
        try:
            offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        except ValueError:
            raise OnnxLoadError(f"tensor {label!r}: bad external data offset or length") from None
        expected = tensor_nbytes(tensor)
        if tensor.data_type not in NUMPY_DTYPES:
            raise OnnxLoadError(f"tensor {label!r}: element type {elem_type_label(tensor.data_type)} is not supported")
        if expected > max_bytes or total + expected > max_bytes:
            raise OnnxLoadError(f"external data over the limit of {max_bytes} bytes (tensor {label!r})")
        if length not in (-1, expected) or offset < 0:
            raise OnnxLoadError(f"tensor {label!r}: external data length {length} does not match its "
                                f"{expected} bytes")
        with target.open("rb") as f:
            f.seek(offset)
            data = f.read(expected)
        if len(data) != expected:
            raise OnnxLoadError(f"tensor {label!r}: {location!r} is too short")
        total += expected
        tensor.raw_data = data
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def _inside(base_dir: Path, location: str, label: str) -> Path:
    """The external data file, refused unless it is a regular file within ``base_dir``."""
    relative = Path(location)
    if not location or relative.is_absolute() or ".." in relative.parts or "_ORT_MEM_ADDR_" in location:
        raise OnnxLoadError(f"tensor {label!r}: external data location {location!r} is not a plain "
                            "relative path inside the model's folder")
    target = (base_dir / relative).resolve()  # follows symlinks, so a link cannot point outside
    if not target.is_relative_to(base_dir) or not target.is_file():
        raise OnnxLoadError(f"tensor {label!r}: external data {location!r} is not a file inside the "
                            "model's folder")
    return target


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def _check_tensor_sizes(model: ModelProto, max_bytes: int) -> None:
    """Every tensor's dims against the bytes the file really holds for it, and the totals against
    the byte and parameter caps, before any tensor is decoded."""
    total, elements = 0, 0
    for tensor in _all_tensors(model):
        label = tensor.name or "<unnamed>"
        nbytes = tensor_nbytes(tensor)
        total += nbytes
        elements += math.prod(max(int(d), 0) for d in tensor.dims)
        if nbytes > max_bytes or total > max_bytes:
            raise OnnxLoadError(f"tensor {label!r} takes the model over the limit of {max_bytes} bytes")
        if elements > MAX_PARAMETERS:
            raise OnnxLoadError(f"tensor {label!r} takes the model over the limit of {MAX_PARAMETERS} parameters")
        if tensor.data_type == TensorProto.STRING:
            continue
        if tensor.raw_data:
            stored_ok = len(tensor.raw_data) == nbytes
        else:
            stored_ok = sum(len(getattr(tensor, f)) for f in _TYPED_FIELDS) >= math.prod(tensor.dims)
        if not stored_ok:
            raise OnnxLoadError(f"tensor {label!r} declares dims {list(tensor.dims)} but the file holds less (or other) "
                                "data for it")
