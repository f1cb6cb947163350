"""The v1 HTTP API through the real app (lifespan included): models, classify, predict, complete, errors."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

import model_core
from service.main import create_app
from service.settings import DEFAULT_MODEL_DIR, Settings
from tests.helpers import err

HARD_R = "Bab" + "c" * 10 + "X" + "d" * 40 + "Y" + "a" * 40 + "E"     # X then Y: class R


@pytest.fixture(scope="module")
def client(make_client):
    return make_client(max_batch_sequences=8, max_sequence_length=200, max_completion_length=50)


def test_models_listed_with_metadata(client):
    names = {m["name"] for m in client.get("/v1/models").json()["models"]}
    assert {"charlm", "echo", "temporal-order"} <= names
    meta = client.get("/v1/models/temporal-order").json()
    assert meta["task"] == "classify" and meta["labels"] == ["Q", "R", "S", "U"] and meta["cell"] == "lstm"
    assert meta["status"] == "ready" and len(meta["version"]) == 12 and meta["device"] == "cpu"
    lm = client.get("/v1/models/charlm").json()
    assert lm["task"] == "lm" and lm["vocab_size"] == len(lm["vocab"]) > 50
    err(client.get("/v1/models/missing"), 404, "not_found")


def test_classify_ragged_batch_equals_one_by_one(client):
    inputs = [HARD_R, "BaXbYE", "BbYaaXcE", [6, 0, 2, 1, 7]]
    batch = client.post("/v1/models/temporal-order/classify", json={"inputs": inputs, "top_k": 2}).json()["results"]
    assert batch[0]["label"] == "R" and batch[0]["probabilities"]["R"] > 0.9
    assert [t["label"] for t in batch[0]["top_k"]][0] == "R" and len(batch[0]["top_k"]) == 2
    for item, got in zip(inputs, batch):
        alone = client.post("/v1/models/temporal-order/classify", json={"inputs": [item]}).json()["results"][0]
        assert alone["label"] == got["label"]
        for k, v in alone["probabilities"].items():
            assert v == pytest.approx(got["probabilities"][k], abs=1e-6)


def test_predict_echo_and_lm(client):
    bits = [1, 0, 1, 1, 0, 0, 1, 0]
    out = client.post("/v1/models/echo/predict", json={"inputs": [[[b] for b in bits]]}).json()["outputs"][0]
    assert [o["bits"][0] for o in out][3:] == bits[:-3]                  # echoed 3 steps later
    lm = client.post("/v1/models/charlm/predict", json={"inputs": ["To be, or not to b"], "top_k": 3}).json()
    steps = lm["outputs"][0]
    assert len(steps) == 18 and len(steps[-1]["top_k"]) == 3
    assert steps[-1]["top_k"][0]["label"] == "e"                         # "...not to b" -> "e"


def test_predict_matches_the_engine(client):
    model = model_core.load(DEFAULT_MODEL_DIR / "charlm" / "model.safetensors")
    text = "KING HENRY"
    ids = np.array([model.config.vocab.index(ch) for ch in text]).reshape(-1, 1)
    logits, _ = model.forward(ids)
    p = np.exp(logits[-1, 0] - logits[-1, 0].max())
    p /= p.sum()
    got = client.post("/v1/models/charlm/predict", json={"inputs": [text], "top_k": 1}).json()["outputs"][0][-1]
    assert got["top_k"][0]["index"] == int(p.argmax())
    assert got["top_k"][0]["probability"] == pytest.approx(float(p.max()), rel=1e-5)


def test_complete_options(client):
    body = {"prompt": "ROMEO:", "n": 3, "max_length": 20, "temperature": 0.8, "top_k": 5, "seed": 7}
    a = client.post("/v1/models/charlm/complete", json=body).json()["completions"]
    b = client.post("/v1/models/charlm/complete", json=body).json()["completions"]
    assert a == b and len(a) == 3                                         # seeded: reproducible
    greedy = client.post("/v1/models/charlm/complete", json={"prompt": "ROMEO:", "greedy": True, "n": 2,
                                                              "max_length": 30, "stop": ["\n"]}).json()["completions"]
    assert greedy[0] == greedy[1] and greedy[0]["text"].endswith("\n") and greedy[0]["finish_reason"] == "stop"


@pytest.mark.parametrize("path,body,status,code", [
    ("/v1/models/charlm/classify", {"inputs": ["abc"]}, 422, "invalid_input"),              # wrong task
    ("/v1/models/temporal-order/predict", {"inputs": ["BXYE"]}, 422, "invalid_input"),
    ("/v1/models/echo/complete", {"prompt": "x"}, 422, "invalid_input"),
    ("/v1/models/temporal-order/classify", {"inputs": ["BXqE"]}, 422, "invalid_input"),     # unknown symbol
    ("/v1/models/temporal-order/classify", {"inputs": [[0, 99]]}, 422, "invalid_input"),     # id out of range
    ("/v1/models/temporal-order/classify", {"inputs": [[[0.5] * 8]]}, 422, "invalid_input"),  # features to an id model
    ("/v1/models/echo/predict", {"inputs": [[[1, 2]]]}, 422, "invalid_input"),               # wrong feature count
    ("/v1/models/echo/predict", {"inputs": ["101"]}, 422, "invalid_input"),                  # text to a feature model
    ("/v1/models/temporal-order/classify", {"inputs": [""]}, 422, "invalid_input"),          # empty sequence
    ("/v1/models/temporal-order/classify", {"inputs": []}, 422, "invalid_request"),
    ("/v1/models/temporal-order/classify", {"inputs": ["BXYE"], "extra": 1}, 422, "invalid_request"),
    ("/v1/models/temporal-order/classify", {"inputs": ["BXYE"] * 9}, 413, "payload_too_large"),
    ("/v1/models/temporal-order/classify", {"inputs": ["B" + "a" * 300 + "E"]}, 413, "payload_too_large"),
    ("/v1/models/charlm/complete", {"prompt": "a", "max_length": 51}, 413, "payload_too_large"),
    ("/v1/models/charlm/complete", {"prompt": "a", "stop": ["\u00e9"]}, 422, "invalid_input"),
    ("/v1/models/charlm/complete", {"prompt": ""}, 422, "invalid_request"),
    ("/v1/models/charlm/complete", {"prompt": "a", "temperature": -1}, 422, "invalid_request"),
    ("/v1/models/nope/classify", {"inputs": ["x"]}, 404, "not_found"),
])
def test_bad_requests_get_clear_errors(client, path, body, status, code):
    err(client.post(path, json=body), status, code)


def test_malformed_json_and_unknown_routes(client):
    r = client.post("/v1/models/echo/predict", content=b"{not json", headers={"content-type": "application/json"})
    err(r, 422, "invalid_request")
    err(client.get("/v1/nothing-here"), 404, "not_found")
    err(client.get("/v1/models/echo/classify"), 405, "method_not_allowed")
    assert client.get("/v2/health/live").json() == {"live": True}        # still serving


def test_health_and_failed_model(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"garbage")
    with TestClient(create_app(Settings(model_dir=tmp_path))) as c:
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 503
        meta = c.get("/v1/models/broken").json()
        assert meta["status"] == "failed" and "truncated or corrupt" in meta["error"]
        msg = err(c.post("/v1/models/broken/predict", json={"inputs": ["x"]}), 503, "unavailable")
        assert "not ready" in msg
        assert c.get("/v2/models/broken/ready").status_code == 503
    with TestClient(create_app(Settings())) as c:
        assert c.get("/v2/health/ready").json() == {"ready": True}
        assert c.get("/v2/models/echo/ready").json() == {"name": "echo", "ready": True}
        assert "/v1/models/{name}/classify" in c.get("/openapi.json").json()["paths"]
