"""RNN_SERVE_WEIGHTS=bfloat16 through the real app: the bundled LSTMs, and an ONNX graph exported
from one, serve from bfloat16 weights (GET /v1/models/{name} says so) and answer as the float32
models do up to the rounding; a model whose layers or nodes cannot (an RNN, as a checkpoint and as
an ONNX graph) stays float32 with a warning instead of failing to load."""
from __future__ import annotations

import logging
import shutil

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from model_core import native
from model_core.config import ModelConfig
from model_core.model import SequenceModel
from service.main import create_app
from service.settings import DEFAULT_MODEL_DIR, Settings
from tests.service.test_service_http import HARD_R

pytestmark = pytest.mark.skipif(not native.AVAILABLE, reason=f"native kernels unavailable: {native.REASON}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    """The bundled models, the temporal-order LSTM as an ONNX graph, and an RNN classifier as a
    checkpoint and as an ONNX graph."""
    from model_core import load, save
    from model_core.onnx import export
    root = tmp_path_factory.mktemp("models")
    for name in ("temporal-order", "charlm"):
        shutil.copytree(DEFAULT_MODEL_DIR / name, root / name)
    export(load(root / "temporal-order" / "model.safetensors"), root / "temporal-order-onnx" / "model.onnx")
    config = ModelConfig(task="classify", cell="rnn", input_encoding="features", input_size=3, hidden_size=8,
                         output_size=2, labels=("a", "b"))
    save(SequenceModel(config, seed=0), root / "elman" / "model.safetensors")
    export(SequenceModel(config, seed=0), root / "elman-onnx" / "model.onnx")
    return root


def test_the_lstms_serve_bfloat16_and_an_rnn_stays_float32(repo, caplog):
    body = {"inputs": [HARD_R, "BaXbYE", "BbYaaXcE"]}
    with TestClient(create_app(Settings(model_dir=repo))) as c:
        exact = c.post("/v1/models/temporal-order/classify", json=body).json()["results"]
        for name in ("temporal-order", "temporal-order-onnx"):
            assert c.get(f"/v1/models/{name}").json()["weights"] == "float32"
    with caplog.at_level(logging.WARNING), TestClient(create_app(Settings(model_dir=repo, weights="bfloat16"))) as c:
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v1/models/temporal-order").json()["weights"] == "bfloat16"
        assert c.get("/v1/models/charlm").json()["weights"] == "bfloat16"
        assert c.get("/v1/models/temporal-order-onnx").json()["weights"] == "bfloat16"
        for name in ("elman", "elman-onnx"):
            elman = c.get(f"/v1/models/{name}").json()
            assert elman["status"] == "ready" and elman["weights"] == "float32"
        got = c.post("/v1/models/temporal-order/classify", json=body).json()["results"]
        from_onnx = c.post("/v1/models/temporal-order-onnx/classify", json=body).json()["results"]
        completion = c.post("/v1/models/charlm/complete", json={"prompt": "ROMEO:", "greedy": True,
                                                                 "max_length": 20}).json()
        with c.websocket_connect("/v1/models/charlm/stream") as ws:
            hello = ws.receive_json()
            ws.send_json({"type": "input", "text": "ROMEO", "id": 1, "top_k": 3})
            streamed = ws.receive_json()
    assert [r["label"] for r in got] == [r["label"] for r in exact]
    for g, e in zip(got, exact):
        for k, v in e["probabilities"].items():
            assert g["probabilities"][k] == pytest.approx(v, abs=2e-2)
    for o, g in zip(from_onnx, got):                     # the same kernel on the same rounded weights; the
        assert o["label"] == g["label"]                  # graph's head rounds apart from the engine's
        assert o["probabilities"] == pytest.approx(g["probabilities"], abs=1e-6)
    assert isinstance(completion["completions"][0]["text"], str) and completion["completions"][0]["text"]
    assert hello["type"] == "session" and streamed["type"] == "output" and len(streamed["outputs"]) == 5
    warned = sorted(r.getMessage() for r in caplog.records if "stays float32" in r.getMessage())
    assert len(warned) == 2 and all("LSTM and GRU" in w for w in warned)
    assert "model elman " in warned[0] and "model elman-onnx " in warned[1] and "RNN node" in warned[1]


def test_an_unknown_format_is_refused_with_the_choices():
    with pytest.raises(ValidationError, match="float32"):
        Settings(weights="float16")
