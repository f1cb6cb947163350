"""Our models as v2 tensors: what each model takes and returns, and the checks between the two.

Tensors per model (``GET /v2/models/{name}`` documents them):

* inputs: ``INPUT_IDS`` [B, T] of any integer datatype, or ``INPUT_TEXT`` BYTES [B] or [B, 1]
  (UTF-8 text, encoded with the model's vocabulary exactly as /v1 encodes it), for token models;
  ``INPUT`` [B, T, I] of any numeric or BOOL datatype for feature models; plus optional
  ``LENGTHS`` [B] of any integer datatype for ragged batches (padding past a length is ignored);
* outputs: ``PROBABILITIES`` FP32 [B, C] and ``CLASS`` INT64 [B] for classifiers (from each
  sequence's last step); ``PROBABILITIES`` FP32 [B, T, C] (softmax, or sigmoid for binary outputs)
  for seq2seq and language models; ``LOGITS`` with the same shape, on request. With Triton's
  classification extension (output parameter ``classification`` on the wire, the clients'
  ``class_count``; ``class_count`` is accepted too), PROBABILITIES or LOGITS come back as the top
  classes, BYTES ``"score:index:label"``.
"""
from __future__ import annotations

import json

import numpy as np

from model_core.config import ModelConfig
from model_core.inputs import features_problem, token_ids_problem
from model_core.nn.losses import activate
from service.encoding import encode_text
from service.errors import ServiceError
from service.request_limits import INT64_MAX, JSON_BYTES_PER_VALUE, check_batch, check_steps
from service.openinference.datatypes import TensorError
from service.openinference.types import InferInput, InferOutput, RequestedOutput
from service.settings import Settings

PLATFORM_PREFIX = "rnn-serve"


def input_spec(c: ModelConfig) -> list[dict]:
    """Every input with ``optional`` marked (INPUT_IDS and INPUT_TEXT are alternatives: one of them)."""
    if c.uses_tokens:
        main = [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [-1, -1], "optional": bool(c.vocab)}]
        if c.vocab:
            main.append({"name": "INPUT_TEXT", "datatype": "BYTES", "shape": [-1], "optional": True})
    else:
        main = [{"name": "INPUT", "datatype": "FP32", "shape": [-1, -1, c.input_size], "optional": False}]
    return [*main, {"name": "LENGTHS", "datatype": "INT64", "shape": [-1], "optional": True}]


def output_spec(c: ModelConfig) -> list[dict]:
    if c.task == "classify":
        return [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, c.output_size]},
                {"name": "CLASS", "datatype": "INT64", "shape": [-1]},
                {"name": "LOGITS", "datatype": "FP32", "shape": [-1, c.output_size]}]
    return [{"name": "PROBABILITIES", "datatype": "FP32", "shape": [-1, -1, c.output_size]},
            {"name": "LOGITS", "datatype": "FP32", "shape": [-1, -1, c.output_size]}]


def platform(entry) -> str:
    """Our runtime serves every format (ONNX too), so the platform names it and the cell."""
    return f"{PLATFORM_PREFIX}_onnx" if entry.format == "onnx" else f"{PLATFORM_PREFIX}_{entry.config.cell}"


def model_metadata(entry, versions: list[str]) -> dict:
    """``GET /v2/models/{m}``; ``parameters`` carry what a v2-only client needs to encode text."""
    c = entry.config
    params = {"task": c.task, "version_label": entry.version}
    if c.vocab:
        params["vocabulary"] = json.dumps(list(c.vocab))      # a JSON array: token id i is element i
    if c.labels:
        params["labels"] = json.dumps(list(c.labels))
    return {"name": entry.name, "versions": versions, "platform": platform(entry),
            "inputs": [{k: v for k, v in t.items() if k != "optional"} for t in input_spec(c)],
            "outputs": output_spec(c), "parameters": params}


# -- inputs --------------------------------------------------------------------------------------
def parse_inputs(c: ModelConfig, inputs: list[InferInput], settings: Settings) -> tuple[list[np.ndarray], np.ndarray]:
    """Request tensors -> per-sequence arrays (ids (T,) or features (T, I)) and lengths (B,)."""
    by_name: dict[str, InferInput] = {}
    for t in inputs:
        if t.name in by_name:
            raise TensorError(f"input {t.name!r} is given twice")
        by_name[t.name] = t
    spec = input_spec(c)
    mains = [s["name"] for s in spec if s["name"] != "LENGTHS"]
    unknown = sorted(set(by_name) - {s["name"] for s in spec})
    given = [n for n in mains if n in by_name]
    if unknown or len(given) != 1:
        want = " or ".join(repr(n) for n in mains)
        raise TensorError(f"this model takes inputs {want} (and optional 'LENGTHS'); got {sorted(by_name)}")
    t = by_name[given[0]]
    if t.name == "INPUT_TEXT":
        if "LENGTHS" in by_name:
            raise TensorError("'LENGTHS' goes with 'INPUT_IDS'; with 'INPUT_TEXT' each text's length is its own")
        seqs = _texts(c, t, settings)
        return seqs, np.array([len(s) for s in seqs], dtype=np.int64)
    x = _ids(c, t) if t.name == "INPUT_IDS" else _features(c, t)
    B, T = x.shape[:2]
    if B == 0 or T == 0:
        raise TensorError(f"input {t.name!r} is empty")
    check_batch(B, settings)
    check_steps(T, settings.max_sequence_length, t.name)
    lengths = np.full(B, T, dtype=np.int64)
    if "LENGTHS" in by_name:
        lengths = _lengths(by_name["LENGTHS"], B, T)
    return [x[b, : lengths[b]] for b in range(B)], lengths


def _ids(c: ModelConfig, t: InferInput) -> np.ndarray:
    x = t.data
    if x.dtype.kind not in "iu":
        raise TensorError(f"input 'INPUT_IDS' takes token ids of an integer datatype (INT64, INT32, UINT8, ...), "
                          f"not {t.datatype}")
    if x.ndim != 2:
        raise TensorError(f"input 'INPUT_IDS' must have shape [B, T], got {list(x.shape)}")
    problem = token_ids_problem(c, x)
    if problem:
        raise TensorError(f"input 'INPUT_IDS': {problem}")
    return x.astype(np.int64)


def _features(c: ModelConfig, t: InferInput) -> np.ndarray:
    x = t.data
    if x.dtype.kind not in "biuf":
        raise TensorError(f"input 'INPUT' takes numbers (FP32, FP64, an integer type or BOOL), not {t.datatype}")
    if x.ndim != 3 or x.shape[2] != c.input_size:
        raise TensorError(f"input 'INPUT' must have shape [B, T, {c.input_size}], got {list(x.shape)}")
    problem = features_problem(c, x)
    if problem:
        raise TensorError(f"input 'INPUT': {problem}")
    return x.astype(np.float32)


def _lengths(t: InferInput, B: int, T: int) -> np.ndarray:
    x = t.data
    if x.dtype.kind not in "iu":
        raise TensorError(f"input 'LENGTHS' takes an integer datatype, not {t.datatype}")
    if x.shape != (B,) or x.min() < 1 or x.max() > T:
        raise TensorError(f"input 'LENGTHS' must hold {B} values in [1, {T}]")
    return x.astype(np.int64)


def _texts(c: ModelConfig, t: InferInput, settings: Settings) -> list[np.ndarray]:
    x = t.data
    if t.datatype != "BYTES":
        raise TensorError(f"input 'INPUT_TEXT' must be BYTES, not {t.datatype}")
    if not (x.ndim == 1 or (x.ndim == 2 and x.shape[1] == 1)) or x.shape[0] == 0:
        raise TensorError(f"input 'INPUT_TEXT' must have shape [B] or [B, 1] with B >= 1, got {list(x.shape)}")
    check_batch(x.shape[0], settings)
    seqs = []
    for b, raw in enumerate(x.reshape(-1)):
        where = f"input 'INPUT_TEXT'[{b}]"
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise TensorError(f"{where} is not UTF-8 text") from None
        if not text:
            raise TensorError(f"{where} is empty: a sequence needs at least one step")
        check_steps(len(text), settings.max_sequence_length, where)
        try:
            seqs.append(encode_text(c, text))
        except ServiceError as exc:
            raise TensorError(f"{where}: {exc.message}") from None
    return seqs


# -- parameters ----------------------------------------------------------------------------------
def sequence_params(params: dict) -> tuple[str | None, bool, bool]:
    """Triton's sequence extension: (sequence id or None, start, end)."""
    sid = params.get("sequence_id")
    if isinstance(sid, bool) or not (sid is None or isinstance(sid, int | str)) or (isinstance(sid, int) and sid < 0):
        raise TensorError("parameters.sequence_id must be an unsigned integer or a string")
    start, end = params.get("sequence_start", False), params.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise TensorError("parameters.sequence_start and sequence_end must be booleans")
    if sid in (None, 0, ""):
        if start or end:
            raise TensorError("sequence_start/sequence_end need a non-zero or non-empty sequence_id")
        return None, False, False
    return str(sid), start, end


def optional_uint_param(params: dict, name: str) -> int | None:
    """An optional unsigned integer parameter that means something only when given, e.g. ``at``."""
    return None if params.get(name) is None else uint_param(params, name, INT64_MAX)


def uint_param(params: dict, name: str, limit: int | None = None) -> int:
    """An optional unsigned integer parameter (0 when absent), e.g. ``priority``, ``timeout``."""
    v = params.get(name, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (limit is not None and v > limit):
        bound = f" in [0, {limit}]" if limit is not None else ""
        raise TensorError(f"parameters.{name} must be an unsigned integer{bound}, got {v!r}")
    return v


# -- outputs -------------------------------------------------------------------------------------
def _requested(c: ModelConfig, requested: list[RequestedOutput] | None) -> list[tuple[str, int]]:
    """(output name, class_count) pairs; the model's defaults when none are asked for."""
    if not requested:
        return [(n, 0) for n in (["PROBABILITIES", "CLASS"] if c.task == "classify" else ["PROBABILITIES"])]
    available = [o["name"] for o in output_spec(c)]
    names = [o.name for o in requested]
    if bad := sorted(set(names) - set(available)):
        raise TensorError(f"unknown outputs {bad}; this model has {available}")
    if len(set(names)) != len(names):
        raise TensorError(f"an output is asked for twice: {names}")
    out = []
    for o in requested:
        k = uint_param(o.parameters, "classification") or uint_param(o.parameters, "class_count")   # wire name, alias
        if k and o.name == "CLASS":
            raise TensorError("class_count applies to 'PROBABILITIES' or 'LOGITS', not 'CLASS'")
        out.append((o.name, min(k, c.output_size)))            # as Triton: at most every class
    return out


def response_bytes(c: ModelConfig, lengths: np.ndarray, requested: list[RequestedOutput] | None,
                   binary: bool) -> int:
    """About how large the response will be, before anything runs (for ``limits.check_response``).
    ``binary``: the request's default (``binary_data_output``); an output's ``binary_data`` overrides it."""
    B, T = len(lengths), int(lengths.max())
    rows = B if c.task == "classify" else B * T
    as_binary = {o.name: o.parameters.get("binary_data", binary) is True for o in requested or []}
    total = 0
    for name, k in _requested(c, requested):
        per_value = 8 if as_binary.get(name, binary) else JSON_BYTES_PER_VALUE
        total += rows * (k * 40 if k else (1 if name == "CLASS" else c.output_size) * per_value)
    return total


def classification(values: np.ndarray, k: int, labels: list[str] | None) -> np.ndarray:
    """Triton's classification extension: the top ``k`` of the last axis as ``"score:index:label"``."""
    order = np.argsort(-values, axis=-1, kind="stable")[..., :k]
    top = np.take_along_axis(values, order, axis=-1)
    out = np.empty(order.shape, dtype=object)
    for pos in np.ndindex(order.shape):
        i = int(order[pos])
        label = f":{labels[i]}" if labels else ""
        out[pos] = f"{float(top[pos]):f}:{i}{label}".encode()
    return out


def build_outputs(c: ModelConfig, logits: np.ndarray, requested: list[RequestedOutput] | None,
                  labels: list[str] | None = None) -> list[InferOutput]:
    """logits: (B, C) for classifiers, (B, T, C) otherwise (padded steps already zero-filled)."""
    probs = activate(logits.astype(np.float64), c.output).astype(np.float32)
    arrays = {"PROBABILITIES": probs, "LOGITS": logits.astype(np.float32)}
    if c.task == "classify":
        arrays["CLASS"] = probs.argmax(-1).astype(np.int64)
    out = []
    for name, k in _requested(c, requested):
        arr = arrays[name]
        if k:
            out.append(InferOutput(name, "BYTES", arr.shape[:-1] + (k,), classification(arr, k, labels)))
        else:
            out.append(InferOutput(name, "INT64" if name == "CLASS" else "FP32", arr.shape, arr))
    return out
