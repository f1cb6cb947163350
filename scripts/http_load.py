"""A lean HTTP/1.1 client for filling a server with sessions: raw asyncio sockets, keep-alive.

``httpx`` spends about a millisecond of the shared CPU per request here, so creating 100,000
sessions (two requests each) took longer than the server did. This speaks just enough HTTP/1.1 for
the session API: one request at a time per connection, responses framed by ``Content-Length``.
A measuring instrument, not a client (``service.client`` is the client library).
"""
from __future__ import annotations

import asyncio
import json


class _Conn(asyncio.Protocol):
    def __init__(self):
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        length = next((int(line.split(":", 1)[1]) for line in head[1:] if line.lower().startswith("content-length:")), 0)
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4:end + 4 + length])
        del self.buf[:end + 4 + length]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((int(head[0].split()[1]), body))

    def connection_lost(self, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc!r}"))

    async def post(self, host: str, path: str, payload: dict) -> tuple[int, bytes]:
        body = json.dumps(payload).encode()
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        return await self.waiter


async def fill_sessions(host: str, port: int, n: int, model: str, text: str, concurrency: int = 32) -> list[str]:
    """Create ``n`` sessions on ``model`` and feed each ``text``; returns the errors (status and body)."""
    loop = asyncio.get_running_loop()
    errors: list[str] = []
    counts = [n // concurrency + (i < n % concurrency) for i in range(concurrency)]
    where = f"{host}:{port}"

    async def worker(k: int):
        _, conn = await loop.create_connection(_Conn, host, port)
        try:
            for _ in range(k):
                status, body = await conn.post(where, "/v1/sessions", {"model": model})
                if status not in (200, 201):
                    errors.append(f"create: {status} {body[:200]!r}")
                    continue
                sid = json.loads(body)["session_id"]
                status, body = await conn.post(where, f"/v1/sessions/{sid}/step", {"input": text, "top_k": 1})
                if status != 200:
                    errors.append(f"step: {status} {body[:200]!r}")
        finally:
            conn.transport.close()
    await asyncio.gather(*(worker(k) for k in counts if k))
    return errors
