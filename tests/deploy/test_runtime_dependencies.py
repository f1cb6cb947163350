"""The runtime pins are complete: ``pip install .`` with no extras, into a fresh virtualenv, serves every
kind of endpoint, the WebSocket stream included (uvicorn needs a WebSocket library of its own, which
only the dev extra used to bring, so the suite passed while the image answered 404)."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys

import httpx
import pytest

from tests.helpers import ROOT, free_port, start_server
from tests.helpers import type_text
from tests.helpers import same


@pytest.mark.slow
def test_package_without_extras_serves_http_and_websocket(tmp_path):
    src, venv = tmp_path / "src", tmp_path / "venv"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):                 # a copy: pip builds in-tree otherwise
        shutil.copy(ROOT / name, src / name)
    for pkg in ("model_core", "service"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    assert "numba==" not in installed and "pytest==" not in installed          # no extras came along

    port = free_port()
    server = start_server(port, {"RNN_SERVE_MODEL_DIR": str(ROOT / "models")}, timeout=120,
                          log_path=tmp_path / "server.log", python=str(venv / "bin" / "python"), cwd=tmp_path)
    try:
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(f"{base}/v1/models/temporal-order/classify", json={"inputs": ["BaXbcYdE"]}, timeout=30)
        assert r.status_code == 200, r.text
        streamed = asyncio.run(type_text(f"ws://127.0.0.1:{port}", "To be, or not", chunk=4))
        ref = httpx.post(f"{base}/v1/models/charlm/predict", json={"inputs": ["To be, or not"], "top_k": 2},
                         timeout=30).json()["outputs"][0]
        assert same(streamed, ref)
    finally:
        server.terminate()
        server.wait(timeout=15)
