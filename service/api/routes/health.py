"""Health and server metadata, on the KServe v2 / Triton paths so standard probes work."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from service.api.deps import Registry, Sessions
from service.errors import ServiceError, error_responses
from service.openinference import server
from service.readiness import not_ready_reason

router = APIRouter(prefix="/v2", tags=["health"])


class Readiness(BaseModel):
    ready: bool
    error: str | None = None


# the probes are public (service.auth.OPEN_PATHS): no key scheme, no 401
@router.get("/health/live", responses=error_responses(v2=True))
async def live() -> dict:
    """The process is up."""
    return {"live": True}


@router.get("/health/ready", response_model=Readiness, responses={
    503: {"model": Readiness, "description": "not ready: the reason is in `error`"}, **error_responses(v2=True)})
async def ready(registry: Registry, sessions: Sessions, request: Request):
    """Ready when the models the readiness policy needs have loaded (``RNN_SERVE_READY_WHEN``: by
    default any one; failures are listed in ``/v1/models``) and the session store answers."""
    reason = not_ready_reason(registry, request.app.state.settings.ready_when)
    if reason is not None:
        return JSONResponse({"ready": False, "error": reason}, status_code=503)
    try:
        await sessions.store.ping()
    except ServiceError as exc:                     # e.g. Redis down: a balancer should route elsewhere
        return JSONResponse({"ready": False, "error": exc.message}, status_code=503)
    return JSONResponse({"ready": True}, status_code=200)


@router.get("", responses=error_responses(401, v2=True))
async def server_metadata(registry: Registry) -> dict:
    """Name, version, the Triton extensions implemented (``service.openinference.server``) and the
    device in use ("cpu" or "gpu": what RNN_SERVE_DEVICE=auto chose)."""
    return {**server.server_metadata(), "device": registry.device_in_use}
