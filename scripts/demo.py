"""Quick demo: train an LSTM on the temporal-order task (EASY) and report validation accuracy."""
from __future__ import annotations

import time

from model_core import ModelConfig, SequenceModel
from model_core.data import temporal_order as to
from model_core.nn import losses
from model_core.optim import Adam, clip_grad_norm_


def main(epochs: int = 10, seed: int = 0) -> None:
    config = ModelConfig(cell="lstm", task="classify", input_size=to.N_SYMBOLS, hidden_size=32,
                         output_size=to.N_CLASSES, input_encoding="features", labels=to.CLASSES)
    model = SequenceModel(config, seed=seed)
    opt = Adam(model.parameters(), lr=0.01)
    data = to.TemporalOrderDataset(to.Difficulty.EASY, seed=seed)
    xv, lv, yv = to.validation_set(to.Difficulty.EASY, n=500, seed=seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        for x, lengths, y in data.batches(epoch):
            logits, _, cache = model.forward_train(x.transpose(1, 0, 2), lengths=lengths)
            loss, dlogits = losses.cross_entropy(logits, y)
            grads, _ = model.backward(cache, dlogits)
            clip_grad_norm_(grads, 1.0)
            opt.step(grads)
        val_logits, _ = model.forward(xv.transpose(1, 0, 2), lengths=lv)
        acc = float((val_logits.argmax(-1) == yv).mean())
        print(f"epoch {epoch + 1:2d}  train loss {loss:.4f}  val acc {acc:6.1%}  ({time.perf_counter() - start:.1f}s)")


if __name__ == "__main__":
    main()
