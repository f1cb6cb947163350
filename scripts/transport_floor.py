"""The transport alone: a bare ASGI app that answers every stream message with a canned reply.

``python -m scripts.loadtest`` runs its typists against this app under the same uvicorn, with the
same WebSocket settings as ``python -m service``, to measure what a keystroke costs before any of
our code runs: the event loop, the sockets, uvicorn's WebSocket protocol, the ASGI messages and one
JSON decode. The service's CPU per keystroke minus this floor is what our own code costs.

``serve_raw`` is the floor under any Python server: the same replies from a bare uvloop protocol
that parses the frames itself (no uvicorn, no ASGI, no task per socket). What separates the two is
what moving the WebSocket termination out of the ASGI stack could save.

    python -m uvicorn scripts.transport_floor:app         # uvicorn, as the service runs it
    python -m scripts.transport_floor --raw --port 8001   # the bare protocol
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib

import orjson
import uvloop

from scripts.ws_load import OP_CLOSE, frame, take_frame, take_headers

# a real char-LM reply with top_k 3, so the frames written are the size the service writes
REPLY = orjson.dumps({"type": "output", "id": None, "steps": 1, "outputs": [{"top_k": [
    {"label": "e", "index": 5, "probability": 0.4872110188007355},
    {"label": "a", "index": 1, "probability": 0.2017390727996826},
    {"label": " ", "index": 0, "probability": 0.0981234759092331}]}]}).decode()
SESSION = orjson.dumps({"type": "session", "session_id": "0" * 32, "model": "charlm", "model_version": "1",
                        "resumed": False, "steps": 0}).decode()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await receive()                                             # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": SESSION})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        orjson.loads(message["text"])
        await send({"type": "websocket.send", "text": REPLY})


_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"        # RFC 6455's accept-key suffix


class RawFloor(asyncio.Protocol):
    """Handshake, unmask each client text frame, decode its JSON, write the canned reply."""

    reply, session = frame(REPLY.encode(), masked=False), frame(SESSION.encode(), masked=False)

    def connection_made(self, transport):
        self.transport, self.buf, self.open = transport, bytearray(), False

    def data_received(self, data):
        buf = self.buf
        buf += data
        if not self.open:
            head = take_headers(buf)
            if head is None:
                return
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + self.session)
            self.open = True
        while (got := take_frame(buf)) is not None:
            opcode, payload = got
            if opcode == OP_CLOSE:
                self.transport.close()
                return
            orjson.loads(payload)
            self.transport.write(self.reply)


async def serve_raw(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(RawFloor, host, port)
    await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--raw", action="store_true", required=True, help="serve the bare protocol (uvicorn serves `app`)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    args = p.parse_args()
    uvloop.run(serve_raw(args.host, args.port))
