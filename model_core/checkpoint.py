"""Checkpoints: one safetensors file holding the weights and, in its metadata, the config.

Format ``rnn-serve-checkpoint`` version 1:

* tensors: the model's parameters by ``SequenceModel.parameters()`` name (``rnn.weight_ih_l0``,
  ...), plus optional extra tensors (e.g. optimiser moments under ``optim.``) for resuming;
* metadata (``__metadata__``, strings): ``format``, ``format_version``, ``config`` (JSON of
  ``ModelConfig``) and ``extra`` (JSON, free-form: training state, metrics).

safetensors never executes code on load, unlike pickle; files are size-checked before parsing.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from model_core.config import ModelConfig
from model_core.model import SequenceModel

FORMAT = "rnn-serve-checkpoint"
FORMAT_VERSION = 1
MAX_CHECKPOINT_BYTES = 2 * 1024**3


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


def read(path) -> tuple[ModelConfig, dict[str, np.ndarray], dict, dict[str, np.ndarray]]:
    """Parse and validate a checkpoint: (config, parameters, extra, extra_tensors)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file in it (e.g. {path / 'model.safetensors'})")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    size = path.stat().st_size
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path}: {size} bytes is over the {MAX_CHECKPOINT_BYTES}-byte limit")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors checkpoint (truncated or corrupt?): {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an {FORMAT} file (metadata format={meta.get('format')!r})")
    if meta.get("format_version") != str(FORMAT_VERSION):
        raise CheckpointError(f"{path}: unsupported checkpoint version {meta.get('format_version')!r}; "
                              f"this build reads version {FORMAT_VERSION}")
    try:
        config = ModelConfig.from_json(meta.get("config", ""))
        extra = json.loads(meta.get("extra", "{}"))
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    params = {k: v for k, v in tensors.items() if k.split(".", 1)[0] in ("embedding", "rnn", "head")}
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
        raise CheckpointError(f"{path}: weights do not match the config: {exc}") from None
    return model
