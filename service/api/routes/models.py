"""Model listing and metadata (v1)."""
from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import Registry
from service.errors import error_responses

router = APIRouter(prefix="/v1/models", tags=["models"], responses=error_responses(401))


@router.get("")
async def list_models(registry: Registry) -> dict:
    """Every model in the repository with its status and version."""
    return {"models": [{"name": e.name, "version": e.version, "status": e.status,
                        **({"task": e.config.task, "bidirectional": e.config.bidirectional} if e.model else {}),
                        **({"error": e.error} if e.error else {})}
                       for e in registry.entries()]}


@router.get("/{name}", responses=error_responses(404))
async def model_metadata(name: str, registry: Registry) -> dict:
    """Task, input spec, labels, vocabulary, cell, sizes, device and version of one model."""
    return registry.get(name).metadata()
