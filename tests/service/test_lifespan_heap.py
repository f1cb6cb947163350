"""The service keeps freed memory in the process from startup (an arena, as onnxruntime's), whatever
its models' formats: a native checkpoint's requests reuse pages as an ONNX model's do."""
from __future__ import annotations

from fastapi.testclient import TestClient

import service.main
from service.settings import Settings


def test_the_lifespan_keeps_freed_memory_before_models_load(monkeypatch):
    calls = []
    monkeypatch.setattr(service.main, "keep_freed_memory", lambda: calls.append("heap") or True)
    real = service.main.ModelRegistry.load_all
    monkeypatch.setattr(service.main.ModelRegistry, "load_all", lambda self: calls.append("load") or real(self))
    with TestClient(service.main.create_app(Settings())) as client:
        assert client.get("/v2/health/ready").status_code == 200
    assert calls == ["heap", "load"]
