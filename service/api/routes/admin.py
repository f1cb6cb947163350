"""Model repository administration: reload without dropping live sessions."""
from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import Registry

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.post("/models/reload")
def reload_all(registry: Registry) -> dict:
    """Rescan the model directory: new models appear, changed files become new versions."""
    return {"models": [e.metadata() for e in registry.reload()]}


@router.post("/models/{name}/reload")
def reload_one(name: str, registry: Registry) -> dict:
    """Reload one model. Live sessions keep the version they started on; new sessions get the new one.

    A file that fails to load is reported and the current version keeps serving.
    """
    (entry,) = registry.reload(name)
    current = registry.get(name)
    return {"loaded": entry.metadata(), "current_version": current.version}
