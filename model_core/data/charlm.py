"""Character-level language-model data: the vendored Shakespeare corpus, a vocabulary, char-rnn batches.

Typical use::

    text = load_corpus()                          # 37 plays, ~4.8 M characters
    train, val = split(text)                      # last 5 % is validation
    vocab = Vocab.from_text(train)
    batches = CharBatches(vocab.encode(train), batch_size=64, seq_len=100, seed=0)
    for x, y in batches.epoch_batches(epoch):     # (seq_len, B) int64 each, time-major
        ...                                       # carry the hidden state from chunk to chunk

Unknown characters: by default ``Vocab.encode`` raises ``ValueError`` naming them. Build the vocabulary
with ``unk="?"`` (any character) to map every unknown character to that character's id instead.
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "data" / "shakespeare"


def load_corpus(path: str | Path | None = None) -> str:
    """The corpus as one string: a text file, or a folder's ``*.txt`` files in name order, blank-line separated."""
    path = Path(path) if path is not None else DEFAULT_CORPUS
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no *.txt files in {path}")
        return "\n\n".join(f.read_text(encoding="utf-8") for f in files)
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise FileNotFoundError(f"corpus not found at {path} (run scripts/vendor_shakespeare.py to create it)")


def split(text: str, val_fraction: float = 0.05) -> tuple[str, str]:
    """``(train, val)``: the last ``val_fraction`` of the text is validation. Deterministic, no shuffling."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = max(1, int(round(len(text) * val_fraction)))
    return text[:-n_val], text[-n_val:]


def bits_per_char(nats: float) -> float:
    """Convert a mean cross-entropy in nats per character to bits per character."""
    return nats / math.log(2)


class Vocab:
    """Sorted unique characters; id = position in ``chars``.

    ``unk``: ``None`` (default) makes unknown characters an error; a character (added to the vocabulary
    if absent) makes every unknown character encode to its id.
    """

    def __init__(self, chars: str | list[str], unk: str | None = None):
        chars = sorted(set(chars) | ({unk} if unk is not None else set()))
        if any(len(c) != 1 for c in chars):
            raise ValueError("vocabulary entries must be single characters")
        self.chars: tuple[str, ...] = tuple(chars)
        self.unk = unk
        self.unk_id: int | None = self.chars.index(unk) if unk is not None else None
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._lookup = np.full(int(codes.max()) + 1 if len(codes) else 1, -1, dtype=np.int64)  # code point -> id
        self._lookup[codes] = np.arange(len(self.chars))

    @classmethod
    def from_text(cls, text: str, unk: str | None = None) -> Vocab:
        return cls(sorted(set(text)), unk=unk)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.chars, self.unk) == (other.chars, other.unk)

    def encode(self, text: str) -> np.ndarray:
        """``text`` -> int64 ids ``(len(text),)``."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)  # (N,)
        ids = np.full(codes.shape, -1, dtype=np.int64)
        known = codes < len(self._lookup)
        ids[known] = self._lookup[codes[known]]
        missing = ids < 0
        if missing.any():
            if self.unk_id is None:
                bad = sorted({chr(c) for c in codes[missing]})
                raise ValueError(f"characters not in the vocabulary: {bad[:20]!r}"
                                 f"{f' and {len(bad) - 20} more' if len(bad) > 20 else ''}")
            ids[missing] = self.unk_id
        return ids

    def decode(self, ids) -> str:
        """int ids (any iterable or array) -> text."""
        return "".join(self.chars[int(i)] for i in np.asarray(ids).ravel())

    def to_json(self) -> str:
        return json.dumps({"chars": list(self.chars), "unk": self.unk})

    @classmethod
    def from_json(cls, data: str) -> Vocab:
        obj = json.loads(data)
        return cls(obj["chars"], unk=obj.get("unk"))


class CharBatches:
    """char-rnn stream batching: the ids are cut into ``batch_size`` parallel streams, read in chunks.

    Stream ``b`` is a contiguous stretch of the text; chunk ``k + 1`` of a stream starts where chunk ``k``
    ended, so the hidden state carries over between chunks (reset it only at the start of an epoch).
    ``y`` is ``x`` shifted one character ahead. Each epoch starts the streams at an offset in
    ``[0, seq_len)`` drawn from ``(seed, epoch)``, so chunk boundaries move between epochs; the number of
    batches per epoch (``len(self)``) does not depend on the offset.
    """

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, seed: int = 0):
        self.ids = np.asarray(ids, dtype=np.int64).ravel()  # (N,)
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = seed
        # Per-stream length: a multiple of seq_len that leaves room for the largest offset and the shift.
        self.stream_len = (len(self.ids) - seq_len) // batch_size // seq_len * seq_len
        if batch_size < 1 or seq_len < 1 or self.stream_len < 1:
            raise ValueError(f"{len(self.ids)} ids are too few for batch_size={batch_size}, seq_len={seq_len}")

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.stream_len // self.seq_len

    def offset(self, epoch: int) -> int:
        """Where epoch ``epoch``'s streams start in the id array."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(epoch,)))
        return int(rng.integers(0, self.seq_len))

    def epoch_batches(self, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(x (seq_len, B) int64, y (seq_len, B) int64)`` chunks in stream order."""
        B, L, S = self.batch_size, self.stream_len, self.seq_len
        start = self.offset(epoch)
        xs = self.ids[start:start + B * L].reshape(B, L)  # (B, L)
        ys = self.ids[start + 1:start + 1 + B * L].reshape(B, L)  # (B, L)
        for t in range(0, L, S):
            yield np.ascontiguousarray(xs[:, t:t + S].T), np.ascontiguousarray(ys[:, t:t + S].T)
