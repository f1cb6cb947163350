"""Optional API-key auth (``X-API-Key`` header, or ``api_key`` query parameter for browsers' WebSockets).

Keys are compared in constant time. With no keys configured, every request is allowed.
"""
from __future__ import annotations

import hmac

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.middleware.base import BaseHTTPMiddleware

from service.errors import error_body

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/metrics")


def _key_ok(presented: str | None, keys: list[str]) -> bool:
    if not keys:
        return True
    if not presented:
        return False
    ok = False
    for k in keys:  # check every key so timing does not reveal which one matched
        ok |= hmac.compare_digest(presented.encode(), k.encode())
    return ok


def _presented(conn: Request | WebSocket) -> str | None:
    return conn.headers.get("x-api-key") or conn.query_params.get("api_key")


def websocket_authorised(ws: WebSocket) -> bool:
    return _key_ok(_presented(ws), ws.app.state.settings.api_keys)


class APIKeyMiddleware(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        keys = request.app.state.settings.api_keys
        if keys and request.url.path not in OPEN_PATHS and request.url.path != "/" \
                and not _key_ok(_presented(request), keys):
            return JSONResponse(error_body("unauthorized", "missing or invalid API key: send it in the X-API-Key header"),
                                status_code=401)
        return await call_next(request)
