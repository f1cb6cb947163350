"""Signal echo: a synchronised many-to-many task (NYU RNN/LSTM notebook).

The target is the input bit stream delayed by ``delay`` steps, zeros for the first ``delay`` steps::

    input   1 1 0 0 1 0 1 1 0 0 ...
    target  0 0 0 1 1 0 0 1 0 1 ...     (delay = 3)

Each of ``n_streams`` long streams is cut into consecutive chunks of ``chunk`` steps. The caller
carries the hidden state from one chunk to the next (truncated BPTT) and resets it only before the
first chunk, which ``chunks()`` flags; a stream is never reset in the middle.

Seeding: ``EchoStreams(seed=s)`` draws from the stream ``(s, 0)`` and ``validation_streams(seed=s)``
from ``(s, 1)``, so the validation bits never equal the training bits, whatever seed both are given.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def echo_targets(bits: np.ndarray, delay: int) -> np.ndarray:
    """``bits`` delayed by ``delay`` steps along the last axis, zero-filled at the start."""
    if delay < 0:
        raise ValueError(f"delay must be >= 0, got {delay}")
    targets = np.zeros_like(bits)
    if delay < bits.shape[-1]:
        targets[..., delay:] = bits[..., :bits.shape[-1] - delay]
    return targets


class EchoStreams:
    """``n_streams`` random bit streams of ``length`` steps and their echoes.

    ``inputs`` and ``targets`` are float32 ``(n_streams, length)`` arrays of 0.0 / 1.0.
    """

    def __init__(self, n_streams: int = 32, length: int = 40_000, delay: int = 3, chunk: int = 10,
                 seed: int = 0, *, _key: int = 0):
        if min(n_streams, length, chunk) < 1:
            raise ValueError(f"n_streams, length and chunk must be positive, got {n_streams}, {length}, {chunk}")
        self.n_streams = n_streams
        self.length = length
        self.delay = delay
        self.chunk = chunk
        self.seed = seed
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_key,)))
        self.inputs = rng.integers(0, 2, size=(n_streams, length)).astype(np.float32)  # (N, L)
        self.targets = echo_targets(self.inputs, delay)  # (N, L)

    def __len__(self) -> int:
        """Chunks per pass; the last one is shorter when ``chunk`` does not divide ``length``."""
        return -(-self.length // self.chunk)

    def chunks(self) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """Yield ``(x (chunk, N, 1) float32, y (chunk, N, 1) float32, is_first_chunk)`` in time order."""
        for start in range(0, self.length, self.chunk):
            stop = min(start + self.chunk, self.length)
            x = self.inputs[:, start:stop].T[:, :, None]  # (chunk, N, 1), time-major
            y = self.targets[:, start:stop].T[:, :, None]  # (chunk, N, 1)
            yield np.ascontiguousarray(x), np.ascontiguousarray(y), start == 0


def validation_streams(n_streams: int = 32, length: int = 4_000, delay: int = 3, chunk: int = 10,
                       seed: int = 0) -> EchoStreams:
    """A fresh set of streams for validation, drawn from a stream disjoint from training's."""
    return EchoStreams(n_streams, length, delay, chunk, seed, _key=1)
