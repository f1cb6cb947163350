"""Write the golden files of ``tests/onnx/test_onnx_serving.py``: torch-exported models served as ONNX.

    .venv/bin/python -m scripts.make_onnx_serving_golden            # writes tests/golden/onnx_serving
    .venv/bin/python -m scripts.make_onnx_serving_golden --check    # recompute and compare, write nothing

Two models with random, seeded weights, exported by torch.onnx's TorchScript exporter
(``dynamo=False``), each a model folder (``model.onnx`` + ``model-card.json``) the service serves:

* ``charlm``: Embedding + 2-layer LSTM (batch_first) + Linear, a char-level LM; ``charlm.npz``
  holds a text and torch's per-step logits for it.
* ``sentiment``: Embedding + LSTM + Linear on the last hidden state, a classifier whose graph
  outputs the last step only; ``sentiment.npz`` holds ragged sequences (ids, lengths) and torch's
  logits for each, run one at a time.

The exported graphs are checked against onnxruntime before anything is written. Needs the
``reference`` extra (torch, onnxruntime); the tests need neither.
"""
from __future__ import annotations

import argparse
import io
import json
import warnings
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden" / "onnx_serving"
VOCAB = list("\n !',.:;?abcdefghijklmnopqrstuvwxyz")
TEXT = "to be, or not to be: that is the question.\nwhether 'tis nobler in the mind to suffer"
LABELS = ["negative", "neutral", "positive"]
SEQUENCES = ["good", "not good at all", "fine.", "a terrible, terrible day", "yes"]
OPSET = 17


def lm_net(torch):
    class CharLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(len(VOCAB), 16)
            self.rnn = torch.nn.LSTM(16, 32, num_layers=2, batch_first=True)
            self.head = torch.nn.Linear(32, len(VOCAB))

        def forward(self, tokens, h0, c0):                       # tokens (B, T); h0, c0 (2, B, 32)
            y, (hn, cn) = self.rnn(self.embed(tokens), (h0, c0))
            return self.head(y), hn, cn                          # logits (B, T, V)

    torch.manual_seed(0)
    net = CharLM().eval()
    with torch.no_grad():
        net.head.weight.mul_(4.0)                                # peakier than init: a clear top-k
    return net


def classifier_net(torch):
    class Sentiment(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(len(VOCAB), 8)
            self.rnn = torch.nn.LSTM(8, 16)
            self.head = torch.nn.Linear(16, len(LABELS))

        def forward(self, tokens, h0, c0):                       # tokens (T, B); h0, c0 (1, B, 16)
            _, (hn, cn) = self.rnn(self.embed(tokens), (h0, c0))
            return self.head(hn[-1]), hn, cn                     # logits (B, C) from the last step

    torch.manual_seed(1)
    return Sentiment().eval()


def export(torch, net, args, batch_first: bool) -> bytes:
    seq = {0: "batch", 1: "time"} if batch_first else {0: "time", 1: "batch"}
    dynamic = {"tokens": seq, "logits": seq if net.__class__.__name__ == "CharLM" else {0: "batch"}}
    dynamic.update({n: {1: "batch"} for n in ("h0", "c0", "hn", "cn")})
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, args, buffer, dynamo=False, opset_version=OPSET, input_names=["tokens", "h0", "c0"],
                          output_names=["logits", "hn", "cn"], dynamic_axes=dynamic)
    return buffer.getvalue()


def ids(text: str) -> np.ndarray:
    return np.array([VOCAB.index(ch) for ch in text], dtype=np.int64)


def lm_case(torch):
    net = lm_net(torch)
    zeros = torch.zeros(2, 2, 32)
    graph = export(torch, net, (torch.zeros(2, 5, dtype=torch.long), zeros, zeros), batch_first=True)
    x = torch.from_numpy(ids(TEXT))[None]                                    # (1, T)
    with torch.no_grad():
        logits = net(x, torch.zeros(2, 1, 32), torch.zeros(2, 1, 32))[0][0].numpy()   # (T, V)
    card = {"task": "lm", "description": "torch char-level LSTM LM, random weights (golden test model)",
            "encoding": {"kind": "vocab", "tokens": VOCAB},
            "input": {"name": "tokens", "layout": "batch_major"},
            "output": {"name": "logits", "kind": "logits", "activation": "none", "per_step": True},
            "state": [{"input": "h0", "output": "hn", "batch_axis": 1}, {"input": "c0", "output": "cn", "batch_axis": 1}]}
    feed = {"tokens": x.numpy(), "h0": np.zeros((2, 1, 32), np.float32), "c0": np.zeros((2, 1, 32), np.float32)}
    return "charlm", graph, card, {"text": np.array(TEXT), "logits": logits}, feed, logits[None]


def classifier_case(torch):
    net = classifier_net(torch)
    zeros = torch.zeros(1, 2, 16)
    graph = export(torch, net, (torch.zeros(5, 2, dtype=torch.long), zeros, zeros), batch_first=False)
    rows = []
    with torch.no_grad():
        for s in SEQUENCES:
            rows.append(net(torch.from_numpy(ids(s))[:, None], torch.zeros(1, 1, 16), torch.zeros(1, 1, 16))[0][0].numpy())
    card = {"task": "classify", "description": "torch LSTM classifier, random weights (golden test model)",
            "encoding": {"kind": "vocab", "tokens": VOCAB}, "labels": LABELS,
            "input": {"name": "tokens", "layout": "time_major"},
            "output": {"name": "logits", "per_step": False},
            "state": [{"input": "h0", "output": "hn"}, {"input": "c0", "output": "cn"}]}
    golden = {"ids": np.concatenate([ids(s) for s in SEQUENCES]),
              "lengths": np.array([len(s) for s in SEQUENCES], dtype=np.int64), "logits": np.stack(rows)}
    first = ids(SEQUENCES[0])[:, None]
    feed = {"tokens": first, "h0": np.zeros((1, 1, 16), np.float32), "c0": np.zeros((1, 1, 16), np.float32)}
    return "sentiment", graph, card, golden, feed, rows[0][None]


def check_with_onnxruntime(graph: bytes, feed: dict, expected: np.ndarray) -> float:
    import onnxruntime as ort  # the reference extra only
    got = ort.InferenceSession(graph, providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    return float(np.abs(got - expected).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with the committed files; write nothing")
    args = parser.parse_args()
    import torch  # the reference extra only

    for name, graph, card, golden, feed, expected in (lm_case(torch), classifier_case(torch)):
        print(f"{name}: onnxruntime vs torch max |diff| {check_with_onnxruntime(graph, feed, expected):.2e}")
        folder = GOLDEN / name
        if args.check:
            with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as old:
                for key, value in golden.items():
                    np.testing.assert_allclose(old[key], value, rtol=1e-5, atol=1e-6) if value.dtype.kind == "f" \
                        else np.testing.assert_array_equal(old[key], value)
            assert json.loads((folder / "model-card.json").read_text()) == card
            continue
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.onnx").write_bytes(graph)
        (folder / "model-card.json").write_text(json.dumps(card, indent=2) + "\n")
        np.savez_compressed(GOLDEN / f"{name}.npz", **golden)
        print(f"wrote {folder} ({len(graph)} bytes) and {name}.npz")
    print("checked" if args.check else "done")


if __name__ == "__main__":
    main()
