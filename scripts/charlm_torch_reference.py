"""The char-LM run of ``scripts/train.py`` redone in PyTorch, to judge our engine's final validation loss.

    python -m scripts.charlm_torch_reference --out runs/charlm-torch
    python -m scripts.charlm_torch_reference --out runs/charlm-torch --compare runs/charlm/metrics.json

Same architecture (nn.Embedding -> nn.LSTM -> nn.Linear, time-major), same initial weights (our
``SequenceModel`` is built exactly as ``model_core.training.train`` builds it for a fresh run and its
``state_dict()`` is copied in), same data order (``CharLMTask.batches(epoch)``), same optimiser
(``torch.optim.Adam``, whose rule ``model_core.optim.Adam`` mirrors), the same global-norm clip, state
carried chunk to chunk and reset at each epoch, and the same validation procedure as
``CharLMTask.evaluate``. Dropout is not supported: its masks could not match ours.

Writes ``metrics.json`` (config and per-epoch history) to ``--out``. With ``--compare OURS`` it then
prints our validation loss beside torch's per epoch and writes ``comparison.png``; if ``--out`` already
holds a ``metrics.json`` for the same configuration, that run is reused instead of training again.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from model_core.data.charlm import bits_per_char
from model_core.model import SequenceModel
from model_core.training.loop import TrainConfig, make_task

# Flags that must agree for two runs to be comparable (TrainConfig field names).
COMPARED_FIELDS = ("cell", "hidden_size", "num_layers", "embedding_dim", "dropout", "epochs", "max_batches_per_epoch", "lr",
                   "optimizer", "batch_size", "clip", "seed", "task_options")
# Our SequenceModel's module names -> CharLSTM's.
TORCH_MODULES = {"embedding": "embedding", "rnn": "lstm", "head": "linear"}


class CharLSTM(nn.Module):
    """Embedding(V, E) -> LSTM(E, H) -> Linear(H, V), time-major, like our ``SequenceModel`` for ``lm``."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int = 1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers)
        self.linear = nn.Linear(hidden_size, vocab_size)

    def forward(self, ids, state=None):
        """ids (T, B) int64, state (h, c) each (L, B, H) or None -> logits (T, B, V), state."""
        x = self.embedding(ids)                  # (T, B, E)
        y, state = self.lstm(x, state)           # (T, B, H)
        return self.linear(y), state             # (T, B, V)


def torch_name(ours: str) -> str:
    """``rnn.weight_ih_l0`` -> ``lstm.weight_ih_l0``, ``head.bias`` -> ``linear.bias``."""
    module, rest = ours.split(".", 1)
    return f"{TORCH_MODULES[module]}.{rest}"


def engine_model(cfg: TrainConfig, task) -> SequenceModel:
    """Our model exactly as ``model_core.training.train`` builds it for a fresh run."""
    return SequenceModel(task.config(cfg.cell, cfg.hidden_size, num_layers=cfg.num_layers,
                                     embedding_dim=cfg.embedding_dim, dropout=cfg.dropout),
                         device="cpu", seed=cfg.seed)


def build_reference(cfg: TrainConfig, task) -> CharLSTM:
    """A ``CharLSTM`` holding our engine's initial weights for ``cfg``."""
    if cfg.cell != "lstm" or cfg.dropout:
        raise ValueError("the torch reference covers the LSTM without dropout only")
    ours = engine_model(cfg, task)
    c = ours.config
    net = CharLSTM(c.input_size, c.embedding_dim, c.hidden_size, c.num_layers)
    weights = {torch_name(k): torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in ours.state_dict().items()}
    net.load_state_dict(weights, strict=True)    # strict: every torch parameter gets one of ours
    return net


@torch.no_grad()
def evaluate(net: CharLSTM, task, batch_streams: int = 16) -> dict:
    """``CharLMTask.evaluate`` in torch: the validation ids as parallel streams, state carried."""
    ids = task.val_ids
    n = (len(ids) - 1) // batch_streams
    xs = torch.from_numpy(np.ascontiguousarray(ids[: n * batch_streams].reshape(batch_streams, n).T))       # (n, S)
    ys = torch.from_numpy(np.ascontiguousarray(ids[1: n * batch_streams + 1].reshape(batch_streams, n).T))  # (n, S)
    state, total, correct = None, 0.0, 0.0
    for s in range(0, n, task.seq_len):
        logits, state = net(xs[s:s + task.seq_len], state)                       # (T, S, V)
        y = ys[s:s + task.seq_len]                                                # (T, S)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))) * y.numel()
        correct += float((logits.argmax(-1) == y).sum())
    loss = total / (n * batch_streams)
    return {"loss": loss, "bpc": bits_per_char(loss), "accuracy": correct / (n * batch_streams)}


def train_reference(cfg: TrainConfig, threads: int = 1, on_step: Callable | None = None,
                    on_epoch: Callable | None = None) -> tuple[CharLSTM, list[dict]]:
    """Train the torch model per ``cfg`` (a char-LM ``TrainConfig``); returns (net, history).

    ``on_step(epoch, i, n_batches, loss)`` and ``on_epoch(record)`` report progress, as in ``train``.
    """
    if cfg.task != "charlm" or cfg.optimizer != "adam":
        raise ValueError("the torch reference covers --task charlm with --optimizer adam only")
    torch.set_num_threads(threads)
    task = make_task(cfg)
    net = build_reference(cfg, task)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    n_batches = min(task.num_batches(), cfg.max_batches_per_epoch or task.num_batches())
    history: list[dict] = []
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        state, loss_sum, correct, count, seen = None, 0.0, 0.0, 0, 0     # state reset each epoch
        net.train()
        for i, (x, y) in enumerate(task.batches(epoch)):
            if i >= n_batches:
                break
            x, y = torch.from_numpy(x), torch.from_numpy(y)                      # (T, B) each
            logits, state = net(x, state)                                         # (T, B, V)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.clip)
            optimizer.step()
            state = tuple(s.detach() for s in state)                               # truncated BPTT
            loss_value = loss.item()
            loss_sum += loss_value
            correct += float((logits.detach().argmax(-1) == y).sum())
            count, seen = count + y.numel(), seen + 1
            if on_step:
                on_step(epoch, i, n_batches, loss_value)
        net.eval()
        val = evaluate(net, task)
        record = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(count, 1),
                  **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - t0}
        history.append(record)
        if on_epoch:
            on_epoch(record)
    return net, history


# -- comparison -----------------------------------------------------------------------------
def config_mismatches(a: dict, b: dict) -> list[str]:
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in COMPARED_FIELDS if a.get(k) != b.get(k)]


def compare(ours: dict, ref: dict, out: Path) -> dict:
    """Print our validation loss beside torch's per epoch; plot both curves to ``out/comparison.png``."""
    for line in config_mismatches(ours["config"], ref["config"]):
        print(f"warning: configs differ, {line}")
    by_epoch = {r["epoch"]: r for r in ref["history"]}
    rows = [(r, by_epoch[r["epoch"]]) for r in ours["history"] if r["epoch"] in by_epoch]
    if not rows:
        raise ValueError("the two runs share no epoch")
    print(f"{'epoch':>5}  {'ours val loss':>13}  {'torch val loss':>14}  {'rel diff':>9}  {'ours bpc':>8}  {'torch bpc':>9}")
    for o, t in rows:
        rel = (o["val_loss"] - t["val_loss"]) / t["val_loss"]
        print(f"{o['epoch']:>5}  {o['val_loss']:>13.4f}  {t['val_loss']:>14.4f}  {100 * rel:>8.2f}%  "
              f"{o['val_bpc']:>8.4f}  {t['val_bpc']:>9.4f}")
    o, t = rows[-1]
    rel = (o["val_loss"] - t["val_loss"]) / t["val_loss"]
    verdict = "PASS" if abs(rel) <= 0.02 else "FAIL"
    print(f"final (epoch {o['epoch']}): ours {o['val_loss']:.4f} vs torch {t['val_loss']:.4f} nats, "
          f"relative difference {100 * rel:+.2f}% ({verdict}: criterion |diff| <= 2%)")
    plot_comparison([r for r, _ in rows], [r for _, r in rows], out / "comparison.png")
    return {"epoch": o["epoch"], "ours_val_loss": o["val_loss"], "torch_val_loss": t["val_loss"],
            "relative_difference": rel, "within_2_percent": abs(rel) <= 0.02}


def plot_comparison(ours: list[dict], ref: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["epoch"] for r in ours], [r["val_loss"] for r in ours], "o-", label="ours (model_core)")
    ax.plot([r["epoch"] for r in ref], [r["val_loss"] for r in ref], "s--", label="torch reference")
    ax.set(xlabel="epoch", ylabel="validation loss (nats/char)", title="char-LM LSTM: validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- command line ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=100, help="chunk length (truncated BPTT)")
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--clip", type=float, default=5.0, help="global gradient-norm clip")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--max-batches-per-epoch", "--steps", type=int, default=200,
                   help="cap on training batches per epoch (--steps is the old name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=Path("runs/charlm-torch"), help="output directory")
    p.add_argument("--compare", type=Path, default=None, metavar="OURS_METRICS_JSON",
                   help="our train.py metrics.json to compare with")
    return p


def config_from_args(args) -> TrainConfig:
    return TrainConfig(task="charlm", cell="lstm", hidden_size=args.hidden_size, embedding_dim=args.embedding_dim,
                       epochs=args.epochs, max_batches_per_epoch=args.max_batches_per_epoch, lr=args.lr,
                       batch_size=args.batch_size, clip=args.clip,
                       seed=args.seed, task_options={"seq_len": args.seq_len})


def run(cfg: TrainConfig, out: Path, threads: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)

    def on_epoch(r):
        print(f"epoch {r['epoch']:3d}  train loss {r['train_loss']:.4f}  val loss {r['val_loss']:.4f}  "
              f"val bpc {r['val_bpc']:.3f}  ({r['seconds']:.1f}s)", flush=True)

    start = time.perf_counter()
    _, history = train_reference(cfg, threads=threads, on_epoch=on_epoch)
    metrics = {"config": asdict(cfg), "reference": {"torch": torch.__version__, "threads": threads},
               "final": history[-1], "wall_seconds": time.perf_counter() - start, "history": history}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        ours = json.loads(args.compare.read_text()) if args.compare is not None else None
        saved = args.out / "metrics.json"
        previous = json.loads(saved.read_text()) if ours is not None and saved.is_file() else None
        if previous is not None and not config_mismatches(previous["config"], asdict(cfg)):
            print(f"reusing the torch run in {saved}")
            metrics = previous
        else:
            metrics = run(cfg, args.out, args.threads)
            print(f"done: {len(metrics['history'])} epochs in {metrics['wall_seconds']:.1f}s, "
                  f"validation loss {metrics['final']['val_loss']:.4f}, bpc {metrics['final']['val_bpc']:.4f}; "
                  f"wrote {args.out}/")
        if ours is not None:
            summary = compare(ours, metrics, args.out)
            (args.out / "comparison.json").write_text(json.dumps(summary, indent=2))
    except (ValueError, OSError) as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
