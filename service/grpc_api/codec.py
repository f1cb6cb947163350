"""Protobuf <-> ``service.openinference.types``: tensors, parameters, requests and responses.

Inputs come either all in ``raw_input_contents`` (little-endian bytes, one entry per input, BYTES
elements each prefixed by a 4-byte little-endian length) or each in its typed ``contents`` field.
Outputs always go back in ``raw_output_contents``, as Triton's server sends them. Datatypes are
read and written by ``service.openinference.datatypes``, the same code as HTTP's; checking a tensor
against a model is ``service.openinference.infer``'s job.
"""
from __future__ import annotations

import numpy as np
from tritonclient.grpc import service_pb2 as pb

from service.openinference import datatypes
from service.openinference.datatypes import TensorError
from service.openinference.types import InferInput, InferRequest, InferResponse, RequestedOutput

# v2 datatype -> the typed-contents field that carries it (FP16 has none: raw bytes only)
TYPED_FIELDS = {"BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                "UINT32": "uint_contents", "UINT64": "uint64_contents", "INT8": "int_contents",
                "INT16": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
                "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


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

def decode_typed(t: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...], max_elements: int) -> np.ndarray:
    """Typed ``contents``: numbers and booleans through the same checks as JSON (ranges included)."""
    datatypes.check_datatype(t.name, t.datatype)
    field = TYPED_FIELDS.get(t.datatype)
    if field is None:
        raise TensorError(f"tensor {t.name!r}: {t.datatype} has no typed contents field; send it in "
                          "raw_input_contents")
    values = list(getattr(t.contents, field))
    if t.datatype != "BYTES":
        return datatypes.from_json(t.name, t.datatype, list(shape), values, max_elements)
    n = datatypes.element_count(t.name, list(shape), max_elements)
    if len(values) != n:
        raise TensorError(f"tensor {t.name!r}: shape {list(shape)} needs {n} values, contents.{field} has "
                          f"{len(values)}")
    arr = np.empty(n, dtype=object)
    arr[:] = values
    return arr.reshape(shape)


def decode_request(req: pb.ModelInferRequest, max_request_bytes: int, arrival_ns: int | None = None) -> InferRequest:
    """``max_request_bytes`` also caps a tensor's elements: every element takes at least a byte of the
    message, so a shape claiming more could never be filled (and is refused before any allocation)."""
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise TensorError(f"raw_input_contents has {len(raw)} entries for {len(req.inputs)} inputs; "
                          "send every input raw or none")
    inputs = []
    for i, t in enumerate(req.inputs):
        shape = tuple(int(d) for d in t.shape)
        if raw and t.HasField("contents"):
            raise TensorError(f"tensor {t.name!r}: data both in contents and raw_input_contents")
        arr = (datatypes.from_bytes(t.name, t.datatype, list(shape), raw[i], max_request_bytes) if raw
               else decode_typed(t, shape, max_request_bytes))
        inputs.append(InferInput(t.name, t.datatype, shape, arr, params_to_dict(t.parameters)))
    outputs = [RequestedOutput(o.name, params_to_dict(o.parameters)) for o in req.outputs] or None
    return InferRequest(req.model_name, req.model_version or None, inputs, outputs,
                        id=req.id or None, parameters=params_to_dict(req.parameters), arrival_ns=arrival_ns)


def encode_response(resp: InferResponse) -> pb.ModelInferResponse:
    out = pb.ModelInferResponse(model_name=resp.model_name, model_version=str(resp.model_version),
                                id=resp.id or "")
    for k, v in resp.parameters.items():
        set_param(out.parameters, k, v)
    for o in resp.outputs:
        t = out.outputs.add(name=o.name, datatype=o.datatype, shape=list(o.shape))
        for k, v in o.parameters.items():
            set_param(t.parameters, k, v)
        out.raw_output_contents.append(datatypes.to_bytes(np.asarray(o.data), o.datatype))
    return out
