"""The model repository: every ``<model_dir>/<name>/model.safetensors`` (our checkpoint) or
``<model_dir>/<name>/model.onnx`` (an ONNX graph, with an optional ``model-card.json``) becomes a
served model.

Models are loaded in the app's lifespan. A model that fails to load is reported (status
``failed`` with the reason) and does not stop the others from serving. ONNX graphs run on our
own runtime behind ``OnnxSequenceModel``, which every endpoint serves like a checkpoint.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import model_core
from model_core.backend import resolve_device
from model_core.config import ModelConfig
from model_core.model import SequenceModel
from model_core.onnx.errors import OnnxLoadError
from model_core.onnx.served_model import OnnxSequenceModel
from service.errors import NotFound, Unavailable
from service.model_card import CARD, read_card

log = logging.getLogger("service.registry")
CHECKPOINT = "model.safetensors"
ONNX = "model.onnx"
FORMATS = {CHECKPOINT: "rnn-serve-checkpoint", ONNX: "onnx"}


@dataclass
class ModelEntry:
    name: str
    path: Path
    version: str = ""
    status: str = "loading"             # loading | ready | failed
    error: str | None = None
    model: SequenceModel | OnnxSequenceModel | None = None
    loaded_at: float = field(default_factory=time.time)
    format: str = FORMATS[CHECKPOINT]

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def metadata(self) -> dict:
        out = {"name": self.name, "version": self.version, "status": self.status, "format": self.format}
        if self.error:
            out["error"] = self.error
        if self.model is None:
            return out
        c = self.config
        out.update({
            "task": c.task, "cell": c.cell, "input_encoding": c.input_encoding, "input_size": c.input_size,
            "hidden_size": c.hidden_size, "num_layers": c.num_layers, "bidirectional": c.bidirectional,
            "output_size": c.output_size, "output": c.output, "labels": list(c.labels) if c.labels else None,
            "vocab_size": len(c.vocab) if c.vocab else None, "vocab": "".join(c.vocab) if c.vocab and all(len(t) == 1 for t in c.vocab) else (list(c.vocab) if c.vocab else None),
            "device": self.model.device, "dtype": self.model.dtype.name, "parameters": self.model.num_parameters(),
            "metadata": c.metadata,
        })
        if isinstance(self.model, OnnxSequenceModel):
            out.update(self.model.describe())             # opset, graph inputs / outputs, the card's bindings
        return out


def _version_of(*paths: Path) -> str:
    """A content hash of the model's files (an ONNX graph and its card together): reloading
    unchanged files keeps the version, any change gives a new one."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0" + path.name.encode())            # a card's bytes never pass for the graph's
    return digest.hexdigest()[:12]


def _model_file(folder: Path) -> Path | None:
    """The folder's model file; a folder holding both kinds is ambiguous and fails to load."""
    found = [folder / n for n in FORMATS if (folder / n).is_file()]
    if len(found) > 1:
        raise ValueError(f"{folder.name} holds both {CHECKPOINT} and {ONNX}; keep one")
    return found[0] if found else None


def _is_model_dir(folder: Path) -> bool:
    return folder.is_dir() and any((folder / n).is_file() for n in FORMATS)


def _files(path: Path) -> list[Path]:
    """What the model is made of: the checkpoint, or the ONNX graph and its card if it has one."""
    card = path.parent / CARD
    return [path, card] if path.name == ONNX and card.is_file() else [path]


def _load_onnx(folder: Path, device: str) -> OnnxSequenceModel:
    """An ONNX graph with its card, or with the metadata our exporter writes when there is no card."""
    card = folder / CARD
    binding = read_card(card) if card.is_file() else None
    try:
        return OnnxSequenceModel.load(folder / ONNX, binding, device=device)
    except OnnxLoadError as exc:           # the graph itself: unreadable, unsafe or unsupported
        raise ValueError(f"{ONNX}: {exc}") from None
    except ValueError as exc:              # a card that does not fit the graph names its field
        where = CARD if binding is not None else f"{ONNX} (no {CARD})"
        raise ValueError(f"{where}: {exc}") from None


def _warm_up(model) -> None:
    """Two tiny steps before the model is ready, so compiled kernels (Numba's cache, CuPy's
    kernels) load now rather than on the first user's keystroke."""
    c = model.config
    if c.uses_tokens:
        x = np.zeros((2, 2), dtype=np.int64)
    else:
        x = np.zeros((2, 2, c.input_size), dtype=np.float32)
    model.forward_steps(x, model.init_state(2), lengths=np.array([2, 1]))


class ModelRegistry:
    """Current entry per model, plus the versions that live sessions may still be using.

    Reloading loads the file again; a changed file becomes a new current version while the
    previous ones stay for the sessions that started on them (up to ``keep_versions`` each).
    """

    def __init__(self, model_dir: Path, device: str = "cpu", keep_versions: int = 3):
        self.model_dir, self.device, self.keep_versions = Path(model_dir), device, keep_versions
        # what "auto" became on this host, for the logs and /v2 (an explicit "gpu" stays as asked: its
        # models fail to load with the reason if no GPU is usable)
        self.device_in_use = resolve_device(device) if device == "auto" else device
        self._models: dict[str, ModelEntry] = {}
        self._versions: dict[str, dict[str, ModelEntry]] = {}
        self._lock = threading.Lock()

    def load_all(self) -> None:
        if not self.model_dir.is_dir():
            log.error("model directory %s does not exist", self.model_dir)
            return
        for sub in sorted(p for p in self.model_dir.iterdir() if _is_model_dir(p)):
            self.load(sub.name)

    def load(self, name: str) -> ModelEntry:
        folder = self.model_dir / name
        entry = ModelEntry(name=name, path=folder / CHECKPOINT)
        try:
            path = _model_file(folder)
            if path is None:
                raise FileNotFoundError(f"{folder} has no {CHECKPOINT} or {ONNX}")
            entry.path, entry.format = path, FORMATS[path.name]
            entry.version = _version_of(*_files(path))
            entry.model = _load_onnx(folder, self.device) if path.name == ONNX else model_core.load(path, device=self.device)
            _warm_up(entry.model)
            entry.status = "ready"
            log.info("loaded model %s version %s on %s", name, entry.version, entry.model.device)
        except Exception as exc:  # one bad file must not take the others down
            entry.status, entry.error = "failed", str(exc)
            log.error("model %s failed to load: %s", name, exc)
        with self._lock:
            current = self._models.get(name)
            if entry.status != "ready" and current is not None and current.status == "ready":
                return entry                                   # a bad new file never replaces a good model
            self._models[name] = entry
            if entry.status == "ready":
                versions = self._versions.setdefault(name, {})
                versions.pop(entry.version, None)
                versions[entry.version] = entry
                while len(versions) > self.keep_versions:
                    versions.pop(next(iter(versions)))
        return entry

    def reload(self, name: str | None = None) -> list[ModelEntry]:
        """Reload one model, or rescan the repository (new models appear; current ones reload)."""
        if name is not None:
            self.get(name)
            return [self.load(name)]
        if not self.model_dir.is_dir():
            return []
        return [self.load(p.name) for p in sorted(self.model_dir.iterdir()) if _is_model_dir(p)]

    def version(self, name: str, version: str) -> ModelEntry:
        """The entry a session started on, while it is kept."""
        entry = self._versions.get(name, {}).get(version)
        if entry is None:
            raise Unavailable(f"model {name!r} version {version!r} is no longer loaded; start a new session",
                              status=409, code="model_version_retired")
        return entry

    def names(self) -> list[str]:
        return sorted(self._models)

    def entries(self) -> list[ModelEntry]:
        return [self._models[n] for n in self.names()]

    def get(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"unknown model {name!r}; available: {', '.join(self.names()) or 'none'}")
        return entry

    def ready(self, name: str) -> ModelEntry:
        entry = self.get(name)
        if entry.status != "ready":
            raise Unavailable(f"model {name!r} is not ready ({entry.status}{': ' + entry.error if entry.error else ''})")
        return entry

    @property
    def all_ready(self) -> bool:
        return bool(self._models) and all(e.status == "ready" for e in self._models.values())
