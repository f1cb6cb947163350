"""Health and server metadata, on the KServe v2 / Triton paths so standard probes work."""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import Registry, Sessions
from service.errors import ServiceError

router = APIRouter(prefix="/v2", tags=["health"])
SERVER_NAME = "rnn-serve"


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
async def server_metadata(registry: Registry) -> dict:
    from service import __version__
    return {"name": SERVER_NAME, "version": __version__, "extensions": ["sequence", "sequence(string_id)"],
            "device": registry.device_in_use}             # "cpu" or "gpu": what RNN_SERVE_DEVICE=auto chose


@router.get("/models/{name}/ready")
async def model_ready(name: str, registry: Registry):
    ok = registry.get(name).status == "ready"
    return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)
