"""The WebSocket stream with exactly-once inputs: ``AsyncStreamClient`` and ``StreamClient`` (sync).

Every input carries ``at`` = the steps acknowledged so far. On a dropped socket (a replica died,
a proxy restarted) the client reconnects, to the next URL if given several, resumes its session
with ``?session_id=`` and sends the same input with the same ``at``: the server answers an input
it already applied from its record and applies one it did not, so no step is lost or doubled.
``unavailable`` / ``overloaded`` / ``session_busy`` errors are retried with backoff.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import time
from urllib.parse import quote

import websockets

from service.client.retry import RETRY_CODES, Backoff, ServiceError, StepsLost, error_for

_DROPPED = (websockets.ConnectionClosed, websockets.InvalidStatus, websockets.InvalidHandshake, OSError, TimeoutError)


class AsyncStreamClient:
    """``async with AsyncStreamClient("ws://host:8000", "charlm") as s: await s.feed("hel")``.

    ``urls``: one base URL or several (replicas; tried in turn on reconnect). ``session_id``:
    resume that session instead of starting one.
    """

    def __init__(self, urls: str | list[str], model: str, *, api_key: str | None = None,
                 session_id: str | None = None, backoff: Backoff = Backoff(), reply_timeout: float = 30.0,
                 max_size: int = 2**22):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.model, self.api_key, self.backoff = model, api_key, backoff
        self.reply_timeout, self.max_size = reply_timeout, max_size
        self.session_id, self.steps = session_id, 0
        self.ws = None
        self.hello: dict | None = None
        self.reconnects, self.retries = 0, 0          # for callers' reports: dropped sockets, retried errors
        self._turn, self._ids = 0, itertools.count()

    async def __aenter__(self) -> AsyncStreamClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.disconnect()

    def _url(self) -> str:
        base = self.urls[self._turn % len(self.urls)].rstrip("/")
        url = f"{base}/v1/models/{quote(self.model)}/stream"
        return f"{url}?session_id={quote(self.session_id)}" if self.session_id else url

    async def connect(self) -> dict:
        """Open (or reopen) the socket and start or resume the session; returns the hello event."""
        start = time.monotonic()
        for attempt in itertools.count():
            headers = {"X-API-Key": self.api_key} if self.api_key else {}
            try:
                ws = await websockets.connect(self._url(), additional_headers=headers, max_size=self.max_size,
                                              open_timeout=self.reply_timeout)
                hello = json.loads(await asyncio.wait_for(ws.recv(), self.reply_timeout))
            except _DROPPED:
                hello, ws = None, None
            if hello is not None and hello.get("type") == "session":
                break
            if ws is not None:
                await ws.close()
            if hello is not None and hello.get("code") not in RETRY_CODES:
                raise error_for(hello.get("code", "error"), hello.get("message", ""))
            if time.monotonic() - start > self.backoff.deadline:
                raise ServiceError("unavailable", f"could not connect within {self.backoff.deadline:g} s")
            self._turn += 1                                  # the next replica, if there are several
            await asyncio.sleep(self.backoff.delay(min(attempt, 6)))
        if hello["steps"] < self.steps:
            await ws.close()
            raise StepsLost("steps_lost", f"session {hello['session_id']} holds {hello['steps']} steps; "
                                          f"{self.steps} were acknowledged")
        self.ws, self.hello = ws, hello
        self.session_id, self.steps = hello["session_id"], hello["steps"]
        return hello

    async def _reconnect(self) -> None:
        await self.disconnect()
        self.reconnects += 1
        self._turn += 1
        await self.connect()

    async def _request(self, message: dict, reply_type: str) -> dict:
        start = time.monotonic()
        for attempt in itertools.count():
            message["id"] = next(self._ids)
            try:
                await self.ws.send(json.dumps(message))
                reply = json.loads(await asyncio.wait_for(self.ws.recv(), self.reply_timeout))
            except _DROPPED:
                await self._reconnect()                      # resend, same ``at``: never applied twice
                continue
            if reply.get("type") == reply_type:
                return reply
            code = reply.get("code", "error")
            if code not in RETRY_CODES or time.monotonic() - start > self.backoff.deadline:
                raise error_for(code, reply.get("message", ""))
            self.retries += 1
            await asyncio.sleep(self.backoff.delay(min(attempt, 6)))

    async def feed(self, text: str | None = None, *, tokens: list[int] | None = None,
                   features: list[list[float]] | None = None, top_k: int = 5) -> dict:
        """Send new steps; returns the ``output`` event (``steps``, ``outputs``), exactly once."""
        payload = {k: v for k, v in (("text", text), ("tokens", tokens), ("features", features)) if v is not None}
        reply = await self._request({"type": "input", **payload, "top_k": top_k, "at": self.steps}, "output")
        self.steps = reply["steps"]
        return reply

    async def complete(self, **options) -> list[dict]:
        """Completions from the current state (``n``, ``max_length``, ``temperature``, ``seed``, ...)."""
        return (await self._request({"type": "complete", **options}, "completion"))["completions"]

    async def end(self) -> None:
        """End the session on the server and close the socket."""
        await self._request({"type": "close"}, "closed")
        await self.disconnect()

    async def disconnect(self) -> None:
        """Close the socket; the session lives on (until its TTL) for ``connect`` to resume."""
        if self.ws is not None:
            ws, self.ws = self.ws, None
            try:
                await ws.close()
            except _DROPPED:
                pass


class StreamClient:
    """The blocking twin: the same client driven on a private event loop.

    ``with StreamClient("ws://host:8000", "charlm") as s: s.feed("hel")``.
    """

    def __init__(self, urls: str | list[str], model: str, **kwargs):
        self._loop = asyncio.new_event_loop()
        self._client = AsyncStreamClient(urls, model, **kwargs)

    def __enter__(self) -> StreamClient:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.disconnect()
        self._loop.close()

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    @property
    def session_id(self) -> str | None:
        return self._client.session_id

    @property
    def steps(self) -> int:
        return self._client.steps

    def connect(self) -> dict:
        return self._run(self._client.connect())

    def feed(self, text: str | None = None, **kwargs) -> dict:
        return self._run(self._client.feed(text, **kwargs))

    def complete(self, **options) -> list[dict]:
        return self._run(self._client.complete(**options))

    def end(self) -> None:
        self._run(self._client.end())

    def disconnect(self) -> None:
        self._run(self._client.disconnect())
