"""One error shape for every endpoint: ``{"error": {"code": ..., "message": ...}}`` with the right status.

The shapes are declared here too (``ErrorResponse``, ``V2ErrorResponse``) and each route lists its
statuses with ``error_responses``, so OpenAPI documents exactly what the handlers below send.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("service")


class ServiceError(Exception):
    """An expected failure with its HTTP status, a stable machine code and a message saying what to fix."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.code = code or self.code


class InvalidInput(ServiceError):
    status, code = 422, "invalid_input"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class Overloaded(ServiceError):
    """429 with ``Retry-After``: the request was refused before any work, so retrying is safe."""

    status, code = 429, "overloaded"
    retry_after = 1


class Unavailable(ServiceError):
    status, code = 503, "unavailable"


class ErrorDetail(BaseModel):
    code: str = Field(description="stable and machine-readable: invalid_input, invalid_request, not_found, "
                                  "session_expired, step_mismatch, payload_too_large, overloaded, unavailable, ...",
                      examples=["invalid_input"])
    message: str = Field(description="what went wrong and what to fix, for a person")


class ErrorResponse(BaseModel):
    """The body of every error outside ``/v2``."""

    error: ErrorDetail


class V2ErrorResponse(BaseModel):
    """The Open Inference Protocol's error body (``/v2`` paths): the message only."""

    error: str = Field(description="what went wrong and what to fix")


_WHEN = {
    400: "bad request: the body, a tensor or a parameter is not valid (the message says which)",
    401: "missing or invalid API key (only when RNN_SERVE_API_KEYS is set); admin routes: an admin key",
    404: "unknown model, version, session or route",
    409: "conflict: a concurrent write to the session, a step_mismatch on a retry, a retired model version, "
         "or a model in use",
    410: "the session expired or was evicted (the code says which), or its state was lost",
    413: "over a limit: body size, batch, sequence length, steps, outputs or completions",
    415: "unsupported Content-Encoding",
    422: "invalid input: the message names the bad field, characters, ids or shapes",
    429: "overloaded: nothing was done, retry after Retry-After seconds",
    503: "the model is not ready, the session store is down, or the server is shutting down",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def error_responses(*statuses: int, v2: bool = False) -> dict:
    """OpenAPI ``responses`` for a route's error statuses, plus ``default`` (500 and any other error
    has the same shape). ``v2``: the Open Inference Protocol's shape, for ``/v2`` routes."""
    model = V2ErrorResponse if v2 else ErrorResponse
    out: dict = {s: {"model": model, "description": _WHEN[s]} for s in statuses}
    if 429 in out:
        out[429]["headers"] = _RETRY_AFTER
    out["default"] = {"model": model, "description": "any other error, in the same shape: 500 (a bug; the "
                                                     "service keeps running), 405, 408, ..."}
    return out


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def is_v2(path: str) -> bool:
    """The Open Inference Protocol's paths, whose errors take its own shape ``{"error": "..."}``."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(path: str, status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    """The one place that picks the error shape: v2's on /v2 paths, the service's elsewhere."""
    body = {"error": message} if is_v2(path) else error_body(code, message)
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {err.get('msg')}")
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Overloaded) else None
        return error_response(request.url.path, exc.status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        status = 400 if is_v2(request.url.path) else 422          # v2 calls every bad request a 400
        return error_response(request.url.path, status, "invalid_request", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(request.url.path, exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request.url.path, 500, "internal_error", "internal error; the service keeps running")
