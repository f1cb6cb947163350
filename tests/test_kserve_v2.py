"""KServe v2 / Triton protocol: metadata, stateless infer, the sequence extension, errors."""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings

TEXT = "To be, or not to be: that is"


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings())) as c:
        yield c


def ids(client, text):
    vocab = client.get("/v1/models/charlm").json()["vocab"]
    return [vocab.index(ch) for ch in text]


def infer(client, model, tensor_ids=None, params=None, outputs=None, features=None, lengths=None, status=200):
    if features is not None:
        arr = np.asarray(features, dtype=float)
        inputs = [{"name": "INPUT", "datatype": "FP32", "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}]
    else:
        arr = np.asarray(tensor_ids)
        inputs = [{"name": "INPUT_IDS", "datatype": "INT64", "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}]
    if lengths is not None:
        inputs.append({"name": "LENGTHS", "datatype": "INT64", "shape": [len(lengths)], "data": lengths})
    body = {"inputs": inputs, "id": "req-1"}
    if params:
        body["parameters"] = params
    if outputs:
        body["outputs"] = [{"name": n} for n in outputs]
    r = client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == status, r.text
    return r.json()


def tensor(resp, name):
    t = next(o for o in resp["outputs"] if o["name"] == name)
    return np.asarray(t["data"]).reshape(t["shape"])


def test_server_and_model_metadata(client):
    meta = client.get("/v2").json()
    assert "sequence" in meta["extensions"] and meta["name"] == "rnn-serve"
    m = client.get("/v2/models/temporal-order").json()
    assert m["name"] == "temporal-order" and m["platform"] == "rnn-serve_lstm"
    assert m["inputs"][0] == {"name": "INPUT_IDS", "datatype": "INT64", "shape": [-1, -1]}
    assert {o["name"] for o in m["outputs"]} == {"PROBABILITIES", "CLASS", "LOGITS"}
    assert client.get(f"/v2/models/temporal-order/versions/{m['versions'][0]}").json() == m
    assert client.get("/v2/models/echo").json()["inputs"][0]["shape"] == [-1, -1, 1]
    assert client.get("/v2/models/temporal-order/ready").json()["ready"] is True


def test_stateless_classify_with_lengths_matches_v1(client):
    seqs = ["B" + "ab" * 6 + "X" + "cd" * 20 + "Y" + "ba" * 22 + "E", "BaYbXcE"]
    vocab = client.get("/v1/models/temporal-order").json()["vocab"]
    T = max(map(len, seqs))
    x = [[vocab.index(ch) for ch in s] + [0] * (T - len(s)) for s in seqs]
    resp = infer(client, "temporal-order", x, lengths=[len(s) for s in seqs])
    assert resp["id"] == "req-1" and resp["model_version"]
    v1 = client.post("/v1/models/temporal-order/classify", json={"inputs": seqs}).json()["results"]
    probs = tensor(resp, "PROBABILITIES")
    assert tensor(resp, "CLASS").tolist() == [r["index"] for r in v1]
    np.testing.assert_allclose(probs, [[r["probabilities"][k] for k in "QRSU"] for r in v1], atol=1e-6)


def test_sequence_over_v2_equals_the_websocket_stream(client):
    chunks = [TEXT[:9], TEXT[9:10], TEXT[10:]]
    v2_probs = []
    for i, chunk in enumerate(chunks):
        params = {"sequence_id": 42, "sequence_start": i == 0, "sequence_end": i == len(chunks) - 1}
        resp = infer(client, "charlm", [ids(client, chunk)], params=params)
        assert resp["parameters"]["sequence_id"] == 42
        v2_probs.append(tensor(resp, "PROBABILITIES")[0])                     # (T_i, V)
    v2_probs = np.concatenate(v2_probs)
    with client.websocket_connect("/v1/models/charlm/stream") as ws:
        ws.receive_json()
        ws.send_json({"type": "input", "text": TEXT, "top_k": 3})
        outs = ws.receive_json()["outputs"]
    for step, row in zip(outs, v2_probs):
        assert [t["index"] for t in step["top_k"]] == list(np.argsort(-row, kind="stable")[:3])
        np.testing.assert_allclose([t["probability"] for t in step["top_k"]], np.sort(row)[::-1][:3], rtol=1e-5)
    # sequence_end released it: continuing without a start is a clear 400
    err = infer(client, "charlm", [[1]], params={"sequence_id": 42}, status=400)
    assert "sequence_start" in err["error"]


def test_sequence_start_resets_and_string_ids(client):
    first = infer(client, "charlm", [[5, 6]], params={"sequence_id": "user-7", "sequence_start": True})
    infer(client, "charlm", [[7]], params={"sequence_id": "user-7"})
    again = infer(client, "charlm", [[5, 6]], params={"sequence_id": "user-7", "sequence_start": True})
    np.testing.assert_allclose(tensor(first, "PROBABILITIES"), tensor(again, "PROBABILITIES"), atol=1e-6)
    resp = infer(client, "charlm", [[5]], params={"sequence_id": "user-7"}, outputs=["LOGITS"])
    assert [o["name"] for o in resp["outputs"]] == ["LOGITS"]


def test_echo_features_over_v2(client):
    bits = [1, 0, 1, 1, 0, 1]
    resp = infer(client, "echo", features=[[[b] for b in bits]])
    assert (tensor(resp, "PROBABILITIES")[0, 3:, 0] > 0.5).astype(int).tolist() == bits[:3]


@pytest.mark.parametrize("body,status,needle", [
    ({"inputs": [{"name": "X", "datatype": "INT64", "shape": [1, 1], "data": [1]}]}, 400, "takes inputs"),
    ({"inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [1, 3], "data": [1]}]}, 400, "needs 3 values"),
    ({"inputs": [{"name": "INPUT_IDS", "datatype": "STRING", "shape": [1], "data": ["a"]}]}, 400, "not supported"),
    ({"inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [1, 1], "data": [999]}]}, 400, "must lie in"),
    ({"inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [2], "data": [1, 2]}]}, 400, "must have shape"),
    ({"inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]}],
      "parameters": {"sequence_id": 5, "sequence_start": True}}, 400, "batch size 1"),
    ({"inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
      "parameters": {"sequence_start": True}}, 400, "non-zero"),
    ({"inputs": [{"name": "INPUT_IDS", "datatype": "INT64", "shape": [1, 1], "data": [1]}],
      "outputs": [{"name": "NOPE"}]}, 400, "unknown outputs"),
    ({"inputs": []}, 400, "inputs"),
])
def test_v2_errors_use_the_protocol_shape(client, body, status, needle):
    r = client.post("/v2/models/charlm/infer", json=body)
    assert r.status_code == status and set(r.json()) == {"error"} and needle in r.json()["error"], r.text


def test_unknown_model_and_version(client):
    assert client.post("/v2/models/nope/infer", json={"inputs": [{}]}).status_code == 404
    assert client.get("/v2/models/charlm/versions/0").status_code == 404
