"""The temporal order task (Hochreiter & Schmidhuber 1997, experiment 6a), as in the NYU RNN/LSTM notebook.

A sequence begins with ``B``, ends with ``E`` and is otherwise random distractors from ``{a, b, c, d}``,
except at two positions ``t1 < t2`` that hold ``X`` or ``Y``. The class is the order of those two
symbols: XX -> Q, XY -> R, YX -> S, YY -> U. Example (EASY): ``"BbXcXcbE"`` is class Q.

Positions are 0-based indices into the sequence (index 0 is ``B``); every range is inclusive.
Symbols are one-hot coded by their index in ``SYMBOLS`` (the notebook's order X, Y, a, b, c, d, B, E);
labels are class indices into ``CLASSES`` (not one-hot).

Seeding: ``generate`` draws from ``np.random.default_rng(seed)``. ``TemporalOrderDataset.batches(epoch)``
draws from the stream ``(seed, 0, epoch)`` and ``validation_set`` from ``(seed, 1)``, so an epoch can be
regenerated exactly on resume and the validation set never repeats a training epoch.
"""
from __future__ import annotations

import enum
from collections.abc import Iterator

import numpy as np

SYMBOLS = ("X", "Y", "a", "b", "c", "d", "B", "E")
CLASSES = ("Q", "R", "S", "U")  # XX, XY, YX, YY
N_SYMBOLS = len(SYMBOLS)
N_CLASSES = len(CLASSES)

SYMBOL_INDEX = {s: i for i, s in enumerate(SYMBOLS)}
_X, _Y, _B, _E = (SYMBOL_INDEX[s] for s in "XYBE")
_DISTRACTORS = np.array([SYMBOL_INDEX[s] for s in "abcd"])  # (4,)
_CHARS = np.frombuffer("".join(SYMBOLS).encode("ascii"), dtype=np.uint8)  # index -> ASCII byte
_LOOKUP = np.full(256, -1, dtype=np.int64)  # ASCII byte -> index, -1 for anything else
_LOOKUP[_CHARS] = np.arange(N_SYMBOLS)


class Difficulty(enum.Enum):
    """Difficulty levels: inclusive ranges ``(lo, hi)`` for the length, ``t1`` and ``t2``."""

    #           length      t1        t2
    EASY = ((7, 8), (1, 2), (4, 5))
    NORMAL = ((30, 40), (2, 5), (20, 27))
    MODERATE = ((60, 80), (10, 20), (45, 54))
    HARD = ((100, 110), (10, 20), (50, 60))
    NIGHTMARE = ((300, 500), (10, 80), (250, 290))

    def __init__(self, length_range, t1_range, t2_range):
        self.length_range = length_range
        self.t1_range = t1_range
        self.t2_range = t2_range

    @classmethod
    def parse(cls, value: str | Difficulty) -> Difficulty:
        """``"hard"``, ``"HARD"`` or ``Difficulty.HARD`` -> ``Difficulty.HARD``."""
        if isinstance(value, cls):
            return value
        try:
            return cls[str(value).strip().upper()]
        except KeyError:
            valid = ", ".join(m.name.lower() for m in cls)
            raise ValueError(f"unknown difficulty {value!r}; valid names: {valid}") from None


def class_of(first: str, second: str) -> int:
    """Class index for the pair of relevant symbols in order: ``class_of("Y", "X") == 2`` (S)."""
    return 2 * ("XY".index(first)) + "XY".index(second)


def generate(n: int, difficulty: str | Difficulty, seed: int | np.random.Generator | None = None
             ) -> list[tuple[str, int]]:
    """``n`` random sequences as ``(string, class_index)`` pairs, reproducible from ``seed``."""
    level = Difficulty.parse(difficulty)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    lengths = rng.integers(*level.length_range, size=n, endpoint=True)  # (n,)
    t1 = rng.integers(*level.t1_range, size=n, endpoint=True)  # (n,)
    t2 = rng.integers(*level.t2_range, size=n, endpoint=True)  # (n,)
    labels = rng.integers(0, N_CLASSES, size=n)  # (n,)
    distractors = _DISTRACTORS[rng.integers(0, 4, size=int(lengths.sum()))]  # (sum(lengths),)

    out = []
    start = 0
    for length, a, b, label in zip(lengths, t1, t2, labels):
        seq = distractors[start:start + length].copy()  # (length,)
        start += length
        seq[0], seq[-1] = _B, _E
        seq[a] = _Y if label >= 2 else _X  # Q, R start with X; S, U with Y
        seq[b] = _Y if label % 2 else _X   # Q, S end with X; R, U with Y
        out.append((_CHARS[seq].tobytes().decode("ascii"), int(label)))
    return out


def encode_batch(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """One-hot encode, zero-padded to the longest string.

    Returns ``x`` float32 ``(B, T, 8)`` (batch-first; rows past a sequence's length are all zero) and
    ``lengths`` int64 ``(B,)``. Raises ``ValueError`` on a character outside ``SYMBOLS``.
    """
    lengths = np.array([len(s) for s in strings], dtype=np.int64)  # (B,)
    T = int(lengths.max()) if len(strings) else 0
    idx = np.full((len(strings), T), -1, dtype=np.int64)  # (B, T), -1 = padding
    for b, s in enumerate(strings):
        codes = _LOOKUP[np.frombuffer(s.encode("latin-1", "replace"), dtype=np.uint8)]  # (len,)
        if (codes < 0).any():
            bad = sorted({c for c in s if c not in SYMBOL_INDEX})
            raise ValueError(f"sequence {b} has symbols outside {SYMBOLS}: {bad}")
        idx[b, :len(s)] = codes
    x = np.zeros((len(strings), T, N_SYMBOLS), dtype=np.float32)  # (B, T, 8)
    bb, tt = np.nonzero(idx >= 0)
    x[bb, tt, idx[bb, tt]] = 1.0
    return x, lengths


def decode_batch(x: np.ndarray, lengths: np.ndarray) -> list[str]:
    """Inverse of ``encode_batch``: ``x`` ``(B, T, 8)`` and ``lengths`` ``(B,)`` back to strings."""
    idx = np.asarray(x).argmax(axis=-1)  # (B, T)
    return [_CHARS[idx[b, :n]].tobytes().decode("ascii") for b, n in enumerate(np.asarray(lengths))]


def _to_arrays(pairs: list[tuple[str, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, lengths = encode_batch([s for s, _ in pairs])
    y = np.array([label for _, label in pairs], dtype=np.int64)  # (B,)
    return x, lengths, y


def _stream(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


class TemporalOrderDataset:
    """Fresh random training data each epoch, reproducible from ``(seed, epoch)``.

    An epoch is ``size`` sequences in batches of ``batch_size`` (the last one smaller when
    ``batch_size`` does not divide ``size``: 1,000 in 32s is 31 batches of 32 and one of 8).
    """

    def __init__(self, difficulty: str | Difficulty, size: int = 1000, batch_size: int = 32, seed: int = 0):
        if size < 1 or batch_size < 1:
            raise ValueError(f"size and batch_size must be positive, got {size} and {batch_size}")
        self.difficulty = Difficulty.parse(difficulty)
        self.size = size
        self.batch_size = batch_size
        self.seed = seed

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-self.size // self.batch_size)

    def batches(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(x (B, T, 8) float32, lengths (B,) int64, y (B,) int64)``; ``T`` is the batch's longest."""
        pairs = generate(self.size, self.difficulty, _stream(self.seed, 0, epoch))
        for start in range(0, self.size, self.batch_size):
            yield _to_arrays(pairs[start:start + self.batch_size])


def validation_set(difficulty: str | Difficulty, n: int = 1000, seed: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One fixed held-out set ``(x (n, T, 8), lengths (n,), y (n,))``, independent of every training epoch."""
    return _to_arrays(generate(n, difficulty, _stream(seed, 1)))
