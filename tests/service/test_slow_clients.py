"""Edges that only a real uvicorn shows: slow clients timed out (real slow sockets), WebSocket frames
over the limit refused by the WebSocket layer, and the peak memory of the largest allowed reply."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest
import websockets

from tests.helpers import free_port, start_server, stop_server

LIMIT = 200_000


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port, {"RNN_SERVE_HEADER_TIMEOUT_SECONDS": "1", "RNN_SERVE_BODY_TIMEOUT_SECONDS": "1",
                               "RNN_SERVE_KEEP_ALIVE_SECONDS": "1", "RNN_SERVE_MAX_REQUEST_BYTES": str(LIMIT)})
    yield port, proc
    stop_server(proc)


def closed_by_server(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_clients_trickling_headers_are_cut_off(server):
    port, _ = server
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    for s in socks:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
    t0, open_ = time.monotonic(), list(socks)
    while open_ and time.monotonic() - t0 < 6:
        time.sleep(0.2)
        for s in list(open_):
            try:
                s.sendall(b"X-Slow: 1\r\n")                       # a header line every 0.2 s: slowloris
            except OSError:
                pass
            if closed_by_server(s):
                open_.remove(s)
            else:
                s.setblocking(True)
    held = len(open_)
    for s in socks:
        s.close()
    assert held == 0 and time.monotonic() - t0 < 4, f"{held} slow connections still held"
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 200


def test_a_body_that_never_finishes_gets_408(server):
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/models/charlm/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"inp")
        t0 = time.monotonic()
        reply = b""
        while chunk := s.recv(4096):                               # the 408, then the server closes
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply and time.monotonic() - t0 < 4


def test_frames_over_the_limit_are_refused_by_the_websocket_layer(server):
    port, _ = server

    async def main():
        url = f"ws://127.0.0.1:{port}/v1/models/charlm/stream"
        async with websockets.connect(url, max_size=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "input", "text": "a" * (LIMIT + 10)}))
            with pytest.raises(websockets.ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd.code == 1009                    # "message too big", a real close frame
        async with websockets.connect(url) as ws:                  # still serving
            await ws.recv()
            await ws.send(json.dumps({"type": "input", "text": "ok"}))
            assert json.loads(await ws.recv())["steps"] == 2
    asyncio.run(main())


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def test_peak_memory_of_the_largest_allowed_reply(server):
    """The issue's repro is refused; the largest reply the caps allow raises peak RSS by a bounded amount."""
    port, proc = server
    base = f"http://127.0.0.1:{port}"
    before = peak_rss_mb(proc.pid)
    r = httpx.post(f"{base}/v1/models/charlm/predict", json={"inputs": ["a" * 4096] * 16, "top_k": 81}, timeout=60)
    assert r.status_code == 413                                    # refused up front (the body is under 1 MB)
    assert peak_rss_mb(proc.pid) - before < 20
    biggest = {"inputs": ["a" * 2460], "top_k": 81}                # 2460 x 81 = 199,260 entries: just under the cap
    r = httpx.post(f"{base}/v1/models/charlm/predict", json=biggest, timeout=120)
    assert r.status_code == 200, r.text[:300]
    grew = peak_rss_mb(proc.pid) - before
    print(f"largest allowed reply: {len(r.content) / 1e6:.1f} MB of JSON, peak RSS +{grew:.0f} MB")
    assert grew < 250, grew                                        # the stated bound (docs/security.md)
