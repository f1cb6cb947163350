"""Triton's model repository extension: the index, load and unload, independent of transport.

``index`` gives Triton's JSON form (a list of ``{"name", "version", "state", "reason"}``); load
and unload run the registry's blocking file work in a thread. Unload refuses while sessions are
live on the model (their state would be lost) unless ``force`` is set; forced, those sessions
end with a clear 409 on their next step.
"""
from __future__ import annotations

import asyncio

from service.errors import NotFound, ServiceError
from service.registry import ModelRegistry
from service.sessions.store import SessionStore


class RepositoryError(ServiceError):
    status, code = 400, "repository_error"


def index(registry: ModelRegistry, ready_only: bool = False) -> list[dict]:
    """Every model in the repository folder, one row per served version (unloaded models: one row)."""
    rows = []
    for name in sorted(set(registry.repository_names()) | set(registry.names())):
        served = registry.served(name)
        if not served:
            why = "unloaded" if registry.is_unloaded(name) else (
                registry.get(name).error if name in registry.names() else "not loaded")
            rows.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": why or "not loaded"})
            continue
        for e in served:
            ready = e.status == "ready"
            row = {"name": name, "version": str(e.number), "state": "READY" if ready else "UNAVAILABLE"}
            row["reason"] = "" if ready else (e.error or e.status)
            rows.append(row)
    return [r for r in rows if r["state"] == "READY"] if ready_only else rows


async def load(registry: ModelRegistry, name: str) -> None:
    """Load (or reload) a model from the repository folder; an error says why it did not load."""
    if name not in registry.repository_names():
        raise NotFound(f"no model {name!r} in the repository; it has: {', '.join(registry.repository_names()) or 'none'}")
    entry = await asyncio.to_thread(registry.load, name)
    current = registry.get(name)
    if current.status != "ready":
        raise RepositoryError(f"failed to load {name!r}: {current.error or entry.error}")
    if entry.status != "ready":                                  # a bad new file; the old version keeps serving
        raise RepositoryError(f"failed to load {name!r} version {entry.number}: {entry.error}; "
                              "the loaded version keeps serving")


async def unload(registry: ModelRegistry, store: SessionStore, name: str, force: bool = False) -> None:
    registry.get(name)
    live = await store.count_model(name)
    if live and not force:
        raise RepositoryError(f"model {name!r} has {live} live session(s); end them first, or unload with "
                              "parameters.force=true (they would end)", status=409, code="model_in_use")
    registry.unload(name)
