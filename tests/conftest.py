"""Shared fixtures: apps in-process (``make_client``, ``client``), a real uvicorn server, the device, onnxruntime.

Helper functions (ports, servers, assertions) live in ``tests.helpers``.
"""
from __future__ import annotations

import contextlib
import os

import pytest
from fastapi.testclient import TestClient

from model_core.backend import gpu_available
from service.main import create_app
from service.settings import Settings
from tests.helpers import free_port, start_server, stop_server

# apps built in tests (TestClient) never bind gRPC's default 8001; start_server gives each server its own port
os.environ.setdefault("RNN_SERVE_GRPC_PORT", "0")


@pytest.fixture(scope="module")
def make_client():
    """``make_client(**settings)``: the real app (lifespan run) in a TestClient, open until the module ends.

    A module's ``client`` fixture calls it with the settings its tests need; a test that needs an app
    of its own for one test opens ``TestClient(create_app(...))`` itself."""
    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(TestClient(create_app(Settings(**settings))))


@pytest.fixture(scope="module")
def client(make_client):
    """The app with default settings and the bundled models."""
    return make_client()


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
