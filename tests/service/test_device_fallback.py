"""RNN_SERVE_DEVICE=auto on a host without a usable GPU: the service starts on the CPU and says so."""
from __future__ import annotations

import logging

from fastapi.testclient import TestClient

from model_core.backend import gpu_available
from service.main import create_app
from service.settings import Settings


def test_auto_device_reports_what_it_chose_in_the_logs_and_v2(caplog):
    with caplog.at_level(logging.INFO), TestClient(create_app(Settings(device="auto"))) as client:
        meta = client.get("/v2").json()
        ready = client.get("/v2/health/ready").status_code
    chosen = "gpu" if gpu_available() else "cpu"
    assert meta["device"] == chosen and ready == 200
    fallback = [r for r in caplog.records if "no usable GPU" in r.getMessage()]
    assert len(fallback) == (chosen == "cpu") and all(r.levelno == logging.WARNING for r in fallback)
    assert any(getattr(r, "device", None) == chosen for r in caplog.records if r.getMessage() == "ready")
