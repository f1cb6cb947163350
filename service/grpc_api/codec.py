"""Protobuf <-> ``service.openinference.types``: tensors, parameters, requests and responses.

Inputs come either all in ``raw_input_contents`` (little-endian bytes, one entry per input, BYTES
elements each prefixed by a 4-byte little-endian length) or each in its typed ``contents`` field.
Outputs always go back in ``raw_output_contents``, as Triton's server sends them. Nothing here
checks a tensor against a model (``service.openinference.infer`` does); this module only refuses
what cannot be decoded at all, naming the tensor, and never allocates more than the message holds.
"""
from __future__ import annotations

import struct

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from service.kserve import V2Error
from service.openinference.types import InferInput, InferRequest, InferResponse, RequestedOutput

# v2 datatype -> (NumPy dtype, the typed-contents field that carries it; None: raw bytes only)
DATATYPES: dict[str, tuple[np.dtype, str | None]] = {
    "BOOL": (np.dtype(np.bool_), "bool_contents"),
    "UINT8": (np.dtype("<u1"), "uint_contents"), "UINT16": (np.dtype("<u2"), "uint_contents"),
    "UINT32": (np.dtype("<u4"), "uint_contents"), "UINT64": (np.dtype("<u8"), "uint64_contents"),
    "INT8": (np.dtype("<i1"), "int_contents"), "INT16": (np.dtype("<i2"), "int_contents"),
    "INT32": (np.dtype("<i4"), "int_contents"), "INT64": (np.dtype("<i8"), "int64_contents"),
    "FP16": (np.dtype("<f2"), None), "FP32": (np.dtype("<f4"), "fp32_contents"),
    "FP64": (np.dtype("<f8"), "fp64_contents"),
    "BYTES": (np.dtype(object), "bytes_contents"),
}
_LEN = struct.Struct("<I")


# ---- parameters ----------------------------------------------------------------------------------

def param_value(p: pb.InferParameter):
    which = p.WhichOneof("parameter_choice")
    return getattr(p, which) if which else None


def params_to_dict(params) -> dict:
    return {k: param_value(v) for k, v in params.items()}


def set_param(params, key: str, value) -> None:
    p = params[key]
    if isinstance(value, bool | np.bool_):
        p.bool_param = bool(value)
    elif isinstance(value, int | np.integer):
        if value >= 2**63:
            p.uint64_param = int(value)
        else:
            p.int64_param = int(value)
    elif isinstance(value, float | np.floating):
        p.double_param = float(value)
    else:
        p.string_param = str(value)


# ---- tensors -------------------------------------------------------------------------------------

def _count(name: str, shape) -> int:
    if any(d < 0 for d in shape):
        raise V2Error(f"input {name!r}: shape {list(shape)} must hold non-negative integers")
    n = 1
    for d in shape:
        n *= int(d)                                    # Python ints: a huge shape cannot overflow
    return n


def _datatype(name: str, datatype: str) -> tuple[np.dtype, str | None]:
    if datatype not in DATATYPES:
        raise V2Error(f"input {name!r}: datatype {datatype!r} is not a v2 datatype; use one of {sorted(DATATYPES)}")
    return DATATYPES[datatype]


def deserialize_bytes(name: str, raw: bytes, n: int) -> np.ndarray:
    """Length-prefixed BYTES elements -> an object array of ``bytes``; refuses a truncated buffer."""
    out, pos = [], 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise V2Error(f"input {name!r}: BYTES data ends inside a 4-byte length prefix")
        (size,) = _LEN.unpack_from(raw, pos)
        pos += 4
        if pos + size > len(raw):
            raise V2Error(f"input {name!r}: a BYTES element of {size} bytes runs past the end of the data")
        out.append(raw[pos:pos + size])
        pos += size
        if len(out) > n:
            break
    if len(out) != n:
        raise V2Error(f"input {name!r}: shape needs {n} BYTES elements, the data holds {len(out)}")
    arr = np.empty(n, dtype=object)
    arr[:] = out
    return arr


def serialize_bytes(arr: np.ndarray) -> bytes:
    parts = []
    for v in arr.reshape(-1):
        b = v.encode() if isinstance(v, str) else bytes(v)
        parts += [_LEN.pack(len(b)), b]
    return b"".join(parts)


def decode_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> np.ndarray:
    dtype, _ = _datatype(name, datatype)
    n = _count(name, shape)
    if datatype == "BYTES":
        return deserialize_bytes(name, raw, n).reshape(shape)
    if len(raw) != n * dtype.itemsize:
        raise V2Error(f"input {name!r}: shape {list(shape)} of {datatype} needs {n * dtype.itemsize} bytes, "
                      f"raw_input_contents has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def decode_typed(t: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...]) -> np.ndarray:
    dtype, field = _datatype(t.name, t.datatype)
    if field is None:
        raise V2Error(f"input {t.name!r}: {t.datatype} has no typed contents field; send it in raw_input_contents")
    n = _count(t.name, shape)
    values = getattr(t.contents, field)
    if len(values) != n:
        raise V2Error(f"input {t.name!r}: shape {list(shape)} needs {n} values, contents.{field} has {len(values)}")
    if t.datatype == "BYTES":
        arr = np.empty(n, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    try:
        return np.asarray(values, dtype=dtype.newbyteorder("=")).reshape(shape)
    except OverflowError:
        raise V2Error(f"input {t.name!r}: a value is out of range for {t.datatype}") from None


def decode_request(req: pb.ModelInferRequest) -> InferRequest:
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise V2Error(f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs; "
                      "send every input raw or none")
    inputs = []
    for i, t in enumerate(req.inputs):
        shape = tuple(int(d) for d in t.shape)
        if raw and t.HasField("contents"):
            raise V2Error(f"input {t.name!r}: data both in contents and raw_input_contents")
        arr = decode_raw(t.name, t.datatype, shape, raw[i]) if raw else decode_typed(t, shape)
        inputs.append(InferInput(t.name, t.datatype, shape, arr, params_to_dict(t.parameters)))
    outputs = [RequestedOutput(o.name, params_to_dict(o.parameters)) for o in req.outputs] or None
    return InferRequest(req.model_name, req.model_version or None, inputs, outputs,
                        id=req.id or None, parameters=params_to_dict(req.parameters))


def encode_response(resp: InferResponse) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name=resp.model_name, model_version=str(resp.model_version),
                                id=resp.id or "")
    for k, v in resp.parameters.items():
        set_param(out.parameters, k, v)
    for o in resp.outputs:
        t = out.outputs.add(name=o.name, datatype=o.datatype, shape=list(o.shape))
        for k, v in o.parameters.items():
            set_param(t.parameters, k, v)
        if o.datatype == "BYTES":
            out.raw_output_contents.append(serialize_bytes(np.asarray(o.data)))
        else:
            dtype, _ = DATATYPES[o.datatype]
            out.raw_output_contents.append(np.ascontiguousarray(o.data, dtype=dtype).tobytes())
    return out
