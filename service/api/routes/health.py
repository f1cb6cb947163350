"""Health and server metadata, on the KServe v2 / Triton paths so standard probes work."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import Registry, Sessions
from service.errors import ServiceError
from service.openinference import server

router = APIRouter(prefix="/v2", tags=["health"])


@router.get("/health/live")
async def live() -> dict:
    """The process is up."""
    return {"live": True}


@router.get("/health/ready")
async def ready(registry: Registry, sessions: Sessions):
    """Ready when every model in the repository has loaded and the session store answers (503 otherwise)."""
    if not registry.all_ready:
        return JSONResponse({"ready": False}, status_code=503)
    try:
        await sessions.store.ping()
    except ServiceError as exc:                     # e.g. Redis down: a balancer should route elsewhere
        return JSONResponse({"ready": False, "error": exc.message}, status_code=503)
    return JSONResponse({"ready": True}, status_code=200)


@router.get("")
async def server_metadata() -> dict:
    """Name, version and the Triton extensions implemented (``service.openinference.server``)."""
    return server.server_metadata()
