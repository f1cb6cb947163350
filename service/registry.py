"""The model repository: every ``<model_dir>/<name>/model.safetensors`` becomes a served model.

Models are loaded in the app's lifespan. A model that fails to load is reported (status
``failed`` with the reason) and does not stop the others from serving.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import model_core
from model_core.config import ModelConfig
from model_core.model import SequenceModel
from service.errors import NotFound, Unavailable

log = logging.getLogger("service.registry")
CHECKPOINT = "model.safetensors"


@dataclass
class ModelEntry:
    name: str
    path: Path
    version: str = ""
    status: str = "loading"             # loading | ready | failed
    error: str | None = None
    model: SequenceModel | None = None
    loaded_at: float = field(default_factory=time.time)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def metadata(self) -> dict:
        out = {"name": self.name, "version": self.version, "status": self.status, "format": "rnn-serve-checkpoint"}
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
        return out


def _version_of(path: Path) -> str:
    """A content hash: reloading an unchanged file keeps the version, a changed one gets a new one."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


class ModelRegistry:
    """Current entry per model, plus the versions that live sessions may still be using.

    Reloading loads the file again; a changed file becomes a new current version while the
    previous ones stay for the sessions that started on them (up to ``keep_versions`` each).
    """

    def __init__(self, model_dir: Path, device: str = "cpu", keep_versions: int = 3):
        self.model_dir, self.device, self.keep_versions = Path(model_dir), device, keep_versions
        self._models: dict[str, ModelEntry] = {}
        self._versions: dict[str, dict[str, ModelEntry]] = {}
        self._lock = threading.Lock()

    def load_all(self) -> None:
        if not self.model_dir.is_dir():
            log.error("model directory %s does not exist", self.model_dir)
            return
        for sub in sorted(p for p in self.model_dir.iterdir() if (p / CHECKPOINT).is_file()):
            self.load(sub.name)

    def load(self, name: str) -> ModelEntry:
        path = self.model_dir / name / CHECKPOINT
        entry = ModelEntry(name=name, path=path)
        try:
            entry.version = _version_of(path)
            entry.model = model_core.load(path, device=self.device)
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
        return [self.load(p.name) for p in sorted(self.model_dir.iterdir()) if (p / CHECKPOINT).is_file()]

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
