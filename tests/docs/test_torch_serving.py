"""Serve your PyTorch model, end to end: both routes of docs/pytorch.md through a real server.

Three torch models (a char-LSTM language model: Embedding + 2-layer ``batch_first`` LSTM + Linear;
a GRU classifier; a bidirectional LSTM classifier) are each put into one temporary model folder
twice: converted by ``model_core.from_torch`` and saved with ``model_core.save``, and exported by
``torch.onnx.export`` with a ``model-card.json``. A fourth, with a ReLU MLP head that
``from_torch`` refuses, goes the ONNX route only. One uvicorn serves the folder
(``RNN_SERVE_MODEL_DIR``), and what /v1 predict, classify, complete and the WebSocket stream
return is compared with torch's own outputs.
"""
from __future__ import annotations

import io
import json
import warnings

import httpx
import numpy as np
import pytest

from tests.helpers import free_port, start_server, stop_server

import model_core

torch = pytest.importorskip("torch")
nn = torch.nn
pytestmark = pytest.mark.torch
VOCAB = list("\n !',.:;?abcdefghijklmnopqrstuvwxyz")
LABELS = ["negative", "neutral", "positive"]
TEXT = "to be, or not to be: that is the question.\nwhether 'tis nobler"
SENTENCES = ["good", "not good at all", "fine.", "a terrible, terrible day", "y"]
TOL = 1e-5


class CharLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(len(VOCAB), 12)
        self.lstm = nn.LSTM(12, 24, num_layers=2, batch_first=True)
        self.head = nn.Linear(24, len(VOCAB))

    def forward(self, tokens, h0, c0):                        # tokens (B, T)
        y, (hn, cn) = self.lstm(self.embedding(tokens), (h0, c0))
        return self.head(y), hn, cn                           # logits (B, T, V)


class MlpHeadLM(nn.Module):
    """Beyond from_torch (a ReLU MLP after the GRU), so it goes the ONNX route only."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(len(VOCAB), 8)
        self.rnn = nn.GRU(8, 16, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, len(VOCAB)))

    def forward(self, tokens, h0):
        y, hn = self.rnn(self.embedding(tokens), h0)
        return self.mlp(y) * 4.0, hn


class Classifier(nn.Module):
    """GRU (time-major) or bidirectional LSTM (batch_first) on the final hidden state."""

    def __init__(self, bidirectional: bool):
        super().__init__()
        self.embedding = nn.Embedding(len(VOCAB), 8)
        self.rnn = (nn.LSTM(8, 10, bidirectional=True, batch_first=True) if bidirectional else nn.GRU(8, 10))
        self.head = nn.Linear(20 if bidirectional else 10, len(LABELS))

    def forward(self, tokens, *state):
        y, new = self.rnn(self.embedding(tokens), state if len(state) > 1 else state[0])
        h = new[0] if isinstance(new, tuple) else new
        feats = torch.cat([h[-2], h[-1]], -1) if self.rnn.bidirectional else h[-1]
        return (self.head(feats), *(new if isinstance(new, tuple) else (new,)))


def ids(text: str) -> torch.Tensor:
    return torch.tensor([VOCAB.index(c) for c in text])


def export_onnx(net, tokens, states, folder, card: dict) -> None:
    """The doc's ONNX route: the TorchScript exporter (dynamo=False) with dynamic batch and time."""
    batch_first = isinstance(net, CharLM) or net.rnn.batch_first
    seq = {0: "batch", 1: "time"} if batch_first else {0: "time", 1: "batch"}
    names = ["h0", "c0"][:len(states)]
    outs = ["hn", "cn"][:len(states)]
    dynamic = {"tokens": seq, "logits": seq if card["output"].get("per_step", True) else {0: "batch"},
               **{n: {1: "batch"} for n in names + outs}}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                      # the legacy exporter's deprecation notes
        torch.onnx.export(net, (tokens, *states), buffer, dynamo=False, opset_version=17,
                          input_names=["tokens", *names], output_names=["logits", *outs], dynamic_axes=dynamic)
    folder.mkdir()
    (folder / "model.onnx").write_bytes(buffer.getvalue())
    (folder / "model-card.json").write_text(json.dumps(card, indent=2))


def state_card(n: int) -> list[dict]:
    return [{"input": i, "output": o} for i, o in (("h0", "hn"), ("c0", "cn"))[:n]]


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    lm = CharLM().eval()
    with torch.no_grad():
        lm.head.weight.mul_(4.0)                             # peaky: clear top-k and greedy choices
    torch.manual_seed(1)
    gru = Classifier(bidirectional=False).eval()
    torch.manual_seed(2)
    bi = Classifier(bidirectional=True).eval()
    torch.manual_seed(3)
    return {"charlm": lm, "gru": gru, "bilstm": bi, "mlp": MlpHeadLM().eval()}


@pytest.fixture(scope="module")
def server(nets, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    lm, gru, bi = nets["charlm"], nets["gru"], nets["bilstm"]
    model_core.save(model_core.from_torch(lm, task="lm", vocab=VOCAB), root / "charlm" / "model.safetensors")
    for name, net in (("gru", gru), ("bilstm", bi)):
        model = model_core.from_torch(net, task="classify", vocab=VOCAB, labels=LABELS)
        model_core.save(model, root / name / "model.safetensors")
    vocab = {"kind": "vocab", "tokens": VOCAB}
    export_onnx(lm, torch.zeros(2, 5, dtype=torch.long), (torch.zeros(2, 2, 24),) * 2, root / "charlm-onnx",
                {"task": "lm", "encoding": vocab, "input": {"name": "tokens", "layout": "batch_major"},
                 "output": {"name": "logits"}, "state": state_card(2)})
    export_onnx(gru, torch.zeros(5, 2, dtype=torch.long), (torch.zeros(1, 2, 10),), root / "gru-onnx",
                {"task": "classify", "encoding": vocab, "labels": LABELS, "input": {"name": "tokens"},
                 "output": {"name": "logits", "per_step": False}, "state": state_card(1)})
    export_onnx(bi, torch.zeros(2, 5, dtype=torch.long), (torch.zeros(2, 2, 10),) * 2, root / "bilstm-onnx",
                {"task": "classify", "encoding": vocab, "labels": LABELS,
                 "input": {"name": "tokens", "layout": "batch_major"},
                 "output": {"name": "logits", "per_step": False}, "state": state_card(2)})
    with pytest.raises(model_core.TorchImportError, match=r"mlp.1 \(ReLU\)"):
        model_core.from_torch(nets["mlp"], task="lm", vocab=VOCAB)
    export_onnx(nets["mlp"], torch.zeros(2, 5, dtype=torch.long), (torch.zeros(1, 2, 16),), root / "mlp-onnx",
                {"task": "lm", "encoding": vocab, "input": {"name": "tokens", "layout": "batch_major"},
                 "output": {"name": "logits"}, "state": state_card(1)})
    port = free_port()
    proc = start_server(port, {"RNN_SERVE_MODEL_DIR": str(root)}, timeout=60)
    yield f"127.0.0.1:{port}"
    stop_server(proc)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def lm_logits(net, text: str) -> np.ndarray:
    """torch's per-step logits (T, V) for one text from a zero state."""
    zeros = (torch.zeros(2, 1, 24),) * 2 if isinstance(net, CharLM) else (torch.zeros(1, 1, 16),)
    with torch.no_grad():
        return net(ids(text)[None], *zeros)[0][0].double().numpy()


def classify_logits(net, text: str) -> np.ndarray:
    x = ids(text)[None] if net.rnn.batch_first else ids(text)[:, None]
    D = 2 if net.rnn.bidirectional else 1
    zeros = (torch.zeros(D, 1, 10),) * (2 if isinstance(net.rnn, nn.LSTM) else 1)
    with torch.no_grad():
        return net(x, *zeros)[0][0].double().numpy()


def assert_top_k(outputs: list[dict], logits: np.ndarray) -> None:
    """Each step's top-k is torch's: the most likely tokens, with torch's probabilities."""
    assert len(outputs) == len(logits)
    for out, p in zip(outputs, softmax(logits)):
        got = np.array([t["probability"] for t in out["top_k"]])
        want = p[[VOCAB.index(t["label"]) for t in out["top_k"]]]
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
        np.testing.assert_allclose(got, np.sort(p)[::-1][:len(got)], atol=TOL, rtol=0)


def test_every_model_is_ready(server):
    models = {m["name"]: m for m in httpx.get(f"http://{server}/v1/models", timeout=10).json()["models"]}
    assert {n: models[n]["status"] for n in models} == dict.fromkeys(
        ["bilstm", "bilstm-onnx", "charlm", "charlm-onnx", "gru", "gru-onnx", "mlp-onnx"], "ready")
    charlm = httpx.get(f"http://{server}/v1/models/charlm", timeout=10).json()
    assert charlm["metadata"]["torch_batch_first"] is True and charlm["format"] == "rnn-serve-checkpoint"
    assert httpx.get(f"http://{server}/v1/models/charlm-onnx", timeout=10).json()["format"] == "onnx"


@pytest.mark.parametrize("name, net", [("charlm", "charlm"), ("charlm-onnx", "charlm"), ("mlp-onnx", "mlp")])
def test_predict_equals_torch(server, nets, name, net):
    texts = [TEXT, TEXT[:9], "q"]
    r = httpx.post(f"http://{server}/v1/models/{name}/predict", json={"inputs": texts, "top_k": 3}, timeout=30)
    assert r.status_code == 200, r.text
    for text, outputs in zip(texts, r.json()["outputs"]):
        assert_top_k(outputs, lm_logits(nets[net], text))


@pytest.mark.parametrize("name", ["charlm", "charlm-onnx"])
def test_stream_in_chunks_equals_torch(server, nets, name):
    from websockets.sync.client import connect
    outputs = []
    with connect(f"ws://{server}/v1/models/{name}/stream", open_timeout=30) as ws:
        assert json.loads(ws.recv())["type"] == "session"
        for chunk in (TEXT[:1], TEXT[1:12], TEXT[12:13], TEXT[13:]):
            ws.send(json.dumps({"type": "input", "text": chunk, "top_k": 3}))
            reply = json.loads(ws.recv())
            assert reply["type"] == "output", reply
            outputs += reply["outputs"]
        ws.send(json.dumps({"type": "complete", "greedy": True, "max_length": 6}))
        completion = json.loads(ws.recv())
        ws.send(json.dumps({"type": "close"}))
    assert_top_k(outputs, lm_logits(nets["charlm"], TEXT))
    assert completion["completions"][0]["text"] == greedy(nets["charlm"], TEXT, 6)


def greedy(net, prompt: str, n: int) -> str:
    out = ""
    for _ in range(n):
        out += VOCAB[int(lm_logits(net, prompt + out)[-1].argmax())]
    return out


@pytest.mark.parametrize("name", ["charlm", "charlm-onnx"])
def test_greedy_completion_equals_torch(server, nets, name):
    r = httpx.post(f"http://{server}/v1/models/{name}/complete",
                   json={"prompt": "to be", "greedy": True, "max_length": 8, "n": 2}, timeout=30)
    assert r.status_code == 200, r.text
    want = greedy(nets["charlm"], "to be", 8)
    assert [c["text"] for c in r.json()["completions"]] == [want, want]


@pytest.mark.parametrize("name, net", [("gru", "gru"), ("gru-onnx", "gru"), ("bilstm", "bilstm"), ("bilstm-onnx", "bilstm")])
def test_classify_equals_torch(server, nets, name, net):
    r = httpx.post(f"http://{server}/v1/models/{name}/classify", json={"inputs": SENTENCES}, timeout=30)
    assert r.status_code == 200, r.text
    for text, result in zip(SENTENCES, r.json()["results"]):
        p = softmax(classify_logits(nets[net], text))
        np.testing.assert_allclose([result["probabilities"][lb] for lb in LABELS], p, atol=TOL, rtol=0)
        assert result["label"] == LABELS[int(p.argmax())]


def test_bidirectional_model_refuses_streaming(server):
    from websockets.sync.client import connect
    with connect(f"ws://{server}/v1/models/bilstm/stream", open_timeout=30) as ws:
        reply = json.loads(ws.recv())
    assert reply["type"] == "error" and "bidirectional" in reply["message"]
