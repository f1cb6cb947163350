"""Optional API-key auth, admin keys and the WebSocket ``Origin`` check.

* HTTP: the key only ever comes in the ``X-API-Key`` header, so keys never land in URLs or logs.
* WebSocket: the header, or ``?api_key=`` on the handshake (browsers cannot set headers there),
  unless ``ws_query_api_key`` is off.
* ``/metrics`` needs the key unless ``metrics_public``; the health probes and the demo page are open.
* ``/v1/admin/*`` needs a key from ``admin_keys``; with none configured the admin routes are off
  (404), so a cross-site POST can never reach them.

Keys are compared in constant time. With no ``api_keys`` configured, every other request is allowed.
CORS runs outside this middleware, so preflights are answered before any key check.

OpenAPI (the lock in ``/docs``) gets FastAPI's own ``APIKeyHeader`` schemes from ``document_keys``,
by the same rule the middleware applies (``scheme_for``). They are not route dependencies: a
dependency that reads nothing still costs every request a dependency solve.
"""
from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from fastapi import Request, WebSocket
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import error_response

OPEN_PATHS = ("/v2/health/live", "/v2/health/ready", "/")
ADMIN_PREFIX = "/v1/admin/"

API_KEY = APIKeyHeader(name="X-API-Key", scheme_name="APIKey", auto_error=False,
                       description="one of RNN_SERVE_API_KEYS; needed only when that is set")
ADMIN_KEY = APIKeyHeader(name="X-API-Key", scheme_name="AdminKey", auto_error=False,
                         description="one of RNN_SERVE_ADMIN_KEYS; the admin routes are off without them")


def scheme_for(path: str) -> APIKeyHeader | None:
    """The key a path needs (None: open to all). ``/metrics`` may be opened by a setting; it is not
    in the OpenAPI document."""
    if path.startswith(ADMIN_PREFIX):
        return ADMIN_KEY
    return None if path in OPEN_PATHS else API_KEY


def document_keys(schema: dict) -> dict:
    """Add the key schemes to an OpenAPI document: each operation names the one its path needs."""
    used = {}
    for path, ops in schema.get("paths", {}).items():
        scheme = scheme_for(path)
        if scheme is None:
            continue
        used[scheme.scheme_name] = scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
        for op in ops.values():
            op["security"] = [{scheme.scheme_name: []}]
    schema.setdefault("components", {})["securitySchemes"] = used
    return schema


def _key_ok(presented: str | None, keys: list[str]) -> bool:
    if not keys:
        return True
    if not presented:
        return False
    ok = False
    for k in keys:  # check every key so timing does not reveal which one matched
        ok |= hmac.compare_digest(presented.encode(), k.encode())
    return ok


def websocket_authorised(ws: WebSocket) -> bool:
    settings = ws.app.state.settings
    presented = ws.headers.get("x-api-key")
    if presented is None and settings.ws_query_api_key:
        presented = ws.query_params.get("api_key")
    return _key_ok(presented, settings.api_keys)


def origin_allowed(ws: WebSocket, settings) -> bool:
    """Same origin, a CORS origin or a listed one; no Origin header (not a browser) is allowed."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True
    allowed = [*settings.cors_origins, *settings.ws_allowed_origins]
    if "*" in allowed or origin in allowed:
        return True
    return urlsplit(origin).netloc.lower() == ws.headers.get("host", "").lower()


def _refuse(path: str, status: int, code: str, message: str) -> JSONResponse:
    return error_response(path, status, code, message)          # v2's error shape on /v2 paths


class APIKeyMiddleware:
    """HTTP requests need a key (WebSockets are checked in their endpoint); plain ASGI, no extra task."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = self._check(scope)
            if response is not None:
                return await response(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def _check(scope: Scope) -> JSONResponse | None:
        settings = scope["app"].state.settings
        path = scope["path"]
        presented = Request(scope).headers.get("x-api-key")
        scheme = scheme_for(path)
        if scheme is ADMIN_KEY:
            if not settings.admin_keys:
                return _refuse(path, 404, "not_found", "the admin routes are off (set RNN_SERVE_ADMIN_KEYS to use them)")
            if not _key_ok(presented, settings.admin_keys):
                return _refuse(path, 401, "unauthorized", "missing or invalid admin key: send it in the X-API-Key header")
            return None
        if scheme is None or (path == "/metrics" and settings.metrics_public):
            return None
        if not _key_ok(presented, settings.api_keys):
            return _refuse(path, 401, "unauthorized", "missing or invalid API key: send it in the X-API-Key header")
        return None
