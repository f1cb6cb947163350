"""Model reload with live sessions and versioning; the request body size limit."""
from __future__ import annotations

import shutil

from fastapi.testclient import TestClient

import model_core
from service.main import create_app
from service.settings import DEFAULT_MODEL_DIR, Settings


def test_reload_keeps_live_sessions_on_their_version(tmp_path):
    shutil.copytree(DEFAULT_MODEL_DIR / "echo", tmp_path / "echo")
    path = tmp_path / "echo" / "model.safetensors"
    with TestClient(create_app(Settings(model_dir=tmp_path, admin_keys=["adm"])), headers={"X-API-Key": "adm"}) as c:
        v1 = c.get("/v1/models/echo").json()["version"]
        old = c.post("/v1/sessions", json={"model": "echo"}).json()["session_id"]
        c.post(f"/v1/sessions/{old}/step", json={"input": [[1], [0]]})
        before = c.post("/v1/sessions", json={"model": "echo"}).json()["session_id"]
        ref = c.post(f"/v1/sessions/{before}/step", json={"input": [[1], [0], [1]]}).json()["outputs"][-1]

        model = model_core.load(path)                                   # a "retrained" model: new weights
        model.head.parameters()["bias"][...] += 5.0
        model_core.save(model, path)
        r = c.post("/v1/admin/models/echo/reload").json()
        v2 = r["current_version"]
        assert v2 != v1 and c.get("/v1/models/echo").json()["version"] == v2

        # the live session continues on v1 and gives exactly the v1 answer
        assert c.post(f"/v1/sessions/{old}/step", json={"input": [[1]]}).json()["outputs"][-1] == ref
        new = c.post("/v1/sessions", json={"model": "echo"}).json()
        assert new["model_version"] == v2
        got = c.post(f"/v1/sessions/{new['session_id']}/step", json={"input": [[1], [0], [1]]}).json()["outputs"][-1]
        assert got != ref

        path.write_bytes(b"broken")                                     # a bad file never replaces a good model
        r = c.post("/v1/admin/models/echo/reload").json()
        assert r["loaded"]["status"] == "failed" and r["current_version"] == v2
        assert c.post("/v1/models/echo/predict", json={"inputs": [[[1]]]}).status_code == 200
        assert c.post("/v1/admin/models/nope/reload").status_code == 404

        shutil.copytree(DEFAULT_MODEL_DIR / "temporal-order", tmp_path / "temporal-order")
        names = {m["name"] for m in c.post("/v1/admin/models/reload").json()["models"]}
        assert "temporal-order" in names
        assert c.get("/v1/models/temporal-order").json()["status"] == "ready"


def test_request_body_limit():
    with TestClient(create_app(Settings(max_request_bytes=2000))) as c:
        big = {"inputs": ["a" * 3000]}
        r = c.post("/v1/models/charlm/predict", json=big)
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        def chunks():                                                   # no Content-Length: counted as it streams
            yield b'{"inputs": ["'
            for _ in range(10):
                yield b"a" * 500
            yield b'"]}'
        r = c.post("/v1/models/charlm/predict", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post("/v1/models/charlm/predict", json={"inputs": ["ok"]}).status_code == 200


def test_response_size_limit_on_v1_predict():
    with TestClient(create_app(Settings(max_response_bytes=20_000))) as c:
        r = c.post("/v1/models/charlm/predict", json={"inputs": ["hello world"] * 4, "top_k": 20})
        assert r.status_code == 413 and "would be about" in r.json()["error"]["message"]
        assert c.post("/v1/models/charlm/predict", json={"inputs": ["hello"], "top_k": 3}).status_code == 200
