"""A lean WebSocket load generator: typists on raw asyncio protocols with precomputed frames.

The load generator shares the machine's cores with the server it measures. The ``websockets``
client costs about 320 µs of CPU per keystroke here (its frame machinery, a task per socket, a JSON
encode and decode); at 1,000 typists that alone is more than a core, and the server's latency then
measures the generator. This one costs a fraction of that:

* every keystroke's frame is built once, at start (RFC 6455 wants a fresh mask per frame so that
  intermediaries cannot be poisoned; a generator on loopback talks to no intermediary);
* a reply is parsed only as far as its frame header and its ``"type"``;
* a typist is a protocol object and a timer, not a task.

It speaks enough of RFC 6455 for the stream endpoint: the opening handshake, unfragmented text
frames both ways, and a close from either side. It is a measuring instrument, not a client for
anything else (``service.client`` is the client library).
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def frame(payload: bytes, opcode: int = OP_TEXT, masked: bool = True) -> bytes:
    """One final frame: masked as a client sends it, or plain as a server does."""
    n = len(payload)
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([0x80 | opcode, bit | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, bit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, bit | 127]) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def take_headers(buf: bytearray) -> bytes | None:
    """The HTTP head at the start of ``buf`` (up to, not including, its blank line), removed from
    ``buf``; None until it has fully arrived. Both ends of the handshake read it this way."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    del buf[:end + 4]
    return head


def take_frame(buf: bytearray) -> tuple[int, bytes] | None:
    """The first whole frame in ``buf`` as (opcode, payload), unmasked and removed from ``buf``; None
    until one has fully arrived."""
    if len(buf) < 2:
        return None
    n, head = buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, head = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, head = int.from_bytes(buf[2:10], "big"), 10
    mask = buf[head:head + 4] if buf[1] & 0x80 else None
    start = head + (4 if mask is not None else 0)
    if len(buf) < start + n:
        return None
    opcode, payload = buf[0] & 0x0F, bytes(buf[start:start + n])
    del buf[:start + n]
    if mask is not None:
        payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return opcode, payload


@dataclass
class Tally:
    """What every typist of one run adds to: round trips (s), error replies and failures."""

    rtts: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    replies: int = 0


class Typist(asyncio.Protocol):
    """One socket: handshake, then ``frames`` in turn, one every ``interval`` s from ``start()``, each
    sent once the previous one's reply is in (a typist waits for the screen), until ``until[0]``
    (a ``time.perf_counter()``) or ``count`` keystrokes. Replies of ``"type": "output"`` count as
    answers; any other reply after the session event is an error."""

    def __init__(self, host: str, path: str, frames: list[bytes], tally: Tally, on_open, on_done):
        self.host, self.path, self.frames, self.tally = host, path, frames, tally
        self.on_open, self.on_done = on_open, on_done
        self.buf = bytearray()
        self.open = self.done = self.announced = False
        self.transport = None
        self.sent_at = 0.0
        self.i = 0
        self.count: int | None = None
        self.until: list[float] | None = None
        self.interval = 0.0
        self.next_at = 0.0

    # -- the socket ---------------------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                         ).encode())

    def data_received(self, data: bytes):
        buf = self.buf
        buf += data
        if not self.open:
            head = take_headers(buf)
            if head is None:
                return
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status:
                return self._fail(f"handshake refused: {status.decode(errors='replace')}")
            self.open = True
        while (got := take_frame(buf)) is not None:
            opcode, payload = got
            if opcode == OP_TEXT:
                self._reply(payload)
            elif opcode == OP_PING:
                self.transport.write(frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                return self._fail(f"closed by the server: {code} {payload[2:].decode(errors='replace')}")

    def connection_lost(self, exc):
        if not self.done:
            self._fail(f"connection lost: {exc!r}")

    # -- typing -------------------------------------------------------------------------------
    def start(self, interval: float, delay: float, count: int | None = None, until: list[float] | None = None):
        """Type from ``delay`` s from now (staggered starts spread keystrokes evenly)."""
        self.interval, self.count, self.until = interval, count, until
        self.next_at = time.perf_counter() + delay
        asyncio.get_running_loop().call_later(delay, self._key)

    def _key(self):
        if self.done:
            return
        now = time.perf_counter()
        if (self.count is not None and self.i >= self.count) or (self.until is not None and now >= self.until[0]):
            return self._finish()
        self.sent_at = now
        self.transport.write(self.frames[self.i % len(self.frames)])
        self.i += 1
        self.next_at += self.interval

    def _reply(self, payload: bytes):
        if not self.sent_at:                       # the session event, sent on connect
            if b'"type":"session"' not in payload:
                return self._fail(f"no session event: {payload[:200]!r}")
            return self._announce()
        now = time.perf_counter()
        tally = self.tally
        tally.rtts.append(now - self.sent_at)
        tally.replies += 1
        if not payload.startswith(b'{"type":"output"'):
            tally.errors.append(payload[:200].decode(errors="replace"))
        delay = self.next_at - now
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._key)
        else:
            self._key()

    def _finish(self):
        self.done = True
        self.transport.write(frame(b"\x03\xe8", OP_CLOSE))     # 1000, normal closure
        self.transport.close()
        self.on_done(self)

    def _fail(self, why: str):
        if self.done:
            return
        self.done = True
        self.tally.errors.append(why)
        if self.transport is not None:
            self.transport.close()
        self._announce()                            # a socket that never opened must not stall the start
        self.on_done(self)

    def _announce(self):
        if not self.announced:
            self.announced = True
            self.on_open(self)


async def type_into(url: str, texts: list[str], n: int, interval: float, *, count: int | None = None,
                    duration: float | None = None, top_k: int = 3, connect_concurrency: int = 256,
                    on_typing=None) -> tuple[Tally, float]:
    """Open ``n`` sockets to ``url``; once all are open, each types ``texts`` in turn (one message per
    keystroke, ``"top_k"`` each), every ``interval`` s, staggered over the first interval, for ``count``
    keystrokes or ``duration`` s. ``on_typing(tally)`` is awaited as typing starts (a sampler).
    Returns the tally and when typing started (``time.perf_counter()``)."""
    parts = urlsplit(url)
    frames = [frame(f'{{"type":"input","text":{json.dumps(t)},"top_k":{top_k}}}'.encode()) for t in texts]
    loop = asyncio.get_running_loop()
    tally, opened, finished = Tally(), [0], [0]
    all_open, all_done = loop.create_future(), loop.create_future()

    def on_open(_):
        opened[0] += 1
        if opened[0] == n and not all_open.done():
            all_open.set_result(None)

    def on_done(_):
        finished[0] += 1
        if finished[0] == n and not all_done.done():
            all_done.set_result(None)

    gate = asyncio.Semaphore(connect_concurrency)           # a connect storm would only measure the backlog

    async def connect():
        async with gate:
            try:
                _, proto = await loop.create_connection(
                    lambda: Typist(parts.netloc, parts.path + (f"?{parts.query}" if parts.query else ""), frames, tally,
                                   on_open, on_done), parts.hostname, parts.port)
            except OSError as exc:
                tally.errors.append(f"connect failed: {exc!r}")
                on_open(None)
                on_done(None)
                return None
            return proto
    typists = [t for t in await asyncio.gather(*(connect() for _ in range(n))) if t is not None]
    await all_open
    started = time.perf_counter()
    until = None if duration is None else [started + duration]
    for k, t in enumerate(typists):
        if not t.done:
            t.start(interval, interval * k / n, count=count, until=until)
    if on_typing is not None:
        await on_typing(tally)
    await all_done
    return tally, started
