"""Triton's model repository extension over HTTP: the index, load and unload (``service.openinference.repository``)."""
from __future__ import annotations

from fastapi import APIRouter, Request

from service.api import v2_body
from service.api.deps import Registry, Sessions
from service.errors import error_responses
from service.openinference import repository

router = APIRouter(prefix="/v2/repository", tags=["kserve-v2"],
                   responses=error_responses(400, 401, v2=True))


@router.post("/index")
async def index(request: Request, registry: Registry) -> list[dict]:
    """Every model in the repository with its versions and state; ``{"ready": true}`` lists only ready ones."""
    ready = v2_body.optional_json(await request.body()).get("ready", False)
    if not isinstance(ready, bool):
        raise v2_body.BodyError("'ready' must be a boolean")
    return repository.index(registry, ready_only=ready)


def _parameters(body: bytes) -> dict:
    params = v2_body.optional_json(body).get("parameters") or {}
    if not isinstance(params, dict):
        raise v2_body.BodyError("'parameters' must be an object")
    if "config" in params or any(k.startswith("file:") for k in params):
        raise v2_body.BodyError("loading with a config override or uploaded files is not supported; "
                                "put the model in the repository folder and load it by name")
    return params


@router.post("/models/{name}/load", responses=error_responses(404, v2=True))
async def load(name: str, request: Request, registry: Registry) -> dict:
    """Load or reload a model's versions from the repository folder."""
    _parameters(await request.body())
    await repository.load(registry, name)
    return {}


@router.post("/models/{name}/unload", responses=error_responses(404, 409, v2=True))
async def unload(name: str, request: Request, registry: Registry, sessions: Sessions) -> dict:
    """Stop serving a model; refused while sessions are live unless ``parameters.force`` is true."""
    force = _parameters(await request.body()).get("force", False)
    if not isinstance(force, bool):
        raise v2_body.BodyError("parameters.force must be a boolean")
    await repository.unload(registry, sessions.store, name, force=force)
    return {}
