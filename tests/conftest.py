"""Shared fixtures: a real uvicorn server on a free loopback port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from model_core.backend import gpu_available

ROOT = Path(__file__).resolve().parents[1]
# apps built in tests (TestClient) never bind gRPC's default 8001; start_server gives each server its own port
os.environ.setdefault("RNN_SERVE_GRPC_PORT", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, env_extra: dict | None = None, timeout: float = 30.0,
                 log_path: Path | None = None, python: str = sys.executable, cwd: Path = ROOT) -> subprocess.Popen:
    """``log_path``: stderr into a file, for servers that may log a lot (an unread pipe would block them).
    ``python``/``cwd``: another interpreter, run outside the worktree (an installed package, not this tree)."""
    env = {**os.environ, "RNN_SERVE_LOG_LEVEL": "warning", "RNN_SERVE_GRPC_PORT": str(free_port()),
           **(env_extra or {})}
    log = open(log_path, "ab") if log_path else None
    proc = subprocess.Popen([python, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=log or subprocess.PIPE)
    if log:
        log.close()                                   # the server holds its own descriptor
    try:
        wait_ready(proc, port, timeout)
    except RuntimeError as exc:
        proc.kill()                                   # first: reading a live server's stderr would block
        proc.wait()
        err = Path(log_path).read_bytes() if log_path else proc.stderr.read()
        raise RuntimeError(f"{exc}: {err.decode(errors='replace')[-2000:]}") from None
    return proc


def wait_ready(proc: subprocess.Popen, port: int, timeout: float = 30.0) -> None:
    """Until ``/v2/health/ready`` answers 200; RuntimeError if the process exits or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not become ready")


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM (the graceful drain), then SIGKILL if it has not exited within ``timeout``."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def live_server():
    port = free_port()
    proc = start_server(port)
    yield f"127.0.0.1:{port}"
    stop_server(proc)


@pytest.fixture(params=["cpu", pytest.param("gpu", marks=pytest.mark.gpu)])
def device(request):
    """Write a test once, run it on both backends; the GPU run skips without CuPy and a device."""
    if request.param == "gpu" and not gpu_available():
        pytest.skip("needs CuPy and a CUDA device")
    return request.param


@pytest.fixture(scope="module")
def ort():
    """onnxruntime, the reference for the ONNX tests (skipped where it is not installed)."""
    return pytest.importorskip("onnxruntime")
