"""Request limits, one home for every protocol (v1, v2 over HTTP, gRPC): checks that refuse a
request with a clear 413 before any math runs, and the body size limit.

The body size limit is enforced while the body streams in (with or without Content-Length): the
body is read up to the limit (so memory per request is bounded by it) and replayed to the app;
past the limit the request gets a 413 (``{"error": "..."}`` on ``/v2`` paths, the service's error
shape elsewhere).
"""
from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, error_response
from service.settings import Settings

# A v2 response value costs about this many bytes in JSON (measured: 22 for FP32 probabilities); binary is itemsize.
JSON_BYTES_PER_VALUE = 24


def check_batch(n: int, settings: Settings) -> None:
    if n > settings.max_batch_sequences:
        raise PayloadTooLarge(f"{n} sequences is over the limit of {settings.max_batch_sequences} per request")


def check_steps(n: int, limit: int, where: str = "input") -> None:
    """A sequence of ``n`` steps against a step limit (``max_sequence_length`` or ``max_steps_per_message``)."""
    if n > limit:
        raise PayloadTooLarge(f"{where}: {n} steps is over the limit of {limit}")


def check_completion(n: int, max_length: int, settings: Settings) -> None:
    if max_length > settings.max_completion_length or n > settings.max_completions:
        raise PayloadTooLarge(f"at most n={settings.max_completions} completions of "
                              f"max_length={settings.max_completion_length}")


def check_response(nbytes: int, settings: Settings) -> None:
    """The response's estimated size, checked before the model runs, so no work is wasted on it."""
    if nbytes > settings.max_response_bytes:
        raise PayloadTooLarge(f"the response would be about {nbytes} bytes, over the limit of "
                              f"{settings.max_response_bytes}; send fewer or shorter sequences, or ask for fewer outputs")


class BodySizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        chunks, size, more = [], 0, True
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
