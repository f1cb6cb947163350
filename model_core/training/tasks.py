"""The three training tasks: what the model is, what a batch is, and how to score it.

Each task exposes ``config(args)``, ``batches(epoch)`` (deterministic by seed and epoch, so a
resumed run sees the same data), ``train_batch(model, batch, carry, rng)`` and ``evaluate(model)``.
Recurrent state that crosses batches (echo streams, char-LM streams) is passed as ``carry`` and
returned, detached from the graph: truncated BPTT.
"""
from __future__ import annotations

from dataclasses import dataclass

from model_core.config import ModelConfig
from model_core.data import charlm, echo, temporal_order
from model_core.nn import losses


@dataclass
class BatchResult:
    """One optimiser update on one batch: its mean loss, the correct count out of count, the
    gradients, and the state carried into the next batch (None when nothing crosses batches)."""
    loss: float
    correct: float
    count: int
    grads: dict
    carry: object


class TemporalOrderTask:
    """Sequence classification; batches of 32 one-hot sequences, zero-padded with lengths."""

    name, metric = "temporal-order", "accuracy"

    def __init__(self, difficulty="easy", batch_size=32, seed=0, val_size=1000, epoch_size=1000):
        self.difficulty = temporal_order.Difficulty.parse(difficulty)
        self.data = temporal_order.TemporalOrderDataset(self.difficulty, size=epoch_size, batch_size=batch_size, seed=seed)
        self.val = temporal_order.validation_set(self.difficulty, n=val_size, seed=seed)

    def config(self, cell, hidden_size, num_layers=1, **_):
        return ModelConfig(cell=cell, task="classify", input_size=temporal_order.N_SYMBOLS, hidden_size=hidden_size,
                           num_layers=num_layers, output_size=temporal_order.N_CLASSES, input_encoding="onehot",
                           vocab=temporal_order.SYMBOLS, labels=temporal_order.CLASSES,
                           metadata={"task": self.name, "difficulty": self.difficulty.name,
                                     "symbols": list(temporal_order.SYMBOLS)})

    def batches(self, epoch):
        return self.data.batches(epoch)

    def num_batches(self):
        return len(self.data)

    @staticmethod
    def _ids(x):
        """One-hot (B, T, 8) -> symbol ids (T, B); padded steps become id 0 and are masked by lengths."""
        return x.argmax(-1).T

    def train_batch(self, model, batch, carry, rng):
        x, lengths, y = batch
        xp = model.xp
        logits, _, cache = model.forward_train(self._ids(x), lengths=lengths, rng=rng)
        loss, dlogits = losses.cross_entropy(logits, xp.asarray(y))
        grads, _ = model.backward(cache, dlogits)
        correct = float((logits.argmax(-1) == xp.asarray(y)).sum())
        return BatchResult(loss, correct, len(y), grads, None)

    def evaluate(self, model, max_batches=None):
        """Over the validation set, or its first ``max_batches`` batches of 32."""
        x, lengths, y = self.val
        if max_batches is not None:
            n = max_batches * 32
            x, lengths, y = x[:n], lengths[:n], y[:n]               # (B, T, 8) batch-first
        logits, _ = model.forward(self._ids(x), lengths=lengths)
        loss, _ = losses.cross_entropy(logits, model.xp.asarray(y))
        return {"loss": loss, "accuracy": float((logits.argmax(-1) == model.xp.asarray(y)).mean())}


class EchoTask:
    """Synchronised seq2seq: echo the bit stream ``delay`` steps later, state carried chunk to chunk."""

    name, metric = "echo", "accuracy"

    def __init__(self, delay=3, chunk=10, n_streams=32, length=40_000, seed=0, val_length=4000, **_):
        self.delay = delay
        self.data = echo.EchoStreams(n_streams=n_streams, length=length, delay=delay, chunk=chunk, seed=seed)
        self.chunk, self.n_streams, self.seed = chunk, n_streams, seed
        self.val = echo.validation_streams(n_streams=n_streams, length=val_length, delay=delay, chunk=chunk, seed=seed)

    def config(self, cell, hidden_size, num_layers=1, **_):
        return ModelConfig(cell=cell, task="seq2seq", input_size=1, hidden_size=hidden_size, num_layers=num_layers,
                           output_size=1, input_encoding="features", output="binary", labels=("bit",),
                           metadata={"task": self.name, "delay": self.delay, "chunk": self.chunk})

    def batches(self, epoch):
        return self.data.chunks()          # the same streams every epoch, as in the classic setup

    def num_batches(self):
        return len(self.data)

    def train_batch(self, model, batch, carry, rng):
        x, y, first = batch
        xp = model.xp
        state = None if first else carry
        logits, state, cache = model.forward_train(x, state, rng=rng)        # (T, B, 1)
        yd = xp.asarray(y)
        loss, dlogits = losses.bce_with_logits(logits, yd)
        grads, _ = model.backward(cache, dlogits)                          # truncated: no gradient into carry
        correct = float(((logits > 0) == (yd > 0.5)).sum())
        return BatchResult(loss, correct, int(y.size), grads, state)

    def evaluate(self, model, max_batches=None):
        """Over the validation streams, chunk by chunk with the state carried, or their first ``max_batches`` chunks."""
        state, total, correct, n = None, 0.0, 0.0, 0
        for i, (x, y, _) in enumerate(self.val.chunks()):
            if max_batches is not None and i >= max_batches:
                break
            logits, state = model.forward(x, state)
            yd = model.xp.asarray(y)
            total += losses.bce_with_logits(logits, yd)[0] * y.size
            correct += float(((logits > 0) == (yd > 0.5)).sum())
            n += y.size
        return {"loss": total / n, "accuracy": correct / n}


class CharLMTask:
    """Character-level LM on Shakespeare; streams of ``seq_len`` chunks with state carried across."""

    name, metric = "charlm", "bpc"

    def __init__(self, batch_size=64, seq_len=100, seed=0, corpus=None, val_fraction=0.05, val_chars=None, **_):
        text = charlm.load_corpus(corpus)
        train, val = charlm.split(text, val_fraction)
        self.vocab = charlm.Vocab.from_text(text)
        if val_chars:
            val = val[:val_chars]
        self.train_ids, self.val_ids = self.vocab.encode(train), self.vocab.encode(val)
        self.data = charlm.CharBatches(self.train_ids, batch_size, seq_len, seed=seed)
        self.seq_len = seq_len

    def config(self, cell, hidden_size, num_layers=1, embedding_dim=64, dropout=0.0, **_):
        V = len(self.vocab)
        return ModelConfig(cell=cell, task="lm", input_size=V, hidden_size=hidden_size, num_layers=num_layers,
                           output_size=V, input_encoding="embedding", embedding_dim=embedding_dim, dropout=dropout,
                           vocab=tuple(self.vocab.chars), metadata={"task": self.name, "corpus": "shakespeare"})

    def batches(self, epoch):
        return self.data.epoch_batches(epoch)

    def num_batches(self):
        return len(self.data)

    def train_batch(self, model, batch, carry, rng):
        x, y = batch
        xp = model.xp
        logits, state, cache = model.forward_train(x, carry, rng=rng)       # (T, B, V)
        yd = xp.asarray(y)
        loss, dlogits = losses.cross_entropy(logits, yd)
        grads, _ = model.backward(cache, dlogits)
        correct = float((logits.argmax(-1) == yd).sum())
        return BatchResult(loss, correct, int(y.size), grads, state)

    def evaluate(self, model, max_batches=None, batch_streams=16):
        """Bits per char over the validation text, read as ``batch_streams`` parallel streams
        (the first ``max_batches`` chunks of them, for a quick run)."""
        ids = self.val_ids
        n = (len(ids) - 1) // batch_streams
        xs = ids[: n * batch_streams].reshape(batch_streams, n).T            # (n, S)
        ys = ids[1: n * batch_streams + 1].reshape(batch_streams, n).T
        if max_batches is not None:
            n = min(n, max_batches * self.seq_len)
        state, total, correct = None, 0.0, 0.0
        for s in range(0, n, self.seq_len):
            logits, state = model.forward(xs[s:min(s + self.seq_len, n)], state)
            yd = model.xp.asarray(ys[s:min(s + self.seq_len, n)])
            total += losses.cross_entropy(logits, yd)[0] * yd.size
            correct += float((logits.argmax(-1) == yd).sum())
        loss = total / (n * batch_streams)
        return {"loss": loss, "bpc": charlm.bits_per_char(loss), "accuracy": correct / (n * batch_streams)}


TASKS = {"temporal-order": TemporalOrderTask, "echo": EchoTask, "charlm": CharLMTask}
