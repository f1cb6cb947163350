"""The transport alone: a bare ASGI app that answers every stream message with a canned reply.

``python -m scripts.loadtest`` runs its typists against this app under the same uvicorn, with the
same WebSocket settings as ``python -m service``, to measure what a keystroke costs before any of
our code runs: the event loop, the sockets, uvicorn's WebSocket protocol, the ASGI messages and one
JSON decode. The service's CPU per keystroke minus this floor is what our own code costs.

    python -m uvicorn scripts.transport_floor:app --ws websockets-sansio
"""
from __future__ import annotations

import orjson

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
