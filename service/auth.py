"""Optional API-key auth (``X-API-Key`` header, or ``api_key`` query parameter for browsers' WebSockets).

Keys are compared in constant time. With no keys configured, every request is allowed.
"""
from __future__ import annotations

import hmac

from fastapi import Request, WebSocket
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_response

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


class APIKeyMiddleware:
    """HTTP requests need a key (WebSockets are checked in their endpoint); plain ASGI, no extra task."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            keys = scope["app"].state.settings.api_keys
            path = scope["path"]
            if keys and path not in OPEN_PATHS and path != "/" and not _key_ok(_presented(Request(scope)), keys):
                response = error_response(path, 401, "unauthorized",
                                          "missing or invalid API key: send it in the X-API-Key header")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)
