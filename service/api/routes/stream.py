"""WebSocket streaming: ``/v1/models/{name}/stream``. One connection is one session."""
from __future__ import annotations

import asyncio
import logging
import time

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service import __version__
from service.api.asyncapi import asyncapi_document
from service.api.stream_protocol import (
    CloseMessage,
    CompleteMessage,
    InputMessage,
    OutputEvent,
    ResetMessage,
    ServerEvent,
    client_message,
)
from service.auth import origin_allowed, websocket_authorised
from service.errors import ServiceError
from service.sessions.manager import SessionManager

router = APIRouter(tags=["streaming"])
log = logging.getLogger("service.stream")


def dumps(event: ServerEvent) -> str:
    """Strict JSON (orjson writes a non-finite float as null, never a bare NaN). Outputs are checked
    for finiteness where they are made, so a reply says ``non_finite_output`` rather than null."""
    return orjson.dumps(event).decode()


class StreamConnection:
    """Owns one socket's session id; every message gets exactly one reply, errors included."""

    def __init__(self, ws: WebSocket, sessions: SessionManager, model: str):
        self.ws, self.sessions, self.model = ws, sessions, model
        self.session_id: str | None = None
        self._kind = "invalid"
        self.max_bytes = ws.app.state.settings.max_request_bytes
        self.metrics = ws.app.state.metrics

    async def send(self, event: ServerEvent) -> None:
        await self.ws.send_text(dumps(event))

    async def open(self, resume_id: str | None) -> bool:
        try:
            if resume_id:
                s = await self.sessions.store.touch(resume_id)                 # resuming is a use
                if s.model != self.model:
                    raise ServiceError(f"session {resume_id!r} belongs to model {s.model!r}, not {self.model!r}",
                                       code="session_model_mismatch")
                resumed = True
            else:
                s, resumed = await self.sessions.create(self.model), False
        except ServiceError as exc:
            await self.send({"type": "error", "id": None, "code": exc.code, "message": exc.message})
            await self.ws.close(code=1013 if exc.status in (429, 503) else 1008)   # 1013: try again later
            return False
        self.session_id = s.id
        log.info("stream opened", extra={"session_id": s.id, "model": s.model, "resumed": resumed, "steps": s.steps})
        await self.send({"type": "session", "session_id": s.id, "model": s.model,
                                 "model_version": s.model_version, "resumed": resumed, "steps": s.steps})
        return True

    async def handle(self, raw: str | bytes) -> bool:
        """Process one message; returns False when the client asked to close."""
        start, outcome = time.perf_counter(), "error"
        try:
            keep_open = await self._handle(raw)
            outcome = "ok"
            return keep_open
        except ServiceError as exc:
            await self.send({"type": "error", "id": exc.msg_id, "code": exc.code, "message": exc.message})
            return True
        except (WebSocketDisconnect, asyncio.CancelledError):
            raise
        except Exception:                       # a bug must cost one reply, never the socket
            log.exception("stream message failed", extra={"session_id": self.session_id})
            await self.send({"type": "error", "id": None, "code": "internal_error",
                             "message": "internal error; the socket stays open"})
            return True
        finally:
            self.metrics.on_ws_message(self.model, self._kind, outcome, time.perf_counter() - start)

    async def _handle(self, raw: str) -> bool:
        msg_id, self._kind = None, "invalid"
        try:
            if isinstance(raw, bytes):
                raise ServiceError("binary frames are not part of the protocol: send JSON as a text frame",
                                   code="invalid_request")
            if len(raw) > self.max_bytes:
                raise ServiceError(f"message of {len(raw)} bytes is over the limit of {self.max_bytes}",
                                   code="payload_too_large")
            try:
                data = orjson.loads(raw)        # nesting past 1024 levels is a decode error too
            except orjson.JSONDecodeError as exc:
                raise ServiceError(f"message is not JSON: {exc}", code="invalid_request") from None
            if isinstance(data, dict):
                msg_id = data.get("id") if type(data.get("id")) in (str, int) else None
            try:
                msg = client_message.validate_python(data)
            except ValidationError as exc:
                detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'message'}: {e['msg']}" for e in exc.errors()[:3])
                raise ServiceError(detail[:2000], code="invalid_request") from None
            except RecursionError:
                raise ServiceError("message is nested too deeply", code="invalid_request") from None
            self._kind = msg.type
            if isinstance(msg, InputMessage):
                session, outputs = await self.sessions.step(self.session_id, msg.payload, msg.top_k, expect_at=msg.at)
                reply: OutputEvent = {"type": "output", "id": msg.id, "steps": session.steps, "outputs": outputs}
                if msg.state:
                    reply["state"] = self.sessions.top_layer_state(session)
                await self.send(reply)
            elif isinstance(msg, CompleteMessage):
                completions = await self.sessions.complete(self.session_id, msg.n, msg.max_length, msg.temperature,
                                                           msg.top_k, msg.greedy or msg.temperature == 0, msg.stop,
                                                           msg.seed)
                await self.send({"type": "completion", "id": msg.id, "completions": completions})
            elif isinstance(msg, ResetMessage):
                await self.sessions.reset(self.session_id)
                await self.send({"type": "reset", "id": msg.id, "steps": 0})
            elif isinstance(msg, CloseMessage):
                await self.sessions.end(self.session_id)
                await self.send({"type": "closed", "id": msg.id})
                return False
        except ServiceError as exc:
            exc.msg_id = msg_id
            raise
        return True


class IdleTimer:
    """``receive`` that raises ``TimeoutError`` after ``seconds`` without a message.

    ``asyncio.timeout`` around each receive costs a timer armed and cancelled per message (10 µs
    here, on every keystroke); this keeps one timer per socket and only stamps the time per
    message. When the timer fires early (there were messages since), it re-arms for the rest."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.handle: asyncio.TimerHandle | None = None
        self.waiter: asyncio.Task | None = None
        self.fired = False

    async def receive(self, ws: WebSocket):
        if self.handle is None:
            self.handle = self.loop.call_at(self.last + self.seconds, self._check)
        self.waiter = asyncio.current_task()
        try:
            message = await ws.receive()
        except asyncio.CancelledError:
            if self.fired and self.waiter.uncancel() == 0:     # our cancel, not the server's
                raise TimeoutError from None
            raise
        finally:
            self.waiter = None
        self.last = self.loop.time()
        return message

    def _check(self) -> None:
        due = self.last + self.seconds
        if self.loop.time() < due:
            self.handle = self.loop.call_at(due, self._check)
        elif self.waiter is not None:                         # idle while waiting for a message
            self.fired = True
            self.waiter.cancel()
        else:                                                 # busy on a message: check again once it is done
            self.handle = self.loop.call_at(self.loop.time() + self.seconds, self._check)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()


@router.websocket("/v1/models/{name}/stream")
async def stream(ws: WebSocket, name: str, session_id: str | None = None):
    """Stream steps into a session and read per-step outputs and completions.

    1. Connect to ``/v1/models/{name}/stream`` (add ``?session_id=...`` to resume a session that has
       not expired). The server sends ``{"type": "session", "session_id", "model", "resumed", "steps"}``.
    2. Send ``{"type": "input", "text": "..."}`` (or ``"tokens": [...]`` or ``"features": [[...]]``,
       optional ``"top_k"`` and ``"id"``). Exactly one reply per input: ``{"type": "output", "id",
       "steps", "outputs": [one per step, in order]}`` (next-token top-k for LMs, running class
       top-k for classifiers, bits for echo models). Outputs do not depend on how text is chunked.
       With ``"state": true`` the reply also carries ``"state": {"h": [...], "c": [...] or null}``, the
       top layer's state after the input (the demo page draws it as a heatmap).
    3. Send ``{"type": "complete", "n", "max_length", "temperature", "top_k", "greedy", "stop",
       "seed"}`` for ``{"type": "completion", "completions": [...]}`` from the current state; the
       state is not advanced.
    4. ``{"type": "reset"}`` zeroes the state; ``{"type": "close"}`` ends the session and the socket.
    5. A bad message gets ``{"type": "error", "id", "code", "message"}`` and the socket stays open
       (binary frames, bad JSON, deep nesting, out-of-range numbers alike). A frame over the request
       size limit is refused by the WebSocket layer itself (close 1009); an idle socket is closed
       after ``ws_idle_timeout_seconds`` (1001). Disconnecting without ``close`` keeps the session
       until its idle TTL, for resuming.
    6. Exactly once: an input may carry ``"at": N``, the step count the client expects the session
       to be at. Resending it after a lost reply, an error or a reconnect is safe: an input already
       applied is answered from the record, one that does not fit gets ``step_mismatch``.
    7. Browsers: the ``Origin`` must be this server's own, a CORS origin or in
       ``ws_allowed_origins``; the API key may come as ``?api_key=`` (unless ``ws_query_api_key`` is off).
    """
    settings = ws.app.state.settings
    if not origin_allowed(ws, settings):
        await ws.close(code=1008, reason="Origin not allowed")
        return
    if not websocket_authorised(ws):
        await ws.close(code=1008, reason="missing or invalid API key")
        return
    await ws.accept()
    conn = StreamConnection(ws, ws.app.state.sessions, name)
    idle = None
    try:
        if not await conn.open(session_id):
            return
        idle = IdleTimer(settings.ws_idle_timeout_seconds)
        while True:
            try:
                message = await idle.receive(ws)
            except TimeoutError:
                await ws.close(code=1001, reason=f"idle for {settings.ws_idle_timeout_seconds:g} s")
                return
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            raw = message["text"] if message.get("text") is not None else message.get("bytes", b"")
            if not await conn.handle(raw):
                break
        await ws.close()
    except WebSocketDisconnect:
        pass
    finally:
        if idle is not None:
            idle.cancel()
        if conn.session_id:
            log.info("stream closed", extra={"session_id": conn.session_id, "model": name})


@router.get("/asyncapi.json", include_in_schema=False)
async def asyncapi() -> JSONResponse:
    """The protocol above, machine-readable (AsyncAPI 3.0), as ``/openapi.json`` is for HTTP."""
    return JSONResponse(asyncapi_document(__version__))
