"""Checkpoints: one safetensors file holding the weights and, in its metadata, the config.

Format ``rnn-serve-checkpoint`` version 1:

* tensors: the model's parameters by ``SequenceModel.parameters()`` name (``rnn.weight_ih_l0``,
  ...), plus optional extra tensors (e.g. optimiser moments under ``optim.``) for resuming;
* metadata (``__metadata__``, strings): ``format``, ``format_version``, ``config`` (JSON of
  ``ModelConfig``) and ``extra`` (JSON, free-form: training state, metrics).

safetensors never executes code on load, unlike pickle. Before anything is allocated, the file's
own header is checked: its length, each tensor's dtype, shape and byte range against the file size,
and the parameter count the config declares, against ``MAX_PARAMETERS`` and against the weights the
file really holds (a 1.5 KB file declaring ``hidden_size`` 6000 is refused, not built).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from model_core.cells import gru_cell, lstm_cell, rnn_cell
from model_core.config import ModelConfig
from model_core.model import SequenceModel

FORMAT = "rnn-serve-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 2 * 1024**3
MAX_PARAMETERS = 512 * 1024**2          # 2 GiB of float32: what MAX_CHECKPOINT_BYTES can hold
MAX_HEADER_BYTES = 100 * 1024**2        # safetensors' own cap on the JSON header
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
             "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_GATES = {"rnn": rnn_cell.GATES, "lstm": lstm_cell.GATES, "gru": gru_cell.GATES}
_PARAM_MODULES = ("embedding", "rnn", "head")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and what is wrong."""


def save(model: SequenceModel, path, extra: dict | None = None, extra_tensors: dict | None = None) -> Path:
    """Write ``model`` (and optional resume data) to the file ``path`` atomically; returns the path.

    ``models/<name>/model.safetensors`` is what the service serves as model ``<name>``; missing
    folders are made. ``model_core.load(path)`` rebuilds the model from it.
    """
    path = Path(path)
    tensors = {k: np.ascontiguousarray(v) for k, v in model.state_dict().items()}
    for k, v in (extra_tensors or {}).items():
        if k in tensors:
            raise ValueError(f"extra tensor {k!r} clashes with a parameter name")
        tensors[k] = np.ascontiguousarray(v)
    meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "config": model.config.to_json(),
            "dtype": model.dtype.name, "extra": json.dumps(extra or {}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o644)                                    # readable by a service running as another user
    os.replace(tmp, path)                                   # never leave a half-written checkpoint
    return path


def declared_parameters(config: ModelConfig) -> int:
    """How many parameters ``SequenceModel(config)`` would allocate, worked out without allocating,
    in closed form: a crafted config's num_layers may be astronomically large, and counting layer by
    layer would be unbounded work before the limit check."""
    c = config
    D, GH, H = (2 if c.bidirectional else 1), _GATES[c.cell] * c.hidden_size, c.hidden_size

    def layer(in_size: int) -> int:
        return D * (GH * in_size + GH * H + (2 * GH if c.bias else 0))

    total = c.input_size * c.embedding_dim if c.input_encoding == "embedding" else 0
    total += layer(c.rnn_input_size) + (c.num_layers - 1) * layer(D * H)   # the first layer, then the rest
    return total + D * H * c.output_size + c.output_size                  # the head, with its bias


def read_header(path: Path) -> tuple[dict, dict[str, tuple[str, tuple[int, ...]]]]:
    """The safetensors header, checked against the file: (metadata, name -> (dtype, shape)).

    Layout: u64 little-endian header length N, N bytes of JSON, then the tensor bytes, each
    tensor at ``data_offsets`` [begin, end) of that data area.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(size - 8, MAX_HEADER_BYTES):
            raise CheckpointError(f"{path.name}: not a safetensors file, truncated or corrupt? (header length {n} "
                                  f"in a {size}-byte file)")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as exc:
            raise CheckpointError(f"{path.name}: the safetensors header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: the safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{path.name}: the header's __metadata__ must map names to strings")
    data_bytes, tensors = size - 8 - n, {}
    for name, t in header.items():
        ok = (isinstance(t, dict) and isinstance(t.get("dtype"), str) and t["dtype"] in _ITEMSIZE
              and isinstance(t.get("shape"), list)
              and all(type(d) is int and d >= 0 for d in t["shape"]) and isinstance(t.get("data_offsets"), list)
              and len(t["data_offsets"]) == 2 and all(type(o) is int for o in t["data_offsets"]))
        if not ok:
            raise CheckpointError(f"{path.name}: tensor {name!r} has a malformed header entry")
        begin, end = t["data_offsets"]
        nbytes = math.prod(t["shape"]) * _ITEMSIZE[t["dtype"]]
        if not 0 <= begin <= end <= data_bytes or end - begin != nbytes:
            raise CheckpointError(f"{path.name}: tensor {name!r} claims {t['shape']} {t['dtype']} in bytes "
                                  f"[{begin}, {end}) of a {data_bytes}-byte data area (truncated or corrupt?)")
        tensors[name] = (t["dtype"], tuple(t["shape"]))
    return meta, tensors


def _check_declared(path: Path, config: ModelConfig, tensors: dict) -> None:
    declared = declared_parameters(config)
    if declared > MAX_PARAMETERS:
        raise CheckpointError(f"{path.name}: the config declares {declared} parameters, over the limit of "
                              f"{MAX_PARAMETERS}")
    held = sum(math.prod(shape) for k, (_, shape) in tensors.items() if k.split(".", 1)[0] in _PARAM_MODULES)
    if held < declared:            # building the model would allocate more than the file backs
        raise CheckpointError(f"{path.name}: the config declares {declared} parameters but the file holds {held}; "
                              "weights are missing or do not match the config")


def read(path) -> tuple[ModelConfig, dict[str, np.ndarray], dict, dict[str, np.ndarray]]:
    """Parse and validate a checkpoint: (config, parameters, extra, extra_tensors).

    Errors name the file, never the server's directories.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file in it (e.g. {path / 'model.safetensors'})")
    if not path.is_file():
        raise CheckpointError(f"{path.name}: no such checkpoint file")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path.name}: {size} bytes is over the {MAX_CHECKPOINT_BYTES}-byte limit")
    meta, declared = read_header(path)              # nothing allocated past the header yet
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name}: not an {FORMAT} file (metadata format={meta.get('format')!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path.name}: unsupported checkpoint version {meta.get('format_version')!r}; "
                              f"this build reads version {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_json(meta.get("config", ""))
        extra = json.loads(meta.get("extra", "{}"))
    except (ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path.name}: {exc}") from None
    _check_declared(path, config, declared)
    try:
        with safe_open(str(path), framework="numpy") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: not a readable safetensors checkpoint (truncated or corrupt?): "
                              f"{exc}") from None
    params = {k: v for k, v in tensors.items() if k.split(".", 1)[0] in _PARAM_MODULES}
    extra_tensors = {k: v for k, v in tensors.items() if k not in params}
    return config, params, extra, extra_tensors


def load(path, device: str = "cpu", dtype=None) -> SequenceModel:
    """Rebuild the model a checkpoint describes, on ``device`` ("cpu", "gpu" or "auto")."""
    config, params, _, _ = read(path)
    if dtype is None:
        dtype = next(iter(params.values())).dtype if params else "float32"
    model = SequenceModel(config, device=device, dtype=dtype)
    try:
        model.load_state_dict(params)
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path.name}: weights do not match the config: {exc}") from None
    return model
