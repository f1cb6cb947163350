"""Request inputs -> model arrays, with errors that say exactly what to fix.

A sequence is text (character models), a list of token ids, or a list of feature vectors
(T x I). A batch of them becomes time-major arrays padded to the longest, plus lengths.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from model_core.config import ModelConfig
from model_core.inputs import features_problem, token_ids_problem
from service.errors import InvalidInput
from service.request_limits import check_steps


@functools.lru_cache(maxsize=64)          # built once per vocabulary, not once per keystroke
def _index_of(vocab: tuple[str, ...]) -> dict[str, int]:
    return {tok: i for i, tok in enumerate(vocab)}


def _token_index(config: ModelConfig) -> dict[str, int]:
    return _index_of(config.vocab or ())


def encode_text(config: ModelConfig, text: str) -> np.ndarray:
    if not config.vocab:
        raise InvalidInput("this model takes no text: send token ids or feature vectors")
    index = _token_index(config)
    unknown = sorted({ch for ch in text if ch not in index})
    if unknown:
        shown = ", ".join(repr(c) for c in unknown[:20])
        raise InvalidInput(f"characters outside the model's vocabulary: {shown}")
    return np.fromiter((index[ch] for ch in text), dtype=np.int64, count=len(text))


def encode_sequence(config: ModelConfig, item, max_len: int, where: str = "input") -> np.ndarray:
    """One sequence -> ids (T,) or features (T, I)."""
    if isinstance(item, str):
        arr = encode_text(config, item)
    elif config.uses_tokens:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in item):
            raise InvalidInput(f"{where}: this model takes text or token ids (integers), not feature vectors")
        try:
            arr = np.asarray(item, dtype=np.int64)
        except OverflowError:                            # an id past int64: out of range whatever the vocabulary
            raise InvalidInput(f"{where}: token ids must lie in [0, {config.input_size}), got one past int64") from None
        problem = token_ids_problem(config, arr)
        if problem:
            raise InvalidInput(f"{where}: {problem}")
    else:
        if not all(isinstance(v, list) and all(isinstance(x, int | float) and not isinstance(x, bool) for x in v)
                   for v in item):
            raise InvalidInput(f"{where}: this model takes feature vectors: a list of {config.input_size}-number lists")
        if any(len(v) != config.input_size for v in item):
            raise InvalidInput(f"{where}: every step needs exactly {config.input_size} features")
        try:
            arr = np.asarray(item, dtype=np.float64).reshape(len(item), config.input_size)
        except OverflowError:                            # an integer too large for a float64
            arr = np.full((1, config.input_size), np.inf)
        problem = features_problem(config, arr)
        if problem:
            raise InvalidInput(f"{where}: {problem}")
    if arr.shape[0] == 0:
        raise InvalidInput(f"{where}: a sequence needs at least one step")
    check_steps(arr.shape[0], max_len, where)
    return arr


def pad_batch(config: ModelConfig, seqs: list[np.ndarray]):
    """Time-major batch: ids (T, B) or features (T, B, I), and lengths (B,)."""
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    T, B = int(lengths.max()), len(seqs)
    if config.uses_tokens:
        out = np.zeros((T, B), dtype=np.int64)
    else:
        out = np.zeros((T, B, config.input_size), dtype=np.float64)
    for b, s in enumerate(seqs):
        out[: len(s), b] = s
    return out, lengths


def stop_ids(config: ModelConfig, stops: list[str]) -> list[int]:
    index = _token_index(config)
    bad = [s for s in stops if s not in index]
    if bad:
        raise InvalidInput(f"stop tokens outside the vocabulary: {bad}")
    return [index[s] for s in stops]


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None
