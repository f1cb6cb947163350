"""Model versions: Triton's repository layout and version policy, read the same way on every replica.

A model folder is either flat (the model file directly inside: version 1) or Triton's layout,
integer version folders each holding one model file::

    models/<name>/model.safetensors            # flat: version 1
    models/<name>/1/model.onnx                 # Triton's layout: versions 1 and 3
    models/<name>/3/model.onnx
    models/<name>/config.json                  # optional: {"version_policy": {"latest": {"num_versions": 2}}}

``config.json`` takes the ``version_policy`` of Triton's model configuration, in its JSON form:
``{"latest": {"num_versions": n}}`` (the default, n = 1), ``{"all": {}}`` or
``{"specific": {"versions": [1, 3]}}``. Version numbers come from folder names only, never from
load order, so replicas reading the same files serve the same numbers.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.request_limits import INT64_MAX, ascii_int64

MODEL_CONFIG = "config.json"
MAX_CONFIG_BYTES = 64 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Latest(_Strict):
    num_versions: int = Field(1, ge=1, description="serve the n highest version numbers")


class Specific(_Strict):
    versions: list[int] = Field(min_length=1, description="serve exactly these version numbers")


class VersionPolicy(_Strict):
    """Exactly one of ``latest``, ``all``, ``specific`` (Triton's ``ModelVersionPolicy``)."""

    latest: Latest | None = None
    all: dict | None = None
    specific: Specific | None = None

    @model_validator(mode="after")
    def _one(self):
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) > 1:
            raise ValueError(f"choose one of latest, all, specific; got {chosen}")
        if self.all:
            raise ValueError("'all' takes no fields: write {\"all\": {}}")
        return self

    def select(self, available: list[int]) -> list[int]:
        """The version numbers to serve, ascending."""
        if self.all is not None:
            return sorted(available)
        if self.specific is not None:
            return sorted(set(self.specific.versions) & set(available))
        n = self.latest.num_versions if self.latest else 1
        return sorted(available)[-n:]

    def as_triton(self) -> dict:
        if self.all is not None:
            return {"all": {}}
        if self.specific is not None:
            return {"specific": {"versions": sorted(self.specific.versions)}}
        return {"latest": {"num_versions": self.latest.num_versions if self.latest else 1}}


class ModelFolderConfig(_Strict):
    """``models/<name>/config.json``: only what this service reads, so a typo is an error, not ignored."""

    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)


def read_folder_config(folder: Path) -> ModelFolderConfig:
    path = folder / MODEL_CONFIG
    if not path.is_file():
        return ModelFolderConfig()
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ValueError(f"{MODEL_CONFIG} is over {MAX_CONFIG_BYTES} bytes")
    try:
        return ModelFolderConfig.model_validate(json.loads(path.read_bytes()))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{MODEL_CONFIG} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(f"field '{'.'.join(map(str, e['loc'])) or '(config)'}': {e['msg']}" for e in exc.errors()[:5])
        raise ValueError(f"{MODEL_CONFIG}: {problems}") from None


def version_number(version: str | int) -> int | None:
    """A version as Triton numbers them: a non-negative int64 (as text, in ASCII digits), else None."""
    if isinstance(version, int):
        return version if 0 <= version <= INT64_MAX else None
    return ascii_int64(str(version))


def version_folders(folder: Path, model_files: tuple[str, ...]) -> dict[int, Path]:
    """Version number -> the folder holding that version's model file.

    Flat (a model file directly in ``folder``) is version 1; integer sub-folders with a model
    file are Triton's layout. Both at once is ambiguous and refused.
    """
    flat = any((folder / n).is_file() for n in model_files)
    named = ((version_number(p.name), p) for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else ()
    numbered = {n: p for n, p in named if n is not None and any((p / f).is_file() for f in model_files)}
    if flat and numbered:
        raise ValueError(f"{folder.name} holds a model file and version folders {sorted(numbered)}; use one layout")
    return {1: folder} if flat else dict(sorted(numbered.items()))
