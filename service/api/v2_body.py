"""The v2 HTTP infer body, both ways: JSON, Triton's binary tensor data extension, compression.

Request (whatever the ``Content-Type``: none, ``application/json`` or ``application/octet-stream``):

1. ``Content-Encoding: gzip`` or ``deflate`` is undone incrementally, never past ``max_bytes``
   (the request size limit applies to the decompressed body: a zip bomb gets 413);
2. with ``Inference-Header-Content-Length: N`` the first N bytes are the JSON header and the rest
   holds the binary tensors, in input order, each sized by its ``parameters.binary_data_size``;
   without it the whole body is JSON;
3. unknown top-level fields (``model_name``, ...) are tolerated, as Triton does.

Response: JSON, except outputs asked for as binary (``outputs[i].parameters.binary_data``, else
the request's ``parameters.binary_data_output``) travel after the JSON header, with
``Inference-Header-Content-Length`` set. ``Accept-Encoding: gzip``/``deflate`` compresses it.
"""
from __future__ import annotations

import json
import zlib

from service.errors import PayloadTooLarge, ServiceError
from service.openinference import datatypes as dt
from service.openinference.types import InferInput, InferRequest, InferResponse, RequestedOutput
from service.request_limits import ascii_int64

HEADER_LENGTH = "inference-header-content-length"
_CHUNK = 64 * 1024
MIN_COMPRESS_BYTES = 1024          # smaller responses cost more to compress than they save


class BodyError(ServiceError):
    status, code = 400, "invalid_body"


def decompress(body: bytes, encoding: str | None, max_bytes: int) -> bytes:
    """Undo ``Content-Encoding`` in bounded steps: at most ``max_bytes`` of output, ever."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ServiceError(f"Content-Encoding {encoding!r} is not supported; use gzip, deflate or none", status=415)
    # gzip: the gzip wrapper; deflate: zlib's wrapper (what HTTP means by it) or, as some clients send, raw
    attempts = [16 + zlib.MAX_WBITS] if encoding == "gzip" else [zlib.MAX_WBITS, -zlib.MAX_WBITS]
    for i, wbits in enumerate(attempts):
        try:
            return _inflate(body, wbits, max_bytes)
        except zlib.error as exc:
            if i == len(attempts) - 1:
                raise BodyError(f"the body is not valid {encoding} data: {exc}") from None
    raise AssertionError("unreachable")


def _inflate(body: bytes, wbits: int, max_bytes: int) -> bytes:
    d, out, size, pending = zlib.decompressobj(wbits), [], 0, body
    while pending:
        chunk = d.decompress(pending, _CHUNK)
        pending = d.unconsumed_tail
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"request body is over the limit of {max_bytes} bytes after decompression")
        out.append(chunk)
        if d.eof:
            break
    if not d.eof:
        raise zlib.error("truncated stream")
    return b"".join(out)


def split(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """The JSON header and the binary part that follows it (empty without the extension)."""
    view = memoryview(body)
    if header_length is None:
        head, rest = view, view[len(view):]
    else:
        n = ascii_int64(header_length.strip())
        if n is None or n > len(body):
            raise BodyError(f"Inference-Header-Content-Length {header_length!r} must be a byte count within the "
                            f"body's {len(body)} bytes")
        head, rest = view[:n], view[n:]
    try:
        header = json.loads(bytes(head))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BodyError(f"the request is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise BodyError("the request must be a JSON object with 'inputs'")
    return header, rest


def optional_json(body: bytes) -> dict:
    """The small JSON object some v2 POSTs may carry (repository index, load, unload); empty is ``{}``."""
    if not body.strip():
        return {}
    header, _ = split(body, None)
    return header


def _dict(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BodyError(f"{where} must be an object")
    return value


def decode(name: str, version: str | None, header: dict, binary: memoryview, max_elements: int,
           arrival_ns: int | None = None) -> InferRequest:
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BodyError("'inputs' must be a non-empty list of tensors")
    req_id = header.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise BodyError("'id' must be a string")
    offset, decoded = 0, []
    for i, t in enumerate(inputs):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise BodyError(f"inputs[{i}] must be an object with a string 'name'")
        tname, datatype, shape = t["name"], t.get("datatype"), t.get("shape")
        params = _dict(t.get("parameters"), f"input {tname!r}: parameters")
        if any(k.startswith("shared_memory") for k in params):
            raise BodyError(f"input {tname!r}: shared memory is not supported; send the data in the body")
        size = params.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise BodyError(f"input {tname!r}: binary_data_size {size!r} does not fit the {len(binary) - offset} "
                                "binary bytes left in the body")
            if "data" in t:
                raise BodyError(f"input {tname!r}: has both 'data' and binary_data_size; send one")
            arr = dt.from_bytes(tname, datatype, shape, binary[offset:offset + size], max_elements)
            offset += size
        else:
            arr = dt.from_json(tname, datatype, shape, t.get("data"), max_elements)
        decoded.append(InferInput(tname, datatype, tuple(arr.shape), arr, params))
    if offset != len(binary):
        raise BodyError(f"{len(binary) - offset} bytes after the tensors are not claimed by any binary_data_size")
    outputs = header.get("outputs")
    if outputs is not None and not isinstance(outputs, list):
        raise BodyError("'outputs' must be a list")
    requested = []
    for i, o in enumerate(outputs or []):
        if not isinstance(o, dict) or not isinstance(o.get("name"), str):
            raise BodyError(f"outputs[{i}] must be an object with a string 'name'")
        params = _dict(o.get("parameters"), f"output {o['name']!r}: parameters")
        if any(k.startswith("shared_memory") for k in params):
            raise BodyError(f"output {o['name']!r}: shared memory is not supported")
        requested.append(RequestedOutput(o["name"], params))
    return InferRequest(name, version, decoded, requested or None, id=req_id,
                        parameters=_dict(header.get("parameters"), "parameters"), arrival_ns=arrival_ns)


def _binary(req: InferRequest, output_name: str) -> bool:
    default = req.parameters.get("binary_data_output") is True
    for o in req.outputs or []:
        if o.name == output_name:
            return o.parameters.get("binary_data", default) is True
    return default


def encode(req: InferRequest, resp: InferResponse) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (``Inference-Header-Content-Length`` with binary outputs)."""
    outputs, blobs = [], []
    for o in resp.outputs:
        t = {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
        if o.parameters:
            t["parameters"] = dict(o.parameters)
        if _binary(req, o.name):
            blob = dt.to_bytes(o.data, o.datatype)
            t.setdefault("parameters", {})["binary_data_size"] = len(blob)
            blobs.append(blob)
        else:
            t["data"] = dt.to_json(o.data, o.datatype)
        outputs.append(t)
    body = {"model_name": resp.model_name, "model_version": resp.model_version, "outputs": outputs}
    if resp.id is not None:
        body["id"] = resp.id
    if resp.parameters:
        body["parameters"] = resp.parameters
    head = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    return b"".join([head, *blobs]), {"content-type": "application/octet-stream",
                                      "inference-header-content-length": str(len(head))}


def compress(body: bytes, headers: dict[str, str], accept_encoding: str | None) -> bytes:
    """Compress as the client accepts (gzip first, then deflate); otherwise, or when small, leave it."""
    if len(body) < MIN_COMPRESS_BYTES:
        return body
    accepted = {p.split(";")[0].strip().lower() for p in (accept_encoding or "").split(",")}
    for name, wbits in (("gzip", 16 + zlib.MAX_WBITS), ("deflate", zlib.MAX_WBITS)):
        if name in accepted:
            c = zlib.compressobj(6, zlib.DEFLATED, wbits)
            headers["content-encoding"] = name
            return c.compress(body) + c.flush()
    return body
