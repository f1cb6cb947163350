"""Stateless requests (v1 classify / predict / complete, and v2 without a sequence): encode, run as
one padded forward per batch, split the results back per request.

``run_classify`` and ``run_predict`` are what the ``"classify"`` and ``"predict"`` batchers of
``service.batcher_registry`` run; they execute in a worker thread, off the event loop.
"""
from __future__ import annotations

import numpy as np

from model_core.backend import to_numpy
from model_core.sampling import complete as sample_completions
from model_core.served import ServedModel
from service.encoding import encode_sequence, encode_text, pad_batch, stop_ids
from service.errors import InvalidInput
from service.outputs import completion_results


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


def complete(model: ServedModel, prompt: str, n: int, max_length: int, temperature: float, top_k: int | None,
             greedy: bool, stop: list[str], seed: int | None) -> list[dict]:
    if model.config.task != "lm":
        raise InvalidInput(f"this is a {model.config.task} model; completion needs a language model")
    ids = encode_text(model.config, prompt)
    if ids.size == 0:
        raise InvalidInput("prompt must not be empty")
    stops = stop_ids(model.config, stop)
    logits, state = model.forward(ids.reshape(-1, 1))
    outs = sample_completions(model, state, logits[-1, 0], n=n, max_length=max_length, temperature=temperature,
                              top_k=top_k, greedy=greedy, stop_ids=stops, rng=np.random.default_rng(seed))
    return completion_results(model.config, outs, stops)
