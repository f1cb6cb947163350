"""The gRPC server lives in the app's lifespan: up with the app, gone after it, loud on a busy port."""
from __future__ import annotations

import queue
import signal
import socket
import time

import numpy as np
import pytest
import tritonclient.grpc as tritonclient_grpc
from fastapi.testclient import TestClient

from tests.helpers import free_port, start_server
from service.main import create_app
from service.settings import Settings


def test_started_in_the_lifespan_sharing_sessions_with_http_and_stopped_after_it():
    port = free_port()
    with TestClient(create_app(Settings(grpc_port=port))) as http:
        assert http.app.state.grpc is not None
        c = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        assert c.is_server_live() and c.is_server_ready()
        x = tritonclient_grpc.InferInput("INPUT_IDS", [1, 2], "INT64")
        x.set_data_from_numpy(np.array([[3, 4]], dtype=np.int64))
        c.infer("charlm", [x], sequence_id="shared", sequence_start=True)        # started over gRPC ...
        body = {"inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [1, 1], "data": [5]}],
                "parameters": {"sequence_id": "shared", "sequence_end": True}}
        r = http.post("/v2/models/charlm/infer", json=body)                      # ... continued over HTTP
        assert r.status_code == 200, r.text
        c.close()
    with socket.socket() as s:                                                    # the port is free again
        s.bind(("127.0.0.1", port))


def test_port_zero_disables_grpc():
    with TestClient(create_app(Settings(grpc_port=0))) as http:
        assert http.app.state.grpc is None


def test_a_busy_port_fails_startup_naming_the_address():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}"):
            with TestClient(create_app(Settings(grpc_port=port))):
                pass



def test_sigterm_drains_grpc_and_an_open_stream_does_not_hold_shutdown():
    http_port, grpc_port = free_port(), free_port()
    proc = start_server(http_port, {"RNN_SERVE_GRPC_PORT": str(grpc_port), "RNN_SERVE_SHUTDOWN_TIMEOUT_SECONDS": "1"})
    c = tritonclient_grpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    results: queue.Queue = queue.Queue()
    try:
        c.start_stream(callback=lambda result, error: results.put((result, error)))
        x = tritonclient_grpc.InferInput("INPUT_IDS", [1, 2], "INT64")
        x.set_data_from_numpy(np.array([[3, 4]], dtype=np.int64))
        c.async_stream_infer("charlm", [x], sequence_id="open", sequence_start=True)
        assert results.get(timeout=30)[1] is None                       # the stream is live and stays open
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert time.monotonic() - t0 < 10                                # 1 s grace, not forever
        _, error = results.get(timeout=10)                               # the client hears the stream end
        assert error is not None
    finally:
        if proc.poll() is None:
            proc.kill()
        c.stop_stream()
        c.close()
    log = proc.stderr.read().decode(errors="replace")
    assert "Traceback" not in log, log[-2000:]
