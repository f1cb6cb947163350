"""The math behind the HTTP endpoints: batch, run, and turn logits into JSON-ready results.

These run in a worker thread (FastAPI runs sync endpoints off the event loop).
"""
from __future__ import annotations

import numpy as np

from model_core.backend import to_numpy
from model_core.served import ServedModel
from model_core.sampling import complete as sample_completions
from service.encoding import encode_sequence, encode_text, pad_batch, stop_ids
from service.errors import InvalidInput


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _labels(model: ServedModel) -> list[str]:
    return labels_of(model.config)


def labels_of(c) -> list[str]:
    """What each output index means: class labels, else vocabulary tokens, else the index itself."""
    if c.labels:
        return list(c.labels)
    if c.vocab:
        return list(c.vocab)
    return [str(i) for i in range(c.output_size)]


def top_k_entries(probs: np.ndarray, labels: list[str], k: int) -> list[dict]:
    return top_k_rows(probs[None], labels, k)[0]


def top_k_rows(probs: np.ndarray, labels: list[str], k: int) -> list[list[dict]]:
    """Top-k of each row of (T, C), best first, ties by index; one sort for all rows (keystroke path)."""
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]                 # (T, k)
    values = np.take_along_axis(probs, order, axis=-1).tolist()
    return [[{"label": labels[i], "index": i, "probability": v} for i, v in zip(idx, val)]
            for idx, val in zip(order.tolist(), values)]


def encode_inputs(model: ServedModel, inputs: list, max_len: int) -> list[np.ndarray]:
    return [encode_sequence(model.config, item, max_len, where=f"inputs[{i}]") for i, item in enumerate(inputs)]


def check_task(model: ServedModel, endpoint: str) -> None:
    task = model.config.task
    if endpoint == "classify" and task != "classify":
        raise InvalidInput(f"this is a {task} model; classify needs a classifier (use /predict)")
    if endpoint == "predict" and task == "classify":
        raise InvalidInput("this is a classifier; per-step outputs come from seq2seq and lm models (use /classify)")


def run_classify(model: ServedModel, requests: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Class logits for several requests' sequences in one padded forward: [(B_i, C), ...]."""
    seqs = [s for r in requests for s in r]
    x, lengths = pad_batch(model.config, seqs)
    logits, _ = model.forward(x, lengths=lengths)
    return np.split(to_numpy(logits), np.cumsum([len(r) for r in requests])[:-1])   # (sum B_i, C)


def run_predict(model: ServedModel, requests: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Per-step logits for several requests' sequences in one padded forward: [[(K, C), ...], ...]."""
    seqs = [s for r in requests for s in r]
    x, lengths = pad_batch(model.config, seqs)
    logits, _ = model.forward(x, lengths=lengths)
    logits = to_numpy(logits)                                                # (T, sum B_i, C)
    flat = [logits[: lengths[b], b] for b in range(len(seqs))]
    bounds = np.cumsum([0] + [len(r) for r in requests])
    return [flat[bounds[i]:bounds[i + 1]] for i in range(len(requests))]


def format_classification(model: ServedModel, logits: np.ndarray, top_k: int | None) -> list[dict]:
    labels = _labels(model)
    out = []
    for p in softmax(logits.astype(np.float64)):
        best = int(p.argmax())
        item = {"label": labels[best], "index": best, "probabilities": {labels[i]: float(v) for i, v in enumerate(p)}}
        if top_k:
            item["top_k"] = top_k_entries(p, labels, top_k)
        out.append(item)
    return out


def step_outputs(model: ServedModel, logits: np.ndarray, top_k: int) -> list[dict]:
    """Per-step results for seq2seq/LM logits (T, C) (or running class logits for classifiers)."""
    c = model.config
    logits = logits.astype(np.float64)
    if c.output == "binary":
        p = 1.0 / (1.0 + np.exp(-logits))                                    # (T, C)
        return [{"probabilities": [float(v) for v in row], "bits": [int(v > 0.5) for v in row]} for row in p]
    if c.output == "regression":
        return [{"values": [float(v) for v in row]} for row in logits]
    return [{"top_k": row} for row in top_k_rows(softmax(logits), _labels(model), top_k)]


def complete(model: ServedModel, prompt: str, n: int, max_length: int, temperature: float, top_k: int | None,
             greedy: bool, stop: list[str], seed: int | None) -> list[dict]:
    if model.config.task != "lm":
        raise InvalidInput(f"this is a {model.config.task} model; completion needs a language model")
    ids = encode_text(model.config, prompt)
    if ids.size == 0:
        raise InvalidInput("prompt must not be empty")
    logits, state = model.forward(ids.reshape(-1, 1))
    outs = sample_completions(model, state, logits[-1, 0], n=n, max_length=max_length, temperature=temperature,
                              top_k=top_k, greedy=greedy, stop_ids=stop_ids(model.config, stop),
                              rng=np.random.default_rng(seed))
    vocab = model.config.vocab
    return [{"text": "".join(vocab[i] for i in o), "tokens": len(o),
             "finish_reason": "stop" if o and vocab[o[-1]] in stop else "length"} for o in outs]
