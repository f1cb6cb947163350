"""Next-token choice and autocomplete for language models: greedy, temperature and top-k."""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from model_core.backend import to_numpy
from model_core.nn.losses import softmax


def sample_next(logits, rng: np.random.Generator, temperature: float = 1.0, top_k: int | None = None,
                greedy: bool = False) -> np.ndarray:
    """Pick one token per row of ``logits`` (B, V). Returns host int64 ids (B,).

    ``greedy`` (or temperature 0) takes the argmax; otherwise softmax(logits / temperature) is
    sampled, restricted to the ``top_k`` most likely tokens when given.
    """
    z = to_numpy(logits).astype(np.float64)                                 # (B, V)
    if greedy or temperature == 0:
        return z.argmax(axis=-1)
    if not temperature > 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    z = z / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_k < z.shape[-1]:
            kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
            z = np.where(z >= kth, z, -np.inf)
    p = softmax(z)                                                          # (B, V); -inf -> 0
    # inverse-CDF sampling, one uniform per row
    u = rng.random((z.shape[0], 1))
    return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), z.shape[-1] - 1)


def complete(model, state, logits, n: int = 1, max_length: int = 32, temperature: float = 1.0,
             top_k: int | None = None, greedy: bool = False, stop_ids: Iterable[int] = (),
             rng: np.random.Generator | None = None) -> list[list[int]]:
    """``n`` continuations from a state and its last logits (B=1), without touching that state.

    The stop token, when hit, is included and ends that continuation. Runs the ``n`` candidates
    as one batch, so it costs one step per generated token regardless of ``n``.
    """
    if model.config.task != "lm":
        raise ValueError("completion needs a language model (task 'lm')")
    if n < 1 or max_length < 0:
        raise ValueError("n must be >= 1 and max_length >= 0")
    rng = rng or np.random.default_rng()
    xp, stop = model.xp, set(int(s) for s in stop_ids)
    state = tuple(xp.repeat(p, n, axis=1) for p in state)
    logits = xp.repeat(xp.asarray(logits).reshape(1, -1), n, axis=0)       # (n, V)
    out: list[list[int]] = [[] for _ in range(n)]
    live = np.ones(n, dtype=bool)
    for _ in range(max_length):
        ids = sample_next(logits, rng, temperature, top_k, greedy)
        for i in np.flatnonzero(live):
            out[i].append(int(ids[i]))
            if int(ids[i]) in stop:
                live[i] = False
        if not live.any():
            break
        logits, state = model.step(xp.asarray(ids), state)
    return out


def generate(model, prompt_ids, max_length: int = 100, **options) -> list[list[int]]:
    """Feed ``prompt_ids`` (a non-empty sequence of ids) and continue it; see ``complete``."""
    prompt = np.asarray(prompt_ids, dtype=np.int64).reshape(-1, 1)          # (T, 1)
    if prompt.size == 0:
        raise ValueError("generate needs a non-empty prompt")
    logits, state = model.forward(prompt)
    return complete(model, state, logits[-1, 0], max_length=max_length, **options)
