"""ONNX models in the model repository, served on every endpoint: HTTP, sessions, WebSocket, v2.

The torch-exported models and torch's outputs are committed golden files
(``scripts/make_onnx_serving_golden.py``), so neither torch nor onnxruntime is needed here:
a char-level LSTM LM (batch-major, no lengths input, per-step output) and an LSTM classifier
whose graph outputs the last step only. Graphs from our own exporter are served without a card
and must equal the same checkpoint served natively; edited copies of them exercise the card's
state batch axis, an already-applied activation, and graphs that fix the batch or time size at 1.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import helper

from tests.helpers import GOLDEN_ROOT, same

import model_core
from model_core.onnx.exporter import to_onnx
from service.main import create_app
from service.model_card import CardError, read_card
from service.settings import DEFAULT_MODEL_DIR, Settings

GOLDEN = GOLDEN_ROOT / "onnx_serving"
LM, CLF = np.load(GOLDEN / "charlm.npz", allow_pickle=False), np.load(GOLDEN / "sentiment.npz", allow_pickle=False)
TEXT, LM_LOGITS = str(LM["text"]), LM["logits"]                                       # (T, V) from torch
SEQS = [s.tolist() for s in np.split(CLF["ids"], np.cumsum(CLF["lengths"])[:-1])]
CHUNKS = [TEXT[:1], TEXT[1:9], TEXT[9:10], TEXT[10:41], TEXT[41:]]
LM_VOCAB = json.loads((GOLDEN / "charlm" / "model-card.json").read_text())["encoding"]["tokens"]


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def assert_top_k_equals(outputs: list[dict], logits: np.ndarray, tol: float = 1e-5) -> float:
    """Per-step top-k equal to softmax(logits): the right tokens, in order, with their probabilities."""
    assert len(outputs) == len(logits)
    worst = 0.0
    for out, p in zip(outputs, softmax(logits.astype(np.float64))):
        got = [t["probability"] for t in out["top_k"]]
        want = p[[t["index"] for t in out["top_k"]]]
        worst = max(worst, float(np.abs(np.array(got) - want).max()))
        assert np.all(want >= np.sort(p)[-len(got)] - tol)                 # they are the top k
        np.testing.assert_allclose(got, want, atol=tol, rtol=0)
    return worst


# -- the repository -------------------------------------------------------------------------------
def _card(folder: Path, card: dict) -> None:
    (folder / "model-card.json").write_text(json.dumps(card))


def _edited(proto: onnx.ModelProto, folder: Path, fix_dims: dict[str, dict[int, int]] = (), transpose_states=False):
    """Save a copy of an exporter graph, optionally with fixed dims or states batch-first (B, S, H)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    g = proto.graph
    for value in [*g.input, *g.output]:
        for axis, size in dict(fix_dims).get(value.name, {}).items():
            value.type.tensor_type.shape.dim[axis].dim_value = size
    if transpose_states:
        for old in g.input:
            if old.name in ("h0", "c0"):
                old.name = old.name[0] + "_in"
                g.node.insert(0, helper.make_node("Transpose", [old.name], [old.name[0] + "0"], perm=[1, 0, 2]))
                dims = old.type.tensor_type.shape.dim
                dims[0].dim_param, dims[1].dim_value = "batch", 1
        outs = []
        for out in g.output:
            if out.name in ("hn", "cn"):
                g.node.append(helper.make_node("Transpose", [out.name], [out.name[0] + "_out"], perm=[1, 0, 2]))
                outs.append(helper.make_tensor_value_info(out.name[0] + "_out", out.type.tensor_type.elem_type, None))
            elif out.name == "probabilities":
                outs.append(out)
        del g.output[:]
        g.output.extend(outs)
        del proto.metadata_props[:]                                      # a foreign graph: it needs a card
    folder.mkdir()
    onnx.save_model(proto, str(folder / "model.onnx"))


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for name in ("charlm", "sentiment"):
        shutil.copytree(GOLDEN / name, root / f"torch-{name}")
    for name in ("charlm", "echo"):
        shutil.copytree(DEFAULT_MODEL_DIR / name, root / name)
        (root / f"{name}-onnx").mkdir()
        onnx.save_model(to_onnx(model_core.load(root / name / "model.safetensors")), str(root / f"{name}-onnx" / "model.onnx"))
    echo = to_onnx(model_core.load(root / "echo" / "model.safetensors"))
    _edited(echo, root / "echo-batch1", fix_dims={n: {1: 1} for n in ("features", "h0", "c0")})
    _edited(echo, root / "echo-onestep", fix_dims={"features": {0: 1}})
    _edited(echo, root / "echo-transposed", transpose_states=True)
    _card(root / "echo-transposed", {
        "task": "seq2seq", "encoding": {"kind": "features", "size": 1}, "labels": ["bit"],
        "input": {"name": "features"}, "lengths": "sequence_lens",
        "output": {"name": "probabilities", "kind": "binary", "activation": "sigmoid"},
        "state": [{"input": "h_in", "output": "h_out", "batch_axis": 0},
                  {"input": "c_in", "output": "c_out", "batch_axis": 0}]})
    # broken ones: each fails alone, with a reason naming what to fix
    lm_card = json.loads((GOLDEN / "charlm" / "model-card.json").read_text())
    for name, card in {"bad-json": None, "bad-field": {**lm_card, "task": "translate"},
                       "bad-binding": {**lm_card, "state": [{"input": "hidden", "output": "hn"}]},
                       "bad-layout": {**lm_card, "output": {"name": "logits", "per_step": False}},
                       "no-card": "omit"}.items():
        shutil.copytree(GOLDEN / "charlm", root / name)
        if card is None:
            (root / name / "model-card.json").write_text("{not json")
        elif card == "omit":
            (root / name / "model-card.json").unlink()
        else:
            _card(root / name, card)
    shutil.copytree(GOLDEN / "charlm", root / "bad-graph")
    (root / "bad-graph" / "model.onnx").write_bytes(b"\x08\x07garbage")
    return root


@pytest.fixture(scope="module")
def client(make_client, repo):
    return make_client(model_dir=repo)


def stream(client, model: str, chunks: list[str], top_k: int = 5) -> list[dict]:
    with client.websocket_connect(f"/v1/models/{model}/stream") as ws:
        assert ws.receive_json()["type"] == "session"
        outputs = []
        for chunk in chunks:
            ws.send_json({"type": "input", "text": chunk, "top_k": top_k})
            reply = ws.receive_json()
            assert reply["type"] == "output", reply
            outputs += reply["outputs"]
    return outputs


def v2(client, model: str, tensor: np.ndarray, params=None, lengths=None, outputs=None) -> dict:
    inputs = [{"name": "INPUT_IDS", "datatype": "INT64", "shape": list(tensor.shape), "data": tensor.ravel().tolist()}]
    if lengths is not None:
        inputs.append({"name": "LENGTHS", "datatype": "INT64", "shape": [len(lengths)], "data": list(lengths)})
    body = {"inputs": inputs, **({"parameters": params} if params else {}),
            **({"outputs": [{"name": n} for n in outputs]} if outputs else {})}
    r = client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in r.json()["outputs"]}


# -- (a) WebSocket against torch --------------------------------------------------------------------
def test_websocket_stream_equals_torch_and_ignores_chunking(client):
    chunked = stream(client, "torch-charlm", CHUNKS)
    assert_top_k_equals(chunked, LM_LOGITS)
    assert same(chunked, stream(client, "torch-charlm", [TEXT]))


# -- (b) HTTP predict and complete --------------------------------------------------------------------
def test_http_predict_ragged_batch_and_complete(client):
    texts = [TEXT, TEXT[:7], TEXT[:30]]                                 # no lengths input: grouped by length
    r = client.post("/v1/models/torch-charlm/predict", json={"inputs": texts, "top_k": 4})
    assert r.status_code == 200, r.text
    for text, outputs in zip(texts, r.json()["outputs"]):
        assert_top_k_equals(outputs, LM_LOGITS[:len(text)])
    k = 20
    r = client.post("/v1/models/torch-charlm/complete",
                    json={"prompt": TEXT[:k], "n": 2, "max_length": 6, "greedy": True, "stop": ["\n"]}).json()
    first = LM_VOCAB[int(LM_LOGITS[k - 1].argmax())]
    assert [c["text"][0] for c in r["completions"]] == [first, first] and r["completions"][0]["tokens"] >= 1
    sampled = client.post("/v1/models/torch-charlm/complete", json={"prompt": "to", "n": 3, "seed": 3}).json()
    assert len(sampled["completions"]) == 3


# -- (c) the sessions API, with state export and import ---------------------------------------------------
def test_session_steps_and_state_round_trip(client):
    sid = client.post("/v1/sessions", json={"model": "torch-charlm"}).json()["session_id"]
    outs = []
    for chunk in CHUNKS[:3]:
        outs += client.post(f"/v1/sessions/{sid}/step", json={"input": chunk}).json()["outputs"]
    blob = client.get(f"/v1/sessions/{sid}/state").content
    other = client.post("/v1/sessions", json={"model": "torch-charlm"}).json()["session_id"]
    assert client.put(f"/v1/sessions/{other}/state", content=blob).status_code == 200
    rest = "".join(CHUNKS[3:])
    tail = client.post(f"/v1/sessions/{other}/step", json={"input": rest}).json()["outputs"]
    assert_top_k_equals(outs + tail, LM_LOGITS)
    done = client.post(f"/v1/sessions/{sid}/complete", json={"greedy": True, "max_length": 3}).json()
    assert done["completions"][0]["text"][0] == LM_VOCAB[int(LM_LOGITS[len(CHUNKS[0] + CHUNKS[1] + CHUNKS[2]) - 1].argmax())]


# -- (d) v2 with Triton's sequence extension ---------------------------------------------------------
def test_v2_sequence_equals_the_websocket(client):
    index = {ch: i for i, ch in enumerate(LM_VOCAB)}
    probs = []
    for i, chunk in enumerate(CHUNKS):
        params = {"sequence_id": 77, "sequence_start": i == 0, "sequence_end": i == len(CHUNKS) - 1}
        probs.append(v2(client, "torch-charlm", np.array([[index[c] for c in chunk]]), params)["PROBABILITIES"][0])
    probs = np.concatenate(probs)
    np.testing.assert_allclose(probs, softmax(LM_LOGITS.astype(np.float64)), atol=1e-5)
    ws = stream(client, "torch-charlm", [TEXT], top_k=3)
    for step, row in zip(ws, probs):
        assert [t["index"] for t in step["top_k"]] == list(np.argsort(-row, kind="stable")[:3])
    meta = client.get("/v2/models/torch-charlm").json()
    assert meta["platform"] == "rnn-serve_onnx" and meta["inputs"][0]["name"] == "INPUT_IDS"


# -- (e) a last-step-only classifier, ragged -----------------------------------------------------------
def test_classifier_ragged_batch_equals_one_by_one_and_torch(client):
    want = softmax(CLF["logits"].astype(np.float64))
    batch = client.post("/v1/models/torch-sentiment/classify", json={"inputs": SEQS}).json()["results"]
    single = [client.post("/v1/models/torch-sentiment/classify", json={"inputs": [s]}).json()["results"][0]
              for s in SEQS]
    labels = ["negative", "neutral", "positive"]
    for b, s, w in zip(batch, single, want):
        np.testing.assert_allclose([b["probabilities"][k] for k in labels], w, atol=1e-6)
        np.testing.assert_allclose([s["probabilities"][k] for k in labels], w, atol=1e-6)
    T = max(map(len, SEQS))
    padded = np.array([s + [0] * (T - len(s)) for s in SEQS])
    out = v2(client, "torch-sentiment", padded, lengths=[len(s) for s in SEQS])
    np.testing.assert_allclose(out["PROBABILITIES"], want, atol=1e-6)
    # streamed step by step: the running class after the last step is the sequence's class
    sid = client.post("/v1/sessions", json={"model": "torch-sentiment"}).json()["session_id"]
    steps = client.post(f"/v1/sessions/{sid}/step", json={"input": SEQS[1], "top_k": 3}).json()["outputs"]
    assert len(steps) == len(SEQS[1])
    np.testing.assert_allclose(sorted(t["probability"] for t in steps[-1]["top_k"]), sorted(want[1]), atol=1e-6)


# -- (f) our own exported graphs, no card, equal the checkpoint served natively ----------------------------
def test_exported_graph_without_card_equals_the_native_model(client):
    texts = ["ROMEO: what", "O", "To be, or not to be"]
    native = client.post("/v1/models/charlm/predict", json={"inputs": texts}).json()["outputs"]
    served = client.post("/v1/models/charlm-onnx/predict", json={"inputs": texts}).json()["outputs"]
    for a, b in zip(native, served):
        same(a, b)
    same(stream(client, "charlm", ["ROM", "EO:"]), stream(client, "charlm-onnx", ["ROMEO", ":"]))
    meta = client.get("/v1/models/charlm-onnx").json()
    assert meta["format"] == "onnx" and meta["binding"] == "metadata_props" and meta["opset"] == 18
    assert [i["name"] for i in meta["inputs"]] == ["input_ids", "sequence_lens", "h0", "c0"]
    assert meta["task"] == "lm" and meta["vocab"] == client.get("/v1/models/charlm").json()["vocab"]


def test_card_batch_axis_activation_and_fixed_dims(client):
    bits = [[[1.0], [0.0], [1.0], [1.0], [0.0]], [[0.0], [1.0]], [[1.0], [1.0], [0.0]]]
    native = client.post("/v1/models/echo/predict", json={"inputs": bits}).json()["outputs"]
    for name in ("echo-onnx", "echo-transposed", "echo-batch1", "echo-onestep"):
        r = client.post(f"/v1/models/{name}/predict", json={"inputs": bits})
        assert r.status_code == 200, (name, r.text)
        for a, b in zip(native, r.json()["outputs"]):
            same(a, b)
    sid = client.post("/v1/sessions", json={"model": "echo-transposed"}).json()["session_id"]
    steps = [client.post(f"/v1/sessions/{sid}/step", json={"input": [x]}).json()["outputs"][0] for x in bits[0]]
    same(native[0], steps)


# -- (g) broken cards and graphs fail alone, clearly -------------------------------------------------------
@pytest.mark.parametrize("name,needles", [
    ("bad-json", ["model-card.json", "not valid JSON"]),
    ("bad-field", ["model-card.json", "field 'task'"]),
    ("bad-binding", ["field 'state[0].input'", "'hidden' is not an input", "tokens, h0, c0"]),
    ("bad-layout", ["field 'output.per_step'", "rank 3"]),
    ("no-card", ["no model-card.json", "model card"]),
    ("bad-graph", ["model.onnx", "not an ONNX model"]),
])
def test_bad_models_fail_with_a_clear_reason(client, name, needles):
    meta = client.get(f"/v1/models/{name}").json()
    assert meta["status"] == "failed" and meta["format"] == "onnx", meta
    for needle in needles:
        assert needle in meta["error"], meta["error"]
    r = client.post(f"/v1/models/{name}/predict", json={"inputs": ["to"]})
    assert r.status_code == 503 and name in r.json()["error"]["message"]
    assert client.get("/v1/models/torch-charlm").json()["status"] == "ready"


@pytest.mark.parametrize("card,needle", [
    ({"encoding": {"kind": "vocab", "tokens": ["a", "a"]}}, "encoding.tokens"),
    ({"encoding": {"kind": "pictures"}}, "field 'encoding'"),
    ({"output": {"name": "logits", "activation": "sigmoid"}}, "output.activation"),
    ({"state": []}, "field 'state'"),
    ({"state": [{"input": "h0", "output": "hn", "batch_axis": 3}]}, "state[0].batch_axis"),
    ({"input": {"name": "tokens", "layout": "sideways"}}, "input.layout"),
    ({"extra": 1}, "field 'extra'"),
])
def test_card_validation_names_the_field(tmp_path, card, needle):
    base = json.loads((GOLDEN / "charlm" / "model-card.json").read_text())
    (tmp_path / "model-card.json").write_text(json.dumps({**base, **card}))
    with pytest.raises(CardError, match="model-card.json") as info:
        read_card(tmp_path / "model-card.json")
    assert needle in str(info.value)


def test_reload_picks_up_onnx_models_and_keeps_live_sessions(tmp_path):
    shutil.copytree(GOLDEN / "sentiment", tmp_path / "sentiment")
    card_path = tmp_path / "sentiment" / "model-card.json"
    with TestClient(create_app(Settings(model_dir=tmp_path, admin_keys=["adm"])),
                    headers={"X-API-Key": "adm"}) as c:
        v1 = c.get("/v1/models/sentiment").json()["version"]
        sid = c.post("/v1/sessions", json={"model": "sentiment"}).json()["session_id"]
        card = json.loads(card_path.read_text())
        card["labels"] = ["bad", "meh", "good"]                          # a card change is a new version
        card_path.write_text(json.dumps(card))
        r = c.post("/v1/admin/models/sentiment/reload").json()
        assert r["current_version"] != v1 and r["loaded"]["labels"] == ["bad", "meh", "good"]
        old = c.post(f"/v1/sessions/{sid}/step", json={"input": "good"}).json()["outputs"][-1]["top_k"]
        assert {t["label"] for t in old} == {"negative", "neutral", "positive"}
        shutil.copytree(GOLDEN / "charlm", tmp_path / "lm")
        assert "lm" in {m["name"] for m in c.post("/v1/admin/models/reload").json()["models"]}
        assert c.get("/v1/models/lm").json()["status"] == "ready"
