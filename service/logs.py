"""Structured logs: one JSON object per line (or plain text), from the service and uvicorn alike.

Every HTTP request gets a request id (the client's ``X-Request-ID`` when it is sane, else a new
one), echoed in the response and attached to every log record written while the request runs.
"""
from __future__ import annotations

import contextvars
import itertools
import logging
import re
import sys
import secrets
import time

from pythonjsonlogger.json import JsonFormatter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
access_log = logging.getLogger("service.access")
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_ID_PREFIX = secrets.token_hex(8)          # unique per process; a counter makes the rest
_id_counter = itertools.count()


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)     # uvicorn's ANSI copy of the message
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Route the root logger (and uvicorn's, which propagate to it) through one handler."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                           rename_fields={"asctime": "time", "levelname": "level", "name": "logger"}))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True       # replaced by service.access, which has more


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            rid = value.decode("latin-1")
            if _SANE_ID.fullmatch(rid):
                return rid
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


class RequestLogMiddleware:
    """Sets the request id, echoes it as ``X-Request-ID``, and writes one access record per request."""

    def __init__(self, app: ASGIApp, enabled: bool = True):
        self.app, self.enabled = app, enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        rid = request_id_from(scope)
        token = request_id_var.set(rid)
        start, status = time.perf_counter(), [500 if scope["type"] == "http" else 101]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
            await send(message)

        try:            # a socket's messages skip the wrapper: it is on every keystroke's path
            await self.app(scope, receive, send_with_id if scope["type"] == "http" else send)
        finally:
            if self.enabled and access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info("%s %s %s", scope.get("method", "WS"), scope["path"], status[0], extra={
                    "method": scope.get("method", "WEBSOCKET"), "path": scope["path"],
                    "route": getattr(scope.get("route"), "path", None), "status": status[0],
                    "duration_ms": round((time.perf_counter() - start) * 1000, 3),
                    "client": f"{client[0]}:{client[1]}" if client else None})
            request_id_var.reset(token)
