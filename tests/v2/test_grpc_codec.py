"""gRPC codec and status mapping, without a server: every datatype both ways, and what it refuses."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
from tritonclient.grpc import service_pb2 as pb

from service.errors import ServiceError
from service.grpc_api import codec
from service.grpc_api.status import grpc_code
from service.openinference import datatypes
from service.openinference.types import InferOutput, InferResponse

ARRAYS = {"BOOL": np.array([[True, False, True]]), "UINT8": np.array([[0, 7, 255]], np.uint8),
          "UINT16": np.array([[1, 65535, 3]], np.uint16), "UINT32": np.array([[1, 2**32 - 1, 3]], np.uint32),
          "UINT64": np.array([[1, 2**64 - 1, 3]], np.uint64), "INT8": np.array([[-128, 0, 127]], np.int8),
          "INT16": np.array([[-5, 0, 5]], np.int16), "INT32": np.array([[-5, 0, 2**31 - 1]], np.int32),
          "INT64": np.array([[-(2**63), 0, 2**63 - 1]], np.int64), "FP16": np.array([[0.5, -1, 2]], np.float16),
          "FP32": np.array([[0.25, -1, 3e38]], np.float32), "FP64": np.array([[1e-300, -1, 2]], np.float64),
          "BYTES": np.array([[b"a", b"", "é".encode()]], dtype=object)}


def request(datatype, arr, raw=True) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m", model_version="2", id="r")
    req.parameters["sequence_id"].uint64_param = 2**63 + 1
    req.parameters["sequence_start"].bool_param = True
    req.parameters["priority"].int64_param = 3
    t = req.inputs.add(name="X", datatype=datatype, shape=list(arr.shape))
    if raw:
        req.raw_input_contents.append(datatypes.to_bytes(arr, datatype))
    else:
        getattr(t.contents, codec.TYPED_FIELDS.get(datatype, "fp32_contents")).extend(arr.reshape(-1).tolist())
    req.outputs.add(name="Y").parameters["class_count"].int64_param = 2
    return req


@pytest.mark.parametrize("datatype", sorted(ARRAYS))
@pytest.mark.parametrize("raw", [True, False])
def test_every_datatype_decodes_raw_and_typed(datatype, raw):
    if datatype == "FP16" and not raw:
        with pytest.raises(ServiceError, match="FP16 has no typed contents"):
            codec.decode_request(request(datatype, ARRAYS[datatype], raw), 10_000)
        return
    r = codec.decode_request(request(datatype, ARRAYS[datatype], raw), 10_000, arrival_ns=5)
    assert (r.model_name, r.model_version, r.id, r.arrival_ns) == ("m", "2", "r", 5)
    assert r.parameters == {"sequence_id": 2**63 + 1, "sequence_start": True, "priority": 3}
    assert r.outputs[0].name == "Y" and r.outputs[0].parameters == {"class_count": 2}
    x = r.inputs[0]
    assert x.shape == (1, 3) and x.data.shape == (1, 3)
    assert x.data.tolist() == ARRAYS[datatype].tolist()


@pytest.mark.parametrize("datatype", sorted(ARRAYS))
def test_every_datatype_encodes_raw(datatype):
    arr = ARRAYS[datatype]
    resp = codec.encode_response(InferResponse("m", "1", [InferOutput("Y", datatype, arr.shape, arr)], id="r",
                                               parameters={"sequence_id": "abc", "sequence_end": True}))
    assert resp.outputs[0].datatype == datatype and list(resp.outputs[0].shape) == [1, 3]
    assert codec.params_to_dict(resp.parameters) == {"sequence_id": "abc", "sequence_end": True}
    back = datatypes.from_bytes("Y", datatype, [1, 3], resp.raw_output_contents[0], 10)
    assert back.tolist() == arr.tolist()


@pytest.mark.parametrize("mutate, words, status", [
    (lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 23), "needs 24 bytes", 400),
    (lambda r: r.raw_input_contents.append(b""), "2 entries for 1 inputs", 400),
    (lambda r: r.inputs[0].ClearField("shape") or r.inputs[0].shape.extend([1, -3]), "non-negative", 400),
    (lambda r: r.inputs[0].ClearField("shape") or r.inputs[0].shape.extend([10**6, 10**6, 10**6]), "limit", 413),
    (lambda r: setattr(r.inputs[0], "datatype", "COMPLEX"), "not supported", 400),
    (lambda r: r.inputs[0].contents.int64_contents.append(1), "both in contents and raw", 400),
])
def test_undecodable_requests_are_refused_naming_the_tensor(mutate, words, status):
    req = request("INT64", ARRAYS["INT64"])
    mutate(req)
    with pytest.raises(ServiceError, match=words) as err:
        codec.decode_request(req, 10_000)
    assert err.value.status == status
    assert "'X'" in err.value.message or "for 1 inputs" in err.value.message


@pytest.mark.parametrize("raw, words", [(b"\x05\0\0\0abc", "past the end"), (b"\x01\0", "ends after 0 of 3"),
                                        (b"\x01\0\0\0a" * 4, "left over")])
def test_malformed_bytes_are_refused(raw, words):
    req = request("BYTES", ARRAYS["BYTES"])
    req.raw_input_contents[0] = raw
    with pytest.raises(ServiceError, match=words):
        codec.decode_request(req, 10_000)


def test_typed_values_out_of_range_are_refused():
    req = request("INT8", ARRAYS["INT8"], raw=False)
    req.inputs[0].contents.int_contents[0] = 300
    with pytest.raises(ServiceError, match=r"must lie in \[-128, 127\] for INT8"):
        codec.decode_request(req, 10_000)


@pytest.mark.parametrize("status, code", [(400, "INVALID_ARGUMENT"), (401, "UNAUTHENTICATED"), (404, "NOT_FOUND"),
                                          (409, "FAILED_PRECONDITION"), (410, "NOT_FOUND"),
                                          (413, "RESOURCE_EXHAUSTED"), (422, "INVALID_ARGUMENT"),
                                          (429, "RESOURCE_EXHAUSTED"), (503, "UNAVAILABLE"),
                                          (504, "DEADLINE_EXCEEDED"), (418, "INVALID_ARGUMENT"), (500, "INTERNAL")])
def test_one_status_table(status, code):
    assert grpc_code(ServiceError("x", status=status)) == getattr(grpc.StatusCode, code)
