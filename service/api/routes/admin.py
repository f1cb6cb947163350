"""Model repository administration: reload without dropping live sessions."""
from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.deps import Registry
from service.errors import error_responses

# 404 also when no admin keys are configured: the routes are off
router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=error_responses(401, 404))


def _gauge(request: Request, entries) -> None:
    """Failed loads show in the metrics as well as in /v1/models."""
    for e in entries:
        request.app.state.metrics.model_loaded.labels(e.name, e.version).set(1 if e.status == "ready" else 0)


@router.post("/models/reload")
def reload_all(registry: Registry, request: Request) -> dict:
    """Rescan the model directory: new models appear, changed files become new versions, models
    whose folder was deleted are dropped."""
    entries = registry.reload()
    _gauge(request, entries)
    return {"models": [e.metadata() for e in entries]}


@router.post("/models/{name}/reload")
def reload_one(name: str, registry: Registry, request: Request) -> dict:
    """Reload one model. Live sessions keep the version they started on; new sessions get the new one.

    A file that fails to load is reported and the current version keeps serving.
    """
    (entry,) = registry.reload(name)
    _gauge(request, [entry])
    current = registry.get(name)
    return {"loaded": entry.metadata(), "current_version": current.version}
