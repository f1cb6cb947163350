"""KServe v2 (Open Inference Protocol) tensors for our models, and Triton's sequence extension.

Tensors per model (``GET /v2/models/{name}`` documents them):

* inputs: ``INPUT_IDS`` INT64 [B, T] (token models) or ``INPUT`` FP32 [B, T, I] (feature models),
  plus optional ``LENGTHS`` INT64 [B] for ragged batches (padding past a length is ignored);
* outputs: ``PROBABILITIES`` FP32 [B, C] and ``CLASS`` INT64 [B] for classifiers (from each
  sequence's last step); ``PROBABILITIES`` FP32 [B, T, C] (softmax, or sigmoid for binary outputs)
  for seq2seq and language models; ``LOGITS`` with the same shape, on request.

With ``parameters.sequence_id`` (non-zero integer or non-empty string) the request belongs to a
stateful sequence (B must be 1): ``sequence_start`` begins it with a zero state, later requests
continue from the state the previous one left, ``sequence_end`` releases it.
"""
from __future__ import annotations

import numpy as np

from model_core.config import ModelConfig
from service.errors import ServiceError

DATATYPES = {"INT64": np.int64, "INT32": np.int32, "FP32": np.float32, "FP64": np.float64, "BOOL": np.bool_}
MAX_ELEMENTS = 4_000_000


class V2Error(ServiceError):
    """Errors on the v2 endpoints use the protocol's own shape: ``{"error": "message"}``."""

    status, code = 400, "v2_error"


def input_spec(c: ModelConfig) -> list[dict]:
    main = ({"name": "INPUT_IDS", "datatype": "INT64", "shape": [-1, -1]} if c.uses_tokens
            else {"name": "INPUT", "datatype": "FP32", "shape": [-1, -1, c.input_size]})
    return [main, {"name": "LENGTHS", "datatype": "INT64", "shape": [-1], "optional": True}]


def output_spec(c: ModelConfig) -> list[dict]:
    if c.task == "classify":
        return [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, c.output_size]},
                {"name": "CLASS", "datatype": "INT64", "shape": [-1]},
                {"name": "LOGITS", "datatype": "FP32", "shape": [-1, c.output_size]}]
    return [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, -1, c.output_size]},
            {"name": "LOGITS", "datatype": "FP32", "shape": [-1, -1, c.output_size]}]


def model_metadata(entry) -> dict:
    c = entry.config
    platform = "rnn-serve_onnx" if entry.format == "onnx" else f"rnn-serve_{c.cell}"     # ONNX: our runtime, not ORT
    return {"name": entry.name, "versions": [entry.version], "platform": platform,
            "inputs": [{k: v for k, v in t.items() if k != "optional"} for t in input_spec(c)],
            "outputs": output_spec(c)}


def decode_tensor(t: dict) -> np.ndarray:
    """A v2 JSON tensor -> NumPy, checking datatype and shape against the data."""
    name, dtype, shape = t.get("name"), t.get("datatype"), t.get("shape")
    if dtype not in DATATYPES:
        raise V2Error(f"input {name!r}: datatype {dtype!r} is not supported; use one of {sorted(DATATYPES)}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise V2Error(f"input {name!r}: shape must be a list of non-negative integers")
    n = int(np.prod(shape)) if shape else 1
    if n > MAX_ELEMENTS:
        raise V2Error(f"input {name!r}: {n} elements is over the limit of {MAX_ELEMENTS}", status=413)
    try:
        flat = np.asarray(t.get("data"), dtype=DATATYPES[dtype]).reshape(-1)
    except (TypeError, ValueError):
        raise V2Error(f"input {name!r}: data does not hold {dtype} values") from None
    if flat.size != n:
        raise V2Error(f"input {name!r}: shape {shape} needs {n} values, data has {flat.size}")
    return flat.reshape(shape)


def parse_inputs(c: ModelConfig, inputs: list[dict]) -> tuple[list[np.ndarray], np.ndarray]:
    """Request tensors -> per-sequence arrays (ids (T,) or features (T, I)) and lengths."""
    by_name = {t.get("name"): t for t in inputs}
    main_name = "INPUT_IDS" if c.uses_tokens else "INPUT"
    unknown = sorted(set(by_name) - {main_name, "LENGTHS"})
    if unknown or main_name not in by_name:
        raise V2Error(f"this model takes inputs {main_name!r} (and optional 'LENGTHS'); got {sorted(by_name)}")
    x = decode_tensor(by_name[main_name])
    want_ndim = 2 if c.uses_tokens else 3
    if x.ndim != want_ndim or (not c.uses_tokens and x.shape[2] != c.input_size):
        expect = "[B, T]" if c.uses_tokens else f"[B, T, {c.input_size}]"
        raise V2Error(f"input {main_name!r} must have shape {expect}, got {list(x.shape)}")
    B, T = x.shape[:2]
    if B == 0 or T == 0:
        raise V2Error(f"input {main_name!r} is empty")
    lengths = np.full(B, T, dtype=np.int64)
    if "LENGTHS" in by_name:
        lengths = decode_tensor(by_name["LENGTHS"]).astype(np.int64).reshape(-1)
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise V2Error(f"'LENGTHS' must hold {B} values in [1, {T}]")
    if c.uses_tokens:
        x = x.astype(np.int64)
        if x.min() < 0 or x.max() >= c.input_size:
            raise V2Error(f"'INPUT_IDS' values must lie in [0, {c.input_size})")
    elif not np.isfinite(x).all():
        raise V2Error("'INPUT' must hold finite numbers")
    return [x[b, : lengths[b]] for b in range(B)], lengths


def sequence_params(params: dict | None) -> tuple[str | None, bool, bool]:
    params = params or {}
    sid = params.get("sequence_id")
    if isinstance(sid, bool) or not (sid is None or isinstance(sid, int | str)):
        raise V2Error("parameters.sequence_id must be an unsigned integer or a string")
    if isinstance(sid, int) and sid < 0:
        raise V2Error("parameters.sequence_id must be an unsigned integer or a string")
    start, end = params.get("sequence_start", False), params.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise V2Error("parameters.sequence_start and sequence_end must be booleans")
    if sid in (None, 0, ""):
        if start or end:
            raise V2Error("sequence_start/sequence_end need a non-zero or non-empty sequence_id")
        return None, False, False
    return str(sid), start, end


def _tensor(name: str, arr: np.ndarray, datatype: str) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}


def activate(c: ModelConfig, logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    if c.output == "binary":
        return 1.0 / (1.0 + np.exp(-z))
    if c.output == "regression":
        return z
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def build_outputs(c: ModelConfig, logits: np.ndarray, requested: list[dict] | None) -> list[dict]:
    """logits: (B, C) for classifiers, (B, T, C) otherwise (padded steps already zero-filled)."""
    names = [o.get("name") for o in requested] if requested else None
    available = {o["name"] for o in output_spec(c)}
    if names is not None and (bad := sorted(set(names) - available)):
        raise V2Error(f"unknown outputs {bad}; this model has {sorted(available)}")
    probs = activate(c, logits).astype(np.float32)
    tensors = {"PROBABILITIES": _tensor("PROBABILITIES", probs, "FP32"),
               "LOGITS": _tensor("LOGITS", logits.astype(np.float32), "FP32")}
    if c.task == "classify":
        tensors["CLASS"] = _tensor("CLASS", probs.argmax(-1).astype(np.int64), "INT64")
    default = ["PROBABILITIES", "CLASS"] if c.task == "classify" else ["PROBABILITIES"]
    return [tensors[n] for n in (names or default)]
