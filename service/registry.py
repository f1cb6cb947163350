"""The model repository: every ``<model_dir>/<name>/model.safetensors`` (our checkpoint) or
``<model_dir>/<name>/model.onnx`` (an ONNX graph, with an optional ``model-card.json``) becomes a
served model, as version 1; Triton's layout with integer version folders and a version policy
(``service.model_versions``) serves the versions the policy selects.

Models are loaded in the app's lifespan. A model that fails to load is reported (status
``failed`` with the reason) and does not stop the others from serving. ONNX graphs run on our
own runtime behind ``OnnxSequenceModel``, which every endpoint serves like a checkpoint.

Each entry has a ``number`` (the version folder's integer) and a ``version``: the content hash
(with the number mixed in for version folders), a label that identifies the exact weights. Sessions record
the hash, so a reload that changes a file never changes a live session's model.
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
from model_core.onnx.errors import OnnxLoadError, WeightFormatError
from model_core.onnx.sequence_model import OnnxSequenceModel
from model_core.served import ServedModel
from service.errors import NotFound, Unavailable
from service.model_card import CARD, read_card
from service.model_versions import VersionPolicy, read_folder_config, version_folders, version_number

log = logging.getLogger("service.registry")
CHECKPOINT = "model.safetensors"
ONNX = "model.onnx"
FORMATS = {CHECKPOINT: "rnn-serve-checkpoint", ONNX: "onnx"}


@dataclass
class ModelEntry:
    name: str
    path: Path
    version: str = ""                   # the content hash: a label for the exact weights
    number: int = 1                     # the version number (Triton's version folder; 1 when flat)
    status: str = "loading"             # loading | ready | failed
    error: str | None = None
    model: ServedModel | None = None
    loaded_at: float = field(default_factory=time.time)
    format: str = FORMATS[CHECKPOINT]

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def metadata(self) -> dict:
        out = {"name": self.name, "version": self.version, "version_number": self.number, "status": self.status,
               "format": self.format}
        if self.error:
            out["error"] = self.error
        if self.model is None:
            return out
        c = self.config
        out.update({
            "task": c.task, "cell": c.cell, "input_encoding": c.input_encoding, "input_size": c.input_size,
            "hidden_size": c.hidden_size, "num_layers": c.num_layers, "bidirectional": c.bidirectional,
            "output_size": c.output_size, "output": c.output, "labels": list(c.labels) if c.labels else None,
            "vocab_size": len(c.vocab) if c.vocab else None, "vocab": list(c.vocab) if c.vocab else None,
            "device": self.model.device, "dtype": self.model.dtype.name, "weights": self.model.weight_format,
            "parameters": self.model.num_parameters(),
            "metadata": c.metadata,
        })
        out.update(self.model.describe())                 # an ONNX graph's opset, inputs / outputs and card
        return out


def _version_of(*paths: Path, number: int | None = None) -> str:
    """A content hash of the model's files (an ONNX graph and its card together): reloading
    unchanged files keeps the version, any change gives a new one. In Triton's layout the version
    number is hashed too, so two version folders holding the same files still have distinct labels."""
    digest = hashlib.sha256(b"" if number is None else f"version {number}\0".encode())
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
    if not folder.is_dir():
        return False
    try:
        return bool(version_folders(folder, tuple(FORMATS)))
    except ValueError:
        return True                                    # ambiguous: listed, and reported as failed


def _card(folder: Path, model_folder: Path) -> Path:
    """A version folder's own card, else the model folder's (shared by its versions)."""
    own = folder / CARD
    return own if own.is_file() or folder == model_folder else model_folder / CARD


def _files(path: Path, card: Path) -> list[Path]:
    """What the model is made of: the checkpoint, or the ONNX graph and its card if it has one."""
    return [path, card] if path.name == ONNX and card.is_file() else [path]


def _load_onnx(folder: Path, card: Path, device: str, weights: str = "float32") -> OnnxSequenceModel:
    """An ONNX graph with its card, or with the metadata our exporter writes when there is no card.
    WeightFormatError passes through: the graph loads with float32 weights."""
    binding = read_card(card) if card.is_file() else None
    try:
        return OnnxSequenceModel.load(folder / ONNX, binding, device=device, weights=weights)
    except WeightFormatError:
        raise
    except OnnxLoadError as exc:           # the graph itself: unreadable, unsafe or unsupported
        raise ValueError(f"{ONNX}: {exc}") from None
    except ValueError as exc:              # a card that does not fit the graph names its field
        where = CARD if binding is not None else f"{ONNX} (no {CARD})"
        raise ValueError(f"{where}: {exc}") from None


def _warm_up(model: ServedModel) -> None:
    """Two tiny steps before the model is ready, so compiled kernels (Numba's cache, CuPy's
    kernels) load now rather than on the first user's keystroke."""
    c = model.config
    if c.uses_tokens:
        x = np.zeros((2, 2), dtype=np.int64)
    else:
        x = np.zeros((2, 2, c.input_size), dtype=np.float32)
    model.forward_steps(x, model.init_state(2), lengths=np.array([2, 1]))


class ModelRegistry:
    """The served versions of each model, plus older versions that live sessions may still be using.

    ``get``/``ready`` give a model's current entry (its highest served version) or, with a
    version number, that version. Reloading reads the files again: an unchanged file keeps its
    loaded model, a changed one becomes a new entry, and the replaced entries stay for the
    sessions that started on them (up to ``keep_versions`` per model).
    """

    def __init__(self, model_dir: Path, device: str = "cpu", keep_versions: int = 3, weights: str = "float32"):
        self.model_dir, self.device, self.keep_versions = Path(model_dir), device, keep_versions
        self.weights = weights                    # Settings.weights: what recurrent layers and nodes read
        # what "auto" became on this host, for the logs and /v2 (an explicit "gpu" stays as asked: its
        # models fail to load with the reason if no GPU is usable)
        self.device_in_use = resolve_device(device) if device == "auto" else device
        self._models: dict[str, ModelEntry] = {}                  # current: highest ready version, or the failure
        self._served: dict[str, dict[int, ModelEntry]] = {}       # what the version policy selects, by number
        self._policies: dict[str, VersionPolicy] = {}
        self._retired: dict[str, dict[str, ModelEntry]] = {}      # replaced entries by hash, oldest first
        self._unloaded: set[str] = set()
        self._lock = threading.Lock()
        self._release_listeners: list = []

    def on_release(self, listener) -> None:
        """Call ``listener()`` (from any thread) after a call that may have dropped model versions."""
        self._release_listeners.append(listener)

    def _released(self) -> None:
        for listener in self._release_listeners:
            listener()

    def loaded_versions(self) -> set[tuple[str, str]]:
        """(name, version hash) of every entry still held: served, or retired and kept for sessions."""
        with self._lock:
            served = {(e.name, e.version) for es in self._served.values() for e in es.values() if e.status == "ready"}
            return served | {(name, v) for name, kept in self._retired.items() for v in kept}

    def load_all(self) -> None:
        if not self.model_dir.is_dir():
            log.error("model directory %s does not exist", self.model_dir)
            return
        for name in self.repository_names():
            self.load(name)

    def repository_names(self) -> list[str]:
        """Every model folder in the repository, loaded or not."""
        if not self.model_dir.is_dir():
            return []
        return sorted(p.name for p in self.model_dir.iterdir() if _is_model_dir(p))

    def _load_version(self, name: str, number: int, folder: Path, model_folder: Path, previous: ModelEntry | None):
        entry = ModelEntry(name=name, path=folder / CHECKPOINT, number=number)
        try:
            path = _model_file(folder)
            if path is None:
                raise FileNotFoundError(f"{name} has no {CHECKPOINT} or {ONNX}")
            card = _card(folder, model_folder)
            entry.path, entry.format = path, FORMATS[path.name]
            entry.version = _version_of(*_files(path, card), number=None if folder == model_folder else number)
            if previous is not None and previous.status == "ready" and previous.version == entry.version:
                return previous                                # unchanged files: keep the loaded model
            entry.model = (self._onnx(name, folder, card) if path.name == ONNX
                           else self._freeze(name, model_core.load(path, device=self.device)))
            _warm_up(entry.model)
            entry.status = "ready"
            log.info("loaded model %s version %d (%s) on %s", name, number, entry.version, entry.model.device)
        except Exception as exc:  # one bad file must not take the others down
            entry.status, entry.error = "failed", str(exc)
            log.error("model %s version %d failed to load: %s", name, number, exc)
        return entry

    def _onnx(self, name: str, folder: Path, card: Path) -> OnnxSequenceModel:
        """An ONNX graph to serve, its LSTM and GRU nodes reading ``self.weights`` where they can."""
        try:
            return _load_onnx(folder, card, self.device, self.weights)
        except WeightFormatError as exc:
            log.warning("model %s stays float32 (RNN_SERVE_WEIGHTS=%s): %s", name, self.weights, exc)
            return _load_onnx(folder, card, self.device)

    def _freeze(self, name: str, model):
        """A checkpoint frozen to serve (never trains), reading ``self.weights`` where its layers can."""
        problem = model.rnn.bf16_problem() if self.weights == "bfloat16" else None
        if problem:
            log.warning("model %s stays float32 (RNN_SERVE_WEIGHTS=bfloat16): %s", name, problem)
        return model.freeze(weights="float32" if problem else self.weights)

    def load(self, name: str) -> ModelEntry:
        """Load (or reload) the versions the model's policy selects; returns the highest one tried."""
        folder = self.model_dir / name
        try:
            policy = read_folder_config(folder).version_policy
            folders = version_folders(folder, tuple(FORMATS))
            if not folders:
                raise FileNotFoundError(f"{folder} has no {CHECKPOINT} or {ONNX}")
            numbers = policy.select(list(folders))
            if not numbers:
                raise ValueError(f"version policy {policy.as_triton()} selects none of the versions {sorted(folders)}")
        except Exception as exc:
            entry = ModelEntry(name=name, path=folder / CHECKPOINT, status="failed", error=str(exc))
            log.error("model %s failed to load: %s", name, exc)
            with self._lock:
                current = self._models.get(name)
                if current is None or current.status != "ready":  # a bad new file never replaces a good model
                    self._models[name], self._served[name] = entry, {}
                    self._unloaded.discard(name)
            return entry
        old = self._served.get(name, {})
        tried = {n: self._load_version(name, n, folders[n], folder, old.get(n)) for n in numbers}
        served = {n: old[n] if e.status != "ready" and n in old and old[n].status == "ready" else e
                  for n, e in tried.items()}
        with self._lock:
            kept = {id(e) for e in served.values()}
            for prev in old.values():
                if prev.status == "ready" and id(prev) not in kept:
                    self._retire(prev)
            self._served[name], self._policies[name] = served, policy
            ready = [e for e in served.values() if e.status == "ready"]
            self._models[name] = ready[-1] if ready else served[numbers[-1]]
            self._unloaded.discard(name)
        self._released()
        return tried[numbers[-1]]

    def _retire(self, entry: ModelEntry) -> None:
        retired = self._retired.setdefault(entry.name, {})
        retired.pop(entry.version, None)
        retired[entry.version] = entry
        while len(retired) > self.keep_versions:
            retired.pop(next(iter(retired)))

    def unload(self, name: str) -> None:
        """Stop serving every version of ``name`` (sessions on it end); ``load`` brings it back."""
        self.get(name)
        with self._lock:
            self._models.pop(name, None)
            self._served.pop(name, None)
            self._retired.pop(name, None)
            self._unloaded.add(name)
        log.info("unloaded model %s", name)
        self._released()

    def reload(self, name: str | None = None) -> list[ModelEntry]:
        """Reload one model, or rescan the repository (new models appear; current ones reload)."""
        if name is not None:
            if name not in self._models and name not in self.repository_names():
                self.get(name)                                   # the usual 404, naming what exists
            return [self.load(name)]
        present = self.repository_names()
        with self._lock:                         # a model whose folder was deleted is no longer served
            for gone in set(self._models) - set(present):
                self._models.pop(gone)
                self._served.pop(gone, None)
                self._retired.pop(gone, None)
                log.info("model %s dropped: its folder is gone", gone)
        self._released()
        return [self.load(n) for n in present]

    def version(self, name: str, version: str) -> ModelEntry:
        """The entry a session started on (``version`` is its content hash), while it is kept."""
        for entry in self._served.get(name, {}).values():
            if entry.version == version and entry.status == "ready":
                return entry
        entry = self._retired.get(name, {}).get(version)
        if entry is None:
            raise Unavailable(f"model {name!r} version {version!r} is no longer loaded; start a new session",
                              status=409, code="model_version_retired")
        return entry

    def served(self, name: str) -> list[ModelEntry]:
        """The versions the policy selects (ready or failed), by ascending number."""
        return [e for _, e in sorted(self._served.get(name, {}).items())]

    def policy(self, name: str) -> VersionPolicy:
        return self._policies.get(name) or VersionPolicy()

    def is_unloaded(self, name: str) -> bool:
        return name in self._unloaded

    def names(self) -> list[str]:
        return sorted(self._models)

    def entries(self) -> list[ModelEntry]:
        return [self._models[n] for n in self.names()]

    def get(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            why = " (unloaded: load it again to serve it)" if name in self._unloaded else ""
            raise NotFound(f"unknown model {name!r}{why}; available: {', '.join(self.names()) or 'none'}")
        return entry

    def ready(self, name: str, version: str | int | None = None) -> ModelEntry:
        """The current entry, or the served entry with that version number; 404 names the versions served."""
        entry = self.get(name)
        if version not in (None, ""):
            served = self._served.get(name, {})
            number = version_number(version)
            entry = served.get(number) if number is not None else None
            if entry is None:
                have = ", ".join(str(n) for n in sorted(served)) or "none"
                raise NotFound(f"model {name!r} has no version {str(version)!r}; versions: {have}")
        if entry.status != "ready":
            raise Unavailable(f"model {name!r} is not ready ({entry.status}{': ' + entry.error if entry.error else ''})")
        return entry

    @property
    def all_ready(self) -> bool:
        return bool(self._models) and all(e.status == "ready" for e in self._models.values())
