"""Logits -> the results a reply carries: the output kind's activation (``model_core.nn.losses.
activate``, over the engine's one softmax), labels, top-k entries, and completion texts.

Every transport formats through here: v1 HTTP, sessions and the WebSocket (``timestep_results``), and
the v2 protocol's probabilities (``activate``).
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from model_core.config import ModelConfig
from model_core.nn.losses import activate, softmax


def labels_of(c: ModelConfig) -> list[str]:
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
    values = probs[np.arange(len(probs))[:, None], order].tolist()            # (T, k): take_along_axis costs 3x
    return [[{"label": labels[i], "index": i, "probability": v} for i, v in zip(idx, val)]
            for idx, val in zip(order.tolist(), values)]


def format_classification(c: ModelConfig, logits: np.ndarray, top_k: int | None) -> list[dict]:
    """Class logits (B, C) -> per sequence: the best label, every probability, and the top k."""
    labels = labels_of(c)
    out = []
    for p in softmax(logits.astype(np.float64)):                             # one class per sequence
        best = int(p.argmax())
        item = {"label": labels[best], "index": best, "probabilities": {labels[i]: float(v) for i, v in enumerate(p)}}
        if top_k:
            item["top_k"] = top_k_entries(p, labels, top_k)
        out.append(item)
    return out


def timestep_results(c: ModelConfig, logits: np.ndarray, top_k: int) -> list[dict]:
    """Per-step results for logits (T, C): seq2seq and LM outputs, or a classifier's running class logits."""
    values = activate(logits.astype(np.float64), c.output)                   # (T, C)
    if c.output == "binary":
        return [{"probabilities": [float(v) for v in row], "bits": [int(v > 0.5) for v in row]} for row in values]
    if c.output == "regression":
        return [{"values": [float(v) for v in row]} for row in values]
    return [{"top_k": row} for row in top_k_rows(values, labels_of(c), top_k)]


def completion_results(c: ModelConfig, completions: list[list[int]], stop_ids: Iterable[int]) -> list[dict]:
    """Sampled token ids -> ``{"text", "tokens", "finish_reason"}``; "stop" when a stop token ended it."""
    stops, vocab = set(stop_ids), c.vocab
    return [{"text": "".join(vocab[i] for i in o), "tokens": len(o),
             "finish_reason": "stop" if o and o[-1] in stops else "length"} for o in completions]
