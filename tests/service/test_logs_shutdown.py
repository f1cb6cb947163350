"""Structured logs with request ids, and graceful shutdown on SIGTERM, against a real uvicorn."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import websockets
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings
from tests.helpers import ROOT, free_port


def _start(port: int, log_path, **env) -> subprocess.Popen:
    env = {**os.environ, "RNN_SERVE_LOG_LEVEL": "info", "RNN_SERVE_LOG_FORMAT": "json", **env}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))
    deadline = time.time() + 30
    while time.time() < deadline:
        assert proc.poll() is None, log_path.read_text()[-2000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not become ready")


def _records(log_path) -> list[dict]:
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]                  # every line is one JSON object


def test_request_id_is_echoed_or_made():
    with TestClient(create_app(Settings())) as client:
        r = client.get("/v1/models", headers={"X-Request-ID": "trace-42"})
        assert r.headers["x-request-id"] == "trace-42"
        made = client.get("/v1/models", headers={"X-Request-ID": "bad id with spaces"}).headers["x-request-id"]
        assert made != "bad id with spaces" and len(made) == 32


def test_json_logs_and_graceful_shutdown(tmp_path):
    port, log_path = free_port(), tmp_path / "server.log"
    # A long queue delay keeps a classify request in flight while SIGTERM arrives.
    proc = _start(port, log_path, RNN_SERVE_MAX_QUEUE_DELAY_MS="1500")
    base = f"http://127.0.0.1:{port}"
    try:
        assert httpx.get(f"{base}/v1/models", headers={"X-Request-ID": "req-1"}).status_code == 200
        assert httpx.get(f"{base}/v1/models/nope").status_code == 404

        async def open_stream():
            ws = await websockets.connect(f"ws://127.0.0.1:{port}/v1/models/charlm/stream")
            hello = json.loads(await ws.recv())
            await ws.send(json.dumps({"type": "input", "text": "to be"}))
            assert json.loads(await ws.recv())["type"] == "output"
            return ws, hello["session_id"]

        loop = asyncio.new_event_loop()
        ws, session_id = loop.run_until_complete(open_stream())

        result = {}

        def in_flight():
            result["r"] = httpx.post(f"{base}/v1/models/temporal-order/classify",
                                     json={"inputs": ["XaXbY"]}, timeout=30)

        t = threading.Thread(target=in_flight)
        t.start()
        time.sleep(0.5)                                   # the request now waits in the batcher's queue
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert result["r"].status_code == 200, result["r"].text        # finished, not dropped
        assert result["r"].json()["results"][0]["label"]
        # uvicorn re-raises SIGTERM once it has shut down cleanly, so the exit status says why it stopped
        assert proc.wait(timeout=20) in (0, -signal.SIGTERM)

        async def closed_code():
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except websockets.ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else None
        assert loop.run_until_complete(closed_code()) == 1012              # "service restart": reconnect
        loop.run_until_complete(ws.close())
        loop.close()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/v2/health/live", timeout=1)
    finally:
        if proc.poll() is None:
            proc.kill()

    records = _records(log_path)
    access = [r for r in records if r["logger"] == "service.access"]
    first = next(r for r in access if r.get("request_id") == "req-1")
    assert first["path"] == "/v1/models" and first["status"] == 200 and first["duration_ms"] >= 0
    assert any(r["status"] == 404 and r["route"] is None or r["path"] == "/v1/models/nope" for r in access)
    assert any(r["path"] == "/v1/models/temporal-order/classify" and r["status"] == 200 for r in access)
    messages = [r["message"] for r in records]
    assert "ready" in messages and "stopped" in messages
    assert messages.index("shutting down: draining batchers") < messages.index("stopped")
    opened = next(r for r in records if r["message"] == "stream opened")
    assert opened["session_id"] == session_id and opened["model"] == "charlm"
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
