"""Request body size and time limits, enforced while the body streams in (with or without Content-Length).

The body is read here up to the limit (so memory per request is bounded by it) and replayed to
the app; past the limit the request gets a 413 (``{"error": "..."}`` on ``/v2`` paths, the service's error
shape elsewhere), and a body that has
not fully arrived within ``timeout`` seconds (a slow client) gets a 408.
"""
from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_response


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and (len(declared) > 19 or int(declared) > self.max_bytes):
            return await self._reject(scope, receive, send)
        chunks, size, more = [], 0, True
        try:
            async with asyncio.timeout(self.timeout):
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        return await self._reject(scope, receive, send)
                    chunks.append(chunk)
                    more = message.get("more_body", False)
        except TimeoutError:
            response = error_response(scope["path"], 408, "request_timeout",
                                      f"the request body did not arrive within {self.timeout:g} s",
                                      headers={"Connection": "close"})
            return await response(scope, receive, send)
        body, replayed = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()                     # later: disconnect notifications

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        response = error_response(scope["path"], 413, "payload_too_large",
                                  f"request body is over the limit of {self.max_bytes} bytes")
        await response(scope, receive, send)
