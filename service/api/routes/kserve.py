"""The Open Inference Protocol (KServe v2) over HTTP, with Triton's extensions: model metadata,
readiness, inference, model configuration and statistics, for a model's current version or any
served version (``/versions/{v}``). The work is in ``service.openinference``; bodies are read and
written by ``service.api.v2_body``.
"""
from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from service.api import v2_body
from service.api.deps import AppSettings, Registry
from service.errors import ServiceError, error_responses
from service.openinference.infer import v2_error
from service.openinference.model_config import model_config
from service.openinference.tensors import model_metadata

router = APIRouter(prefix="/v2/models", tags=["kserve-v2"],
                   responses=error_responses(401, v2=True))


class ModelReadiness(BaseModel):
    name: str
    ready: bool


def _entry(registry, name: str, version: str | None):
    try:
        return registry.ready(name, version)
    except ServiceError as exc:
        raise v2_error(exc) from None


@router.get("/stats")
async def all_statistics(request: Request, registry: Registry) -> dict:
    """Triton's statistics extension for every served model version."""
    return request.app.state.v2.stats.report(registry)


@router.get("/{name}/stats", responses=error_responses(404, v2=True))
@router.get("/{name}/versions/{version}/stats", responses=error_responses(404, v2=True))
async def statistics(name: str, request: Request, registry: Registry, version: str | None = None) -> dict:
    """Success and failure counts, queue and compute durations (cumulative ns), per version."""
    return request.app.state.v2.stats.report(registry, name, version)


@router.get("/{name}/config", responses=error_responses(404, 503, v2=True))
@router.get("/{name}/versions/{version}/config", responses=error_responses(404, 503, v2=True))
async def config(name: str, registry: Registry, settings: AppSettings, version: str | None = None) -> dict:
    """Triton's model configuration, from the model and the settings the service runs with."""
    return model_config(_entry(registry, name, version), registry.policy(name).as_triton(), settings)


_READY = {503: {"model": ModelReadiness, "description": "known but not ready"}, **error_responses(404, v2=True)}


@router.get("/{name}/ready", response_model=ModelReadiness, responses=_READY)
@router.get("/{name}/versions/{version}/ready", response_model=ModelReadiness, responses=_READY)
async def ready(name: str, registry: Registry, version: str | None = None):
    try:
        ok = registry.ready(name, version) is not None
    except ServiceError as exc:
        if exc.status == 404:
            raise v2_error(exc) from None
        ok = False
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)


@router.get("/{name}", responses=error_responses(404, 503, v2=True))
@router.get("/{name}/versions/{version}", responses=error_responses(404, 503, v2=True))
async def metadata(name: str, registry: Registry, version: str | None = None) -> dict:
    """Tensor names, datatypes and shapes; ``parameters`` carry the vocabulary and labels."""
    entry = _entry(registry, name, version)
    return model_metadata(entry, [str(e.number) for e in registry.served(name) if e.status == "ready"])


_INFER_ERRORS = error_responses(400, 404, 409, 410, 413, 415, 429, 503, v2=True)


@router.post("/{name}/infer", responses=_INFER_ERRORS)
@router.post("/{name}/versions/{version}/infer", responses=_INFER_ERRORS)
async def infer(name: str, request: Request, version: str | None = None) -> Response:
    """JSON, or Triton's binary tensor data; gzip/deflate bodies; see ``service.api.v2_body``."""
    arrival = time.perf_counter_ns()
    state = request.app.state
    _entry(state.registry, name, version)               # an unknown model is a 404 before its body is read
    limit = state.settings.max_request_bytes
    body = v2_body.decompress(await request.body(), request.headers.get("content-encoding"), limit)
    header, binary = v2_body.split(body, request.headers.get(v2_body.HEADER_LENGTH))
    req = v2_body.decode(name, version, header, binary, max_elements=limit, arrival_ns=arrival)
    resp = await state.v2.infer(req)
    content, headers = v2_body.encode(req, resp)
    content = v2_body.compress(content, headers, request.headers.get("accept-encoding"))
    return Response(content, headers=headers)
